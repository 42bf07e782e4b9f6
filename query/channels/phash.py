"""The ``phash`` channel: near-identical images by perceptual hash (image and ``like`` queries).

An image query's hash is searched with those of its crops and small rotations
(:func:`query.duplicates.search_phash`); an indexed image brings its stored hash. Hits
below ``IMGSEARCH_PHASH_MIN_SCORE`` are not evidence; hits at or above
``IMGSEARCH_PHASH_TIER_SCORE`` are copies of the query and rank first (:mod:`query.fusion`).
"""

from __future__ import annotations

from collections.abc import Sequence

from common.store import Hit
from query.channels.base import Channel, Query, grouped
from query.duplicates import search_phash
from query.fusion import ChannelHit


class PhashChannel(Channel):
    name = "phash"

    def __init__(self, service):
        super().__init__(service)
        self.tier = self.settings.phash_tier_score

    def encode(self, queries: Sequence[Query]) -> None:
        """An indexed image's stored hash (one Milvus query for the batch); an image query's
        hashes are computed where they are searched."""
        likes = [q for q in queries if q.kind == "like"]
        if likes:
            store = self.service.store
            ids = sorted({q.exclude[0] for q in likes})
            rows = store.client.query(store.alias, filter=f"id in {ids}", output_fields=["id", "phash"])
            stored = {int(r["id"]): r["phash"] for r in rows}
            for q in likes:
                q.vectors[self.name] = stored[q.exclude[0]]

    def search(self, queries: Sequence[Query]) -> list[list[Hit]]:
        store = self.service.store
        out: list[list[Hit]] = [[] for _ in queries]
        likes = [n for n, q in enumerate(queries) if q.kind == "like"]
        for n, hits in zip(likes, grouped(
                [queries[n] for n in likes], lambda q: (q.depth, q.filter_expr, tuple(q.exclude)),
                lambda key, qs: store.search([q.vectors[self.name] for q in qs], key[0], field=self.name,
                                             exclude_ids=key[2], filter_expr=key[1])), strict=True):
            out[n] = hits
        for n, q in enumerate(queries):
            if q.kind == "image":  # the query's hash and its crop/rotation variants
                out[n] = search_phash(store, q.pil, q.depth, q.filter_expr, q.exclude)
        return out

    def evidence(self, q: Query, hits: list[Hit]) -> list[ChannelHit]:
        hits = [h for h in hits if h.score >= self.settings.phash_min_score]
        q.uris.update({h.id: h.uri for h in hits})
        return [ChannelHit(h.id, h.score) for h in hits]

    def warm(self) -> None:
        from PIL import Image

        search_phash(self.service.store, Image.new("RGB", (32, 32), "white"), 1)
