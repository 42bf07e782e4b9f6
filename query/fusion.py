"""Rank fusion of search channels (RRF) and the fused hit with its per-channel evidence.

Why RRF: channel scores are not comparable (cosine of CLIP vectors, BM25 sums, inner
products of ±1 hash bits), ranks are. A hit's fused score is
``sum over channels of weight[channel] / (rrf_k + rank)`` with 1-based ranks, so an image
ranked well by several channels beats one ranked first by a single channel, and a channel
can be weighted (``IMGSEARCH_FUSION_WEIGHTS``). With a single channel the hits keep that
channel's own score (nothing to fuse), so ``channels=["clip"]`` answers exactly like a
plain CLIP search.

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
    """An image as one channel ranked it; ``text``/``kind`` name the text row that matched."""

    image_id: int
    score: float
    text: str | None = None
    kind: str | None = None


@dataclass
class FusedHit:
    """A fused result: ``evidence[channel] = {"rank", "score"[, "text", "kind"]}``."""

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


def fuse(channels: Mapping[str, Sequence[ChannelHit]], weights: Mapping[str, float], rrf_k: int = 60,
         tiers: Mapping[str, float] | None = None) -> list[tuple[int, float, dict[str, dict]]]:
    """(image id, fused score, evidence) for every image any channel returned, best first.

    ``tiers[channel]`` = the score from which that channel's hits rank first (their
    evidence says ``"tier": true``; their fused score gains the most any other hit can
    reach, so scores still fall with rank). Ties are broken by the best single rank, then
    by id, so the order is deterministic.
    """
    scores: dict[int, float] = {}
    best_rank: dict[int, int] = {}
    evidence: dict[int, dict[str, dict]] = {}
    tiered: set[int] = set()
    single = len(channels) == 1
    for name, hits in channels.items():
        weight = float(weights.get(name, 1.0))
        for rank, hit in enumerate(dedupe(hits), 1):
            entry: dict = {"rank": rank, "score": round(float(hit.score), 6)}
            if hit.text is not None:
                entry["text"] = hit.text
                entry["kind"] = hit.kind
            if tiers and name in tiers and float(hit.score) >= tiers[name]:
                entry["tier"] = True
                tiered.add(hit.image_id)
            evidence.setdefault(hit.image_id, {})[name] = entry
            gained = float(hit.score) if single else weight / (rrf_k + rank)
            scores[hit.image_id] = scores.get(hit.image_id, 0.0) + gained
            best_rank[hit.image_id] = min(best_rank.get(hit.image_id, rank), rank)
    if tiered and not single:
        lift = sum(float(weights.get(name, 1.0)) for name in channels) / (rrf_k + 1)
        for i in tiered:
            scores[i] += lift
    order = sorted(scores, key=lambda i: (-scores[i], best_rank[i], i))
    return [(i, scores[i], evidence[i]) for i in order]
