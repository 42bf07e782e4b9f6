"""The ``dense`` channel: the query's text as a dense text vector against the indexed texts'
vectors (the text model the texts collection was built with), so paraphrases are found."""

from __future__ import annotations

from collections.abc import Sequence

from common.texts import TextHit
from query.channels.base import Channel, Query, grouped
from query.channels.bm25 import ROWS_PER_IMAGE
from query.fusion import ChannelHit


class DenseChannel(Channel):
    name = "dense"
    reads_text = True

    def encode(self, queries: Sequence[Query]) -> None:
        wanted = [q for q in queries if q.query_text]
        if wanted and self.service.texts.exists():
            vectors = self.service.text_encoder().encode([q.query_text for q in wanted])
            for q, v in zip(wanted, vectors, strict=True):
                q.vectors[self.name] = v

    def search(self, queries: Sequence[Query]) -> list[list[TextHit]]:
        texts = self.service.texts
        asked = [n for n, q in enumerate(queries) if self.name in q.vectors]
        out: list[list[TextHit]] = [[] for _ in queries]
        found = grouped([queries[n] for n in asked], lambda q: q.depth,
                        lambda depth, qs: texts.search_dense([q.vectors[self.name] for q in qs],
                                                             depth * ROWS_PER_IMAGE))
        for n, rows in zip(asked, found, strict=True):
            out[n] = rows
        return out

    def evidence(self, q: Query, hits: list[TextHit]) -> list[ChannelHit]:
        skip = set(q.exclude)
        return [ChannelHit(r.image_id, r.score, r.text, r.kind) for r in hits if r.image_id not in skip]

    def warm(self) -> None:
        if self.service.texts.exists():
            vector = self.service.text_encoder().encode(["warm up"])[0]
            self.service.texts.search_dense([vector], 1)

    def models(self) -> list:
        return [self.service.text_encoder()] if self.service.texts.exists() else []
