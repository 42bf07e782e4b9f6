"""Ranking metrics for one query (a ranked list of ids and the set of relevant ids) and their mean.

Kept free of any search or storage code so the numbers can be checked by hand
(tests/imgsearch/test_metrics.py). Conventions:

- ``precision@k`` divides by k even when fewer than k results came back (a short list
  does not earn a better precision); ``recall@k`` divides by the number of relevant items.
- ``AP`` (average precision) is the mean, over *all* relevant items, of the precision at the
  rank where each was retrieved; a relevant item never retrieved adds 0. ``mAP`` is its mean
  over queries.
- ``PR-AUC`` is the area under the interpolated precision-recall curve of the ranking
  (precision at recall r = the best precision at any recall >= r; 0 beyond the last recall
  reached), integrated over recall from 0 to 1. It is >= AP, equal when precision never
  rises along the ranking.
- The precision-recall *curve* of a query is its interpolated precision at the recall levels
  0, 0.1, ..., 1 (:data:`RECALL_LEVELS`); a channel's curve is the mean of its queries'
  curves (macro, like mAP), which is what ``imgsearch eval --plot`` draws.
- ``hit@n`` is 1 when a relevant item is among the first n results; ``MRR`` is the mean of
  1 / rank of the first relevant result (0 when none).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from statistics import fmean

METRICS = ("p@k", "r@k", "f1@k", "map", "pr_auc", "mrr", "hit@1", "hit@5")
RECALL_LEVELS = tuple(i / 10 for i in range(11))


def precision_at(ranked: Sequence[Hashable], relevant: set, k: int) -> float:
    if k < 1:
        raise ValueError("k must be >= 1")
    return sum(1 for r in ranked[:k] if r in relevant) / k


def recall_at(ranked: Sequence[Hashable], relevant: set, k: int) -> float:
    if not relevant:
        raise ValueError("a query needs at least one relevant item")
    return sum(1 for r in ranked[:k] if r in relevant) / len(relevant)


def f1_at(ranked: Sequence[Hashable], relevant: set, k: int) -> float:
    p, r = precision_at(ranked, relevant, k), recall_at(ranked, relevant, k)
    return 2 * p * r / (p + r) if p + r else 0.0


def average_precision(ranked: Sequence[Hashable], relevant: set) -> float:
    if not relevant:
        raise ValueError("a query needs at least one relevant item")
    hits, total = 0, 0.0
    for rank, item in enumerate(ranked, 1):
        if item in relevant:
            hits += 1
            total += hits / rank
    return total / len(relevant)


def _pr_points(ranked: Sequence[Hashable], relevant: set) -> list[tuple[float, float]]:
    """(recall, precision) at the rank of each relevant item retrieved."""
    if not relevant:
        raise ValueError("a query needs at least one relevant item")
    points = []
    hits = 0
    for rank, item in enumerate(ranked, 1):
        if item in relevant:
            hits += 1
            points.append((hits / len(relevant), hits / rank))
    return points


def pr_auc(ranked: Sequence[Hashable], relevant: set) -> float:
    """Area under the interpolated precision-recall curve (see the module docstring)."""
    points = _pr_points(ranked, relevant)
    area, previous_recall = 0.0, 0.0
    for i, (recall, _) in enumerate(points):
        best = max(p for _, p in points[i:])
        area += (recall - previous_recall) * best
        previous_recall = recall
    return area


def pr_curve(ranked: Sequence[Hashable], relevant: set,
             levels: Sequence[float] = RECALL_LEVELS) -> list[float]:
    """Interpolated precision at each recall level: the best precision at any recall >= it
    (0 beyond the last recall reached), the same interpolation as :func:`pr_auc`."""
    points = _pr_points(ranked, relevant)
    return [max((p for r, p in points if r >= level - 1e-12), default=0.0) for level in levels]


def mean_curve(curves: Sequence[Sequence[float]]) -> list[float]:
    """Macro average of per-query curves (each query counts once)."""
    if not curves:
        return [0.0] * len(RECALL_LEVELS)
    return [fmean(values) for values in zip(*curves)]


def reciprocal_rank(ranked: Sequence[Hashable], relevant: set) -> float:
    return next((1 / rank for rank, item in enumerate(ranked, 1) if item in relevant), 0.0)


def hit_at(ranked: Sequence[Hashable], relevant: set, n: int) -> float:
    return 1.0 if any(r in relevant for r in ranked[:n]) else 0.0


def query_metrics(ranked: Sequence[Hashable], relevant: Iterable[Hashable], k: int) -> dict[str, float]:
    """Every metric of :data:`METRICS` for one query."""
    rel = set(relevant)
    ranked = list(ranked)
    return {"p@k": precision_at(ranked, rel, k), "r@k": recall_at(ranked, rel, k),
            "f1@k": f1_at(ranked, rel, k), "map": average_precision(ranked, rel),
            "pr_auc": pr_auc(ranked, rel), "mrr": reciprocal_rank(ranked, rel),
            "hit@1": hit_at(ranked, rel, 1), "hit@5": hit_at(ranked, rel, 5)}


def mean_metrics(per_query: Sequence[dict[str, float]]) -> dict[str, float]:
    """Macro average over queries (each query counts once)."""
    if not per_query:
        return {name: 0.0 for name in METRICS}
    return {name: fmean(q[name] for q in per_query) for name in METRICS}
