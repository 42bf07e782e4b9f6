"""`imgsearch eval`: run a labelled dataset's queries per channel and fused, score the rankings.

All calls to the search service go through :func:`ranked_ids`, which asks the fused
``SearchService.search(text=, image=, k=, channels=)`` for one channel at a time and for all
of them fused, so the scores are those of the search users get.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from common.errors import ConfigError, SourceError
from common.settings import Settings
from imgsearch.evalsets import IMAGE_GLOBS, Dataset, DatasetError, EvalQuery, load_dataset
from imgsearch.metrics import METRICS, RECALL_LEVELS, mean_curve, mean_metrics, pr_curve, query_metrics

IMAGE_ONLY_CHANNELS = {"phash"}   # a text query has nothing to search there
FUSED = "fused"
RULE_MARGIN = 0.02   # fusion's rule (issue 18): fused hit@5 and mAP >= best single channel's - this


def ranked_ids(service, query: EvalQuery, channels: Sequence[str], depth: int) -> list[int]:
    """Image ids, best first, for ``query`` searched on ``channels`` (fused when several).

    The one adapter between the evaluation and the search service."""
    if query.text is not None:  # a text query has nothing to search on image-only channels
        channels = [c for c in channels if c not in IMAGE_ONLY_CHANNELS]
        if not channels:
            return []
    image = query.image.read_bytes() if query.image is not None else None
    hits = service.search(text=query.text, image=image, k=depth, channels=list(channels))
    return [int(h.id) for h in hits]


@dataclass
class ChannelResult:
    name: str
    per_query: dict[str, dict[str, float]] = field(default_factory=dict)  # query id -> metrics
    curves: dict[str, list[float]] = field(default_factory=dict)  # query id -> precision at RECALL_LEVELS
    answered: int = 0   # queries that got at least one result

    def mean(self, ids: Sequence[str] | None = None) -> dict[str, float]:
        rows = [self.per_query[i] for i in (ids if ids is not None else self.per_query)]
        return mean_metrics(rows)

    def curve(self, ids: Sequence[str] | None = None) -> list[float]:
        """Mean interpolated precision at each of RECALL_LEVELS over ``ids`` (default: all)."""
        return mean_curve([self.curves[i] for i in (ids if ids is not None else self.curves)])


@dataclass
class EvalReport:
    dataset: str
    images: int
    k: int
    depth: int
    kinds: dict[str, list[str]]               # kind -> query ids
    channels: list[ChannelResult]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        def rounded(m: dict[str, float]) -> dict[str, float]:
            return {name: round(value, 4) for name, value in m.items()}

        return {"dataset": self.dataset, "images": self.images, "queries": sum(map(len, self.kinds.values())),
                "k": self.k, "depth": self.depth, "kinds": {k: len(v) for k, v in self.kinds.items()},
                "notes": self.notes, "rule": {kind: holds for kind, holds, _ in self.rule()},
                "channels": {c.name: {"all": rounded(c.mean()), "answered": c.answered,
                                      "by_kind": {kind: rounded(c.mean(ids)) for kind, ids in self.kinds.items()}}
                             for c in self.channels},
                "pr_curves": {"recall": list(RECALL_LEVELS),
                              "precision": {c.name: {"all": [round(p, 4) for p in c.curve()],
                                                     "by_kind": {kind: [round(p, 4) for p in c.curve(ids)]
                                                                 for kind, ids in self.kinds.items()}}
                                            for c in self.channels}}}

    def render(self) -> str:
        heads = {"p@k": f"P@{self.k}", "r@k": f"R@{self.k}", "f1@k": f"F1@{self.k}", "map": "mAP",
                 "pr_auc": "PR-AUC", "mrr": "MRR", "hit@1": "hit@1", "hit@5": "hit@5"}
        total = sum(map(len, self.kinds.values()))
        kinds = ", ".join(f"{k} {len(v)}" for k, v in self.kinds.items())
        out = [f"{self.dataset}: {total} queries ({kinds}) over {self.images} images; "
               f"P/R/F1 at k={self.k}, mAP and PR-AUC over the top {self.depth}"]
        sections = [("all queries", None)] + ([(f"kind: {k}", ids) for k, ids in self.kinds.items()]
                                              if len(self.kinds) > 1 else [])
        width = max(len(c.name) for c in self.channels)
        for title, ids in sections:
            out.append(f"\n{title}")
            out.append(f"  {'channel':<{width}}  " + "  ".join(f"{heads[m]:>7}" for m in METRICS))
            for c in self.channels:
                mean = c.mean(ids)
                out.append(f"  {c.name:<{width}}  " + "  ".join(f"{mean[m]:>7.3f}" for m in METRICS))
        rule = self.rule()
        if rule:
            out.append(f"\nfusion rule: fused hit@5 and mAP >= the best single channel's - {RULE_MARGIN}")
            out.extend(f"  {line}" for _, _, line in rule)
        out.extend(f"\nnote: {n}" for n in self.notes)
        return "\n".join(out)

    def rule(self) -> list[tuple[str, bool, str]]:
        """Per query kind: whether the fused ranking holds the rule, and a line saying so
        (empty without a fused run)."""
        fused = next((c for c in self.channels if c.name == FUSED), None)
        singles = [c for c in self.channels if c.name != FUSED]
        if fused is None or not singles:
            return []
        out = []
        for kind, ids in self.kinds.items():
            got, parts, holds = fused.mean(ids), [], True
            for metric in ("hit@5", "map"):
                best = max(singles, key=lambda c: c.mean(ids)[metric])
                ok = got[metric] >= best.mean(ids)[metric] - RULE_MARGIN - 1e-9
                holds &= ok
                parts.append(f"{metric} {got[metric]:.3f} vs {best.name} {best.mean(ids)[metric]:.3f}")
            out.append((kind, holds, f"{kind}: {'holds' if holds else 'does NOT hold'} ({'; '.join(parts)})"))
        return out


def evaluate(dataset: Dataset, service, channels: Sequence[str], k: int = 10, depth: int = 100,
             uri_prefix: str = "", images: int = 0,
             progress: Callable[[int], None] | None = None) -> EvalReport:
    """Score every query on each channel alone and, with 2+ channels, on all of them fused."""
    runs: list[tuple[str, tuple[str, ...]]] = [(c, (c,)) for c in channels]
    notes = []
    if len(channels) > 1:
        runs.append((FUSED, tuple(channels)))
        method = getattr(getattr(service, "settings", None), "fusion", None)
        if method:
            notes.append(f"fused by {method} (IMGSEARCH_FUSION)")
    kinds: dict[str, list[str]] = {}
    for q in dataset.queries:
        kinds.setdefault(q.kind, []).append(q.id)
    results = [ChannelResult(name) for name, _ in runs]
    for q in dataset.queries:
        own = _own_id(dataset, q, uri_prefix)
        relevant = {dataset.resolve(r, uri_prefix) for r in q.relevant} - {own}
        if not relevant:
            raise DatasetError(f"query {q.id!r}: its only relevant image is the query image itself")
        for result, (_, chans) in zip(results, runs):
            ranked = [i for i in ranked_ids(service, q, chans, depth + (own is not None)) if i != own][:depth]
            result.answered += bool(ranked)
            result.per_query[q.id] = query_metrics(ranked, relevant, k)
            result.curves[q.id] = pr_curve(ranked, relevant)
        if progress is not None:
            progress(1)
    return EvalReport(str(dataset.root), images, k, depth, kinds, results, notes)


def _own_id(dataset: Dataset, query: EvalQuery, uri_prefix: str) -> int | None:
    """The id of the query image when it is one of the dataset's indexed images (left out of
    its own results, as `search --like` does)."""
    if query.image is None:
        return None
    try:
        rel = query.image.relative_to(dataset.root).as_posix()
    except ValueError:
        return None
    return dataset.resolve(rel, uri_prefix)


def evaluate_dataset(path: str | Path, settings: Settings, channels: str | Sequence[str] | None = None,
                     k: int = 10, depth: int = 100, existing: bool = False, uri_prefix: str = "",
                     ingest_progress: bool = False,
                     query_progress: Callable[[int], Callable[[int], None] | None] | None = None) -> EvalReport:
    """What `imgsearch eval` does: load the dataset, ingest it into a temporary collection
    (embedded mode, the configured model) unless ``existing``, then :func:`evaluate`.

    ``query_progress(total)`` may return a callback that is called once per query."""
    from query.search import SearchService

    if k < 1 or depth < k or depth > 1000:
        raise ConfigError(f"need 1 <= k <= depth <= 1000, got k={k} depth={depth}")
    dataset = load_dataset(path)
    chosen = choose_channels(channels)
    if uri_prefix and not existing:
        raise ConfigError("--uri-prefix goes with --existing")

    def run(run_settings: Settings, images: int) -> EvalReport:
        tick = query_progress(len(dataset.queries)) if query_progress is not None else None
        return evaluate(dataset, SearchService(run_settings), chosen, k, depth, uri_prefix, images, tick)

    if existing:
        return run(settings, len(dataset.images()))
    from common.store import close_clients
    from ingest.runner import run_ingest

    with tempfile.TemporaryDirectory(prefix="imgsearch-eval-") as tmp:
        temp = temporary_settings(settings, Path(tmp))
        try:
            summary = run_ingest(str(dataset.root), temp, IMAGE_GLOBS, progress=ingest_progress)
            if summary.failures:
                raise SourceError(f"{summary.failed} dataset images could not be indexed, so the scores "
                                  "would be wrong:\n" + summary.render())
            return run(temp, summary.indexed)
        finally:
            close_clients()  # releases the temporary Milvus Lite file before it is removed


def choose_channels(option: str | Sequence[str] | None) -> list[str]:
    """The channels to score, checked before any ingest work: the given ones, or all there are."""
    from query.search import CHANNELS as available
    if isinstance(option, str):
        option = [c.strip() for c in option.split(",") if c.strip()]
    channels = list(option) if option else list(available)
    unknown = [c for c in channels if c not in available]
    if unknown or not channels:
        raise ConfigError(f"unknown channels {unknown}; available: {', '.join(available)}")
    return channels


def temporary_settings(settings: Settings, folder: Path, collection: str = "evalset") -> Settings:
    """Settings for a throw-away collection in ``folder``: always a Milvus Lite file of its own
    (never a collection on the configured server), embedded, the usual model cache."""
    return settings.with_overrides(data_dir=folder, collection=collection, milvus_uri="", milvus_token="",
                                   redis_url="", model_cache_dir=str(settings.cache_dir))
