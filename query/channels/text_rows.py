"""What the two text channels (``bm25``, ``dense``) share: they search text rows (OCR lines,
captions, tags), several per image, grouped by depth, and their evidence is the matching row's
text minus the excluded images. Each channel says only which queries it can answer and how one
group is searched."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence

from common.texts import TextHit
from query.channels.base import Channel, Query, grouped
from query.fusion import ChannelHit

ROWS_PER_IMAGE = 3  # text rows asked for per image wanted: an image has several texts


class TextRowsChannel(Channel):
    reads_text = True

    @abstractmethod
    def answers(self, q: Query) -> bool:
        """Whether this channel has something to search for ``q`` (its words, its vector)."""

    @abstractmethod
    def search_group(self, queries: Sequence[Query], limit: int) -> list[list[TextHit]]:
        """One store call for queries that share a limit (text rows, not images)."""

    def search(self, queries: Sequence[Query]) -> list[list[TextHit]]:
        asked = [n for n, q in enumerate(queries) if self.answers(q)]
        out: list[list[TextHit]] = [[] for _ in queries]
        found = grouped([queries[n] for n in asked], lambda q: q.depth,
                        lambda depth, qs: self.search_group(qs, depth * ROWS_PER_IMAGE))
        for n, rows in zip(asked, found, strict=True):
            out[n] = rows
        return out

    def evidence(self, q: Query, hits: list[TextHit]) -> list[ChannelHit]:
        skip = set(q.exclude)
        return [ChannelHit(r.image_id, r.score, r.text, r.kind) for r in hits if r.image_id not in skip]
