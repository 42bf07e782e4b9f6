"""The ``dense`` channel: the query's text as a dense text vector against the indexed texts'
vectors (the text model the texts collection was built with), so paraphrases are found."""

from __future__ import annotations

from collections.abc import Sequence

from common.texts import TextHit
from query.channels.base import Query
from query.channels.text_rows import TextRowsChannel


class DenseChannel(TextRowsChannel):
    name = "dense"

    def encode(self, queries: Sequence[Query]) -> None:
        wanted = [q for q in queries if q.query_text]
        if wanted and self.service.texts.exists():
            vectors = self.service.text_encoder().encode([q.query_text for q in wanted])
            for q, v in zip(wanted, vectors, strict=True):
                q.vectors[self.name] = v

    def answers(self, q: Query) -> bool:
        return self.name in q.vectors

    def search_group(self, queries: Sequence[Query], limit: int) -> list[list[TextHit]]:
        return self.service.texts.search_dense([q.vectors[self.name] for q in queries], limit)

    def warm(self) -> None:
        if self.service.texts.exists():
            vector = self.service.text_encoder().encode(["warm up"])[0]
            self.service.texts.search_dense([vector], 1)

    def models(self) -> list:
        return [self.service.text_encoder()] if self.service.texts.exists() else []
