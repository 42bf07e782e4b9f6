"""Per-channel rankings of every query of an evaluation set, from one search per query.

The search service returns, with each fused hit, every channel's rank and score for it
(its evidence); asked for k = MAX_K hits on a set smaller than that, the fused list holds
every image any channel found, so each channel's own ranking is read back from the
evidence, exactly as the service saw it before fusing. One search (one OCR of the query
image, one encoder call) per query then scores every fusion method offline with the same
:func:`query.fusion.fuse` the service calls. Used by bench/eval.py.
"""

from __future__ import annotations

from pathlib import Path

from imgsearch.evalsets import Dataset, EvalQuery
from imgsearch.evaluate import RULE_MARGIN  # fused may fall this far below the best single channel
from query.fusion import ChannelHit
from query.vocabulary import DEFAULT_CHANNELS, MAX_K


def query_channels(service, query: EvalQuery) -> dict[str, list[ChannelHit]]:
    """Channel name -> its hits, best first (each image once), for one evaluation query."""
    kind = "text" if query.text is not None else "image"
    image = query.image.read_bytes() if query.image is not None else None
    hits = service.search(text=query.text, image=image, k=MAX_K, channels=list(DEFAULT_CHANNELS[kind]))
    lists: dict[str, list[tuple[int, ChannelHit]]] = {c: [] for c in DEFAULT_CHANNELS[kind]}
    for h in hits:
        for name, ev in h.evidence.items():
            lists.setdefault(name, []).append((int(ev["rank"]), ChannelHit(
                int(h.id), float(ev["score"]), ev.get("text"), ev.get("kind"), ev.get("coverage"))))
    return {name: [hit for _, hit in sorted(rows, key=lambda r: r[0])] for name, rows in lists.items()}


def own_id(dataset: Dataset, query: EvalQuery) -> int | None:
    if query.image is None:
        return None
    try:
        return dataset.resolve(Path(query.image).relative_to(dataset.root).as_posix())
    except ValueError:
        return None




def ranked(rows: dict, channels: list[str] | None, method: str, weights: dict, rrf_k: int,
           tiers: dict, depth: int) -> list[int]:
    """One query's ranking (its own image left out) on ``channels`` (None: all it has),
    fused by ``method`` where there are several, as the search service would rank it."""
    from query.fusion import fuse

    # a dumped hit is [id, score] or [id, score, coverage] (bm25, since the coverage weight)
    lists = {c: [ChannelHit(int(h[0]), float(h[1]), coverage=h[2] if len(h) > 2 else None) for h in hits]
             for c, hits in rows["channels"].items()
             if channels is None or c in channels}
    if not lists:
        return []
    order = [i for i, _, _ in fuse(lists, weights, rrf_k, tiers=tiers, method=method)]
    return [i for i in order if i != rows["own"]][:depth]


def score_methods(data: dict[str, dict], methods: list[str], weights: dict, rrf_k: int, tiers: dict,
                  k: int = 10, depth: int = 100, kind_of=None) -> dict[str, dict[str, dict[str, float]]]:
    """run name (each channel, then ``fused:<method>``) -> query kind (and "all") -> mean metrics.

    ``kind_of(query id, row)`` gives the kind a query is counted under (default: its own)."""
    from imgsearch.metrics import mean_metrics, query_metrics

    channels = sorted({c for rows in data.values() for c in rows["channels"]})
    runs = [(c, [c], "rrf") for c in channels] + [(f"fused:{m}", None, m) for m in methods]
    per: dict[str, dict[str, list[dict[str, float]]]] = {name: {} for name, _, _ in runs}
    for qid, rows in data.items():
        kind = kind_of(qid, rows) if kind_of else rows["kind"]
        for name, chans, method in runs:
            order = ranked(rows, chans, method, weights, rrf_k, tiers, depth)
            m = query_metrics(order, set(rows["relevant"]), k)
            per[name].setdefault(kind, []).append(m)
            per[name].setdefault("all", []).append(m)
    return {name: {kind: mean_metrics(v) for kind, v in kinds.items()} for name, kinds in per.items()}


def rule(table: dict[str, dict[str, dict[str, float]]], method: str, kind: str) -> tuple[bool, str]:
    """Whether fused hit@5 and mAP of ``method`` on ``kind`` are >= the best single channel's
    minus RULE_MARGIN, and a line saying so."""
    singles = {name: kinds[kind] for name, kinds in table.items() if not name.startswith("fused:") and kind in kinds}
    fused = table[f"fused:{method}"][kind]
    parts, ok = [], True
    for metric in ("hit@5", "map"):
        best = max(singles, key=lambda c: singles[c][metric])
        holds = fused[metric] >= singles[best][metric] - RULE_MARGIN - 1e-9
        ok &= holds
        parts.append(f"{metric} {fused[metric]:.3f} vs {best} {singles[best][metric]:.3f}"
                     f"{'' if holds else ' FAILS'}")
    return ok, f"{kind}: {'holds' if ok else 'does NOT hold'} ({'; '.join(parts)})"
