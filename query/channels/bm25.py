"""The ``bm25`` channel: the query's words against the indexed texts (OCR lines, captions,
tags) by BM25, so exact codes and rare words are found. Evidence names the matching text and
the share of the query's words it holds (its coverage, which fusion weighs the channel by)."""

from __future__ import annotations

from collections.abc import Sequence

from common.texts import STOP_WORD_SETS, TextHit, query_words, words_coverage
from query.channels.base import Query
from query.channels.text_rows import TextRowsChannel
from query.fusion import ChannelHit


class Bm25Channel(TextRowsChannel):
    name = "bm25"

    def encode(self, queries: Sequence[Query]) -> None:
        """Nothing to encode: Milvus' BM25 function analyses the query's words itself."""

    def answers(self, q: Query) -> bool:
        return bool(q.query_text)

    def search_group(self, queries: Sequence[Query], limit: int) -> list[list[TextHit]]:
        return self.service.texts.search_bm25([q.query_text for q in queries], limit)

    def evidence(self, q: Query, hits: list[TextHit]) -> list[ChannelHit]:
        words = query_words(q.query_text, STOP_WORD_SETS[self.settings.bm25_stopwords])
        return [ChannelHit(h.image_id, h.score, h.text, h.kind, words_coverage(words, h.text))
                for h in super().evidence(q, hits)]

    def warm(self) -> None:
        self.service.texts.search_bm25(["warm up"], 1)
