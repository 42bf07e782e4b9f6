"""Fusion of search channels and the fused hit with its per-channel evidence.

Channel scores are not comparable as they come (cosine of CLIP vectors, BM25 sums, inner
products of ±1 hash bits), so each method first puts a channel's hits on its own scale and
then sums over channels, times ``weights[channel]`` (``IMGSEARCH_FUSION_WEIGHTS``):

- ``rrf``: reciprocal rank fusion, ``weight / (rrf_k + rank)`` (1-based ranks); the only
  method before issue 18. Ranks only: a channel that knows nothing about the query (CLIP on
  a serial number, BM25 on a paraphrase) moves images as much as one that knows.
- ``wrrf``: RRF with each channel's weight multiplied by its per-query :func:`confidence`.
- ``minmax``: each channel's scores scaled to 0..1 over its own top 50 hits (Weaviate's
  relativeScore; :data:`CONFIDENCE_DEPTH`, so the order does not change with the depth a
  channel was asked for); BM25 is scaled from its natural floor 0 (:data:`FLOORS`).
- ``zscore``: each channel's scores in standard deviations (of its top 50) above the lowest
  of its top 50.
- ``confidence`` (the default, ``IMGSEARCH_FUSION``): ``minmax`` with each channel's
  weight multiplied by its per-query :func:`confidence`, the robust z-score of its top
  score against its own top 50: a channel whose best hits stand clear of its own
  distribution counts more, one with a flat distribution counts less; a channel that
  matches words (``bm25``) also counts as much of the query as its best hit holds (its
  ``coverage``, Lucene's ``coord``). No method holds "fused is never worse than the best
  single channel" on every committed evaluation set and query kind (bench/eval.py, README
  "Fusion methods"); this one stays the default because ``clearance``, which fails the
  same kinds, is below it on every image kind.
- ``clearance``: ``minmax`` with each channel's weight multiplied by its :func:`confidence`
  times its :func:`relative_clearance` (how far its top stands above its own top 50 as a
  share of the top's score above the channel's zero, :data:`ZEROS`). A robust z-score
  measures the clearance in units of the channel's own spread, so a channel whose scores are
  tightly concentrated (CLIP's cross-modal text-to-image cosines) gets a large z from a gap
  that is small next to its scores; the product asks for both. Selectable, not the default:
  on the committed sets it fails the rule on the same kinds as ``confidence`` (closer on
  the mixed text kinds) and loses mAP on near-duplicates (README "Fusion methods").

With a single channel the hits keep that channel's own score in every method (nothing to
fuse), so ``channels=["clip"]`` answers exactly like a plain CLIP search.

Tiers: a channel may name a score at or above which its hits are near-certain (``phash``:
a hash at most a few bits from the query's is a copy of the query image). Those hits rank
above every other hit, in fused order among themselves: agreement of similarity channels
must not push a copy of the query image below a merely similar one. On the mixed evaluation
set this lifted fused P@10 from below the phash channel's to above it (bench/RESULTS.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ChannelHit:
    """An image as one channel ranked it; ``text``/``kind`` name the text row that matched;
    ``coverage`` is the share of the query's words that text holds, for a channel that
    matches words (``bm25``; None: the channel does not match words)."""

    image_id: int
    score: float
    text: str | None = None
    kind: str | None = None
    coverage: float | None = None


@dataclass
class FusedHit:
    """A fused result: ``evidence[channel] = {"rank", "score"[, "text", "kind"][, "coverage"]}``."""

    id: int
    uri: str
    score: float
    evidence: dict[str, dict] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"id": self.id, "uri": self.uri, "score": round(float(self.score), 6), "evidence": self.evidence}

    @classmethod
    def from_dict(cls, doc: Mapping) -> "FusedHit":
        return cls(int(doc["id"]), str(doc["uri"]), float(doc["score"]), dict(doc.get("evidence") or {}))


def dedupe(hits: Sequence[ChannelHit]) -> list[ChannelHit]:
    """One entry per image, its best (first) one: text channels return several rows per image."""
    seen: set[int] = set()
    out = []
    for h in hits:
        if h.image_id not in seen:
            seen.add(h.image_id)
            out.append(h)
    return out


METHODS = ("rrf", "wrrf", "minmax", "zscore", "confidence", "clearance")
# A channel's score for an image it did not return, where that has a natural value: BM25
# gives 0 to a text sharing no term with the query (min-max scales its list from 0, so a
# lone weak match is not stretched to 1 against nothing).
FLOORS = {"bm25": 0.0}
# A channel's confidence and its score scale (minmax, zscore) are read from its top this many
# hits, whatever depth it was asked for: the service asks every channel for at least this many
# (query.search), so a hit's fused score, and the order, do not change with k.
CONFIDENCE_DEPTH = 50
# The score at which a channel says "no relation" (what ``relative_clearance`` measures a top
# from): cosine 0 for clip and dense (orthogonal vectors), 64 - 2*hamming = 0 for phash (32 of
# 64 bits differ, what two unrelated images give), BM25 0 (no shared term). A channel not
# named here is taken to mean the same by 0. For CLIP this holds only roughly: its vectors
# fill a cone, so unrelated photos reach cosines well above 0 (0.5 to 1.0 with the
# reference model on image queries), and ``clearance`` then weighs CLIP down (README).
ZEROS = {"clip": 0.0, "dense": 0.0, "phash": 0.0, "bm25": 0.0}


def confidence(scores: Sequence[float], depth: int = CONFIDENCE_DEPTH) -> float:
    """How far a channel's best hit stands clear of the rest of its own scores, >= 0.

    The robust z-score of the top score against the channel's top ``depth`` scores (their
    median, and 1.4826 x their median absolute deviation as the spread). A flat list (the
    query means nothing to the channel: CLIP on a serial number) scores near 0; a copy or
    an exact match far above the crowd scores high. Fewer than 3 scores say nothing (0).
    The spread is floored at 1% of the score range, so a list of identical scores with
    one outlier does not divide by zero.
    """
    values = [float(v) for v in scores[:depth]]
    if len(values) < 3:
        return 0.0
    ordered = sorted(values)
    n = len(ordered)
    median = ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2
    deviations = sorted(abs(v - median) for v in values)
    span = ordered[-1] - ordered[0]
    if span <= 0:
        return 0.0
    # 1.4826 x MAD estimates the standard deviation; when over half the scores tie (the
    # same text indexed under many images gives the same BM25 score) the MAD is 0 and the
    # mean absolute deviation (x 1.2533) takes over
    spread = 1.4826 * deviations[n // 2] or 1.2533 * sum(deviations) / n
    spread = max(spread, 0.01 * span)
    return max(0.0, (ordered[-1] - median) / spread)


def relative_clearance(scores: Sequence[float], zero: float = 0.0, depth: int = CONFIDENCE_DEPTH) -> float:
    """How far a channel's best score stands above the median of its top ``depth`` scores, as a
    share of the best score's height above the channel's ``zero`` (no relation): 0..1.

    Unlike :func:`confidence` it does not divide by the spread of the scores, so a channel
    whose scores all sit close together far above its zero (the top 0.25 and the crowd 0.18:
    CLIP's text-to-image cosines) has a small clearance however regular the crowd. A top at
    or below the zero (nothing related) and fewer than 3 scores give 0.
    """
    values = sorted((float(v) for v in scores[:depth]), reverse=True)
    if len(values) < 3 or values[0] <= zero:
        return 0.0
    n = len(values)
    median = values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2
    return min(1.0, max(0.0, (values[0] - median) / (values[0] - zero)))


def _contributions(method: str, hits: Sequence[ChannelHit], weight: float, rrf_k: int,
                   floor: float | None, depth: int = CONFIDENCE_DEPTH) -> list[float]:
    """What each of a channel's (deduplicated) hits adds to its image's fused score;
    ``weight`` already holds the channel's per-query confidence where the method uses one.

    In the score methods only the channel's best ``depth`` hits add anything, on a scale
    (minmax's low and high, zscore's mean and spread) read from them: scaled over the whole
    list, a hit's share would depend on how deep the channel was asked to go (the service
    asks max(50, 3k)), so the top 10 of a k=100 search would not be the k=10 search's."""
    scores = [float(h.score) for h in hits]
    if method in ("rrf", "wrrf"):
        return [weight / (rrf_k + rank) for rank in range(1, len(hits) + 1)]
    if not scores:
        return []
    head, below = scores[:depth], [0.0] * max(0, len(scores) - depth)
    if method == "zscore":
        mean = sum(head) / len(head)
        std = (sum((v - mean) ** 2 for v in head) / len(head)) ** 0.5
        low = min(head)
        return [weight * ((v - low) / std if std > 0 else 1.0) for v in head] + below
    # minmax (Weaviate's relativeScore), confidence, clearance: best hit 1, the low (or the floor) 0
    low = min(head) if floor is None else min(min(head), floor)
    high = max(head)
    return [weight * ((v - low) / (high - low) if high > low else 1.0) for v in head] + below


def confidence_weights(channels: Mapping[str, Sequence[ChannelHit]], method: str = "confidence",
                       zeros: Mapping[str, float] | None = None) -> dict[str, float]:
    """Each channel's per-query weight: its :func:`confidence` (0 for a flat list, rising
    linearly with the top's clearance), for ``clearance`` times its
    :func:`relative_clearance` against ``zeros`` (default :data:`ZEROS`); for a channel that
    matches words, times its best hit's coverage (the share of the query's words it holds:
    a text sharing one rare word of eight stands as clear of the texts sharing a common one
    as an exact match does). When no channel stands clear at all, every channel weighs 1 (plain
    fusion)."""
    zeros = ZEROS if zeros is None else zeros
    out = {}
    for name, hits in channels.items():
        unique = dedupe(hits)
        scores = [float(h.score) for h in unique]
        out[name] = confidence(scores)
        if method == "clearance":
            out[name] *= relative_clearance(scores, zeros.get(name, 0.0))
        if unique and unique[0].coverage is not None:
            out[name] *= max(0.0, min(1.0, float(unique[0].coverage)))
    return out if any(out.values()) else {name: 1.0 for name in channels}


def fuse(channels: Mapping[str, Sequence[ChannelHit]], weights: Mapping[str, float], rrf_k: int = 60,
         tiers: Mapping[str, float] | None = None, method: str = "rrf",
         floors: Mapping[str, float] | None = None) -> list[tuple[int, float, dict[str, dict]]]:
    """(image id, fused score, evidence) for every image any channel returned, best first.

    ``method`` (see :data:`METHODS` and the module docstring) decides what each channel's
    hits add; ``weights[channel]`` multiplies it in every method. ``floors`` (default
    :data:`FLOORS`) are the channels' scores for images they did not return.

    ``tiers[channel]`` = the score from which that channel's hits rank first (their
    evidence says ``"tier": true``; their fused score gains the most any other hit can
    reach, so scores still fall with rank). Ties are broken by the best single rank, then
    by id, so the order is deterministic.
    """
    if method not in METHODS:
        raise ValueError(f"unknown fusion method {method!r}; one of {', '.join(METHODS)}")
    floors = FLOORS if floors is None else floors
    scores: dict[int, float] = {}
    best_rank: dict[int, int] = {}
    evidence: dict[int, dict[str, dict]] = {}
    tiered: set[int] = set()
    single = len(channels) == 1
    confident = confidence_weights(channels, method) \
        if method in ("wrrf", "confidence", "clearance") and not single else {}
    for name, hits in channels.items():
        weight = float(weights.get(name, 1.0)) * confident.get(name, 1.0)
        unique = dedupe(hits)
        gains = [float(h.score) for h in unique] if single else \
            _contributions(method, unique, weight, rrf_k, floors.get(name))
        for rank, (hit, gained) in enumerate(zip(unique, gains), 1):
            entry: dict = {"rank": rank, "score": round(float(hit.score), 6)}
            if hit.text is not None:
                entry["text"] = hit.text
                entry["kind"] = hit.kind
            if hit.coverage is not None:
                entry["coverage"] = round(float(hit.coverage), 3)
            if tiers and name in tiers and float(hit.score) >= tiers[name]:
                entry["tier"] = True
                tiered.add(hit.image_id)
            evidence.setdefault(hit.image_id, {})[name] = entry
            scores[hit.image_id] = scores.get(hit.image_id, 0.0) + gained
            best_rank[hit.image_id] = min(best_rank.get(hit.image_id, rank), rank)
    if tiered and not single:
        if method == "rrf":
            lift = sum(float(weights.get(name, 1.0)) for name in channels) / (rrf_k + 1)
        else:
            lift = max(scores.values()) + 1e-9
        for i in tiered:
            scores[i] += lift
    order = sorted(scores, key=lambda i: (-scores[i], best_rank[i], i))
    return [(i, scores[i], evidence[i]) for i in order]
