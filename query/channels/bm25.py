"""The ``bm25`` channel: the query's words against the indexed texts (OCR lines, captions,
tags) by BM25, so exact codes and rare words are found. Evidence names the matching text."""

from __future__ import annotations

from collections.abc import Sequence

from common.texts import TextHit
from query.channels.base import Channel, Query, grouped
from query.fusion import ChannelHit

ROWS_PER_IMAGE = 3  # text rows asked for per image wanted: an image has several texts


class Bm25Channel(Channel):
    name = "bm25"
    reads_text = True

    def encode(self, queries: Sequence[Query]) -> None:
        """Nothing to encode: Milvus' BM25 function analyses the query's words itself."""

    def search(self, queries: Sequence[Query]) -> list[list[TextHit]]:
        texts = self.service.texts
        asked = [n for n, q in enumerate(queries) if q.query_text]
        out: list[list[TextHit]] = [[] for _ in queries]
        found = grouped([queries[n] for n in asked], lambda q: q.depth,
                        lambda depth, qs: texts.search_bm25([q.query_text for q in qs], depth * ROWS_PER_IMAGE))
        for n, rows in zip(asked, found, strict=True):
            out[n] = rows
        return out

    def evidence(self, q: Query, hits: list[TextHit]) -> list[ChannelHit]:
        skip = set(q.exclude)
        return [ChannelHit(r.image_id, r.score, r.text, r.kind) for r in hits if r.image_id not in skip]

    def warm(self) -> None:
        self.service.texts.search_bm25(["warm up"], 1)
