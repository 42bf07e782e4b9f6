"""One search channel: encode a batch of queries, search them, turn the results into evidence.

A channel is a small class with three steps, each over the whole batch of queries that
asked for it (the query worker batches concurrent requests):

- :meth:`Channel.encode` sets ``q.vectors[name]`` with ONE encoder call for the batch (or a
  lookup, for an indexed image), or nothing where the channel needs no vector;
- :meth:`Channel.search` asks the store, ONE call per group of queries that share what the
  call shares (limit, filter, exclusions), and returns each query's raw hits;
- :meth:`Channel.evidence` turns one query's raw hits into :class:`ChannelHit` s for fusion
  (the channel's own cuts applied, the URIs it learnt kept in ``q.uris``).

:class:`Query` is the one query type every channel and :mod:`query.search` share.
The service a channel is built with (:class:`query.search.SearchService`) gives it the
images store, the texts store, the settings and the models, loaded on first use.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from query.fusion import ChannelHit


@dataclass
class Query:
    """One query on its way through :meth:`query.search.SearchService.search_many`."""

    kind: str  # text | image | like (an image_uri query is an image query)
    text: str | None = None
    image: bytes | None = None
    like: int | str | None = None
    image_uri: str | None = None  # s3:// URI in an allowed bucket, fetched here (query.fetch)
    k: int = 10
    filter_expr: str = ""
    channels: Sequence[str] | None = None
    must: Sequence[str] | None = None
    # filled while answering
    pil: object = None
    row: dict | None = None
    query_text: str = ""
    depth: int = 0  # images each channel is asked for (more than k: fusion and must need room)
    vectors: dict[str, object] = field(default_factory=dict)
    exclude: list[int] = field(default_factory=list)
    found: dict[str, list[ChannelHit]] = field(default_factory=dict)
    uris: dict[int, str] = field(default_factory=dict)


class Channel(ABC):
    """Base of the search channels (see the module doc); one instance per search service."""

    name: ClassVar[str]
    reads_text: ClassVar[bool] = False  # searches the query's text (typed, OCRed, or indexed)
    tier: float | None = None  # score from which a hit ranks above all others (query.fusion)

    def __init__(self, service: Any):
        self.service = service
        self.settings = service.settings

    @abstractmethod
    def encode(self, queries: Sequence[Query]) -> None:
        """Set ``q.vectors[self.name]`` for the batch with one encoder call (or a lookup)."""

    @abstractmethod
    def search(self, queries: Sequence[Query]) -> list[list]:
        """Each query's raw hits, best first (one store call per group that can share one)."""

    @abstractmethod
    def evidence(self, q: Query, hits: list) -> list[ChannelHit]:
        """One query's raw hits as fusion evidence (the channel's own cuts applied)."""

    @abstractmethod
    def warm(self) -> None:
        """Load this channel's models and run its code paths once (a worker's first answer
        must be as fast as its tenth)."""

    def models(self) -> list:
        """The :class:`common.models.base.InferenceModel` s this channel uses (loaded)."""
        return []


def grouped(queries: Sequence[Query], key: Callable[[Query], Hashable],
            call: Callable[[Hashable, list[Query]], list[list]]) -> list[list]:
    """``call(key, group)`` once per group of queries with equal ``key`` (in query order);
    each query's result, in the order given."""
    groups: dict[Hashable, list[int]] = defaultdict(list)
    for n, q in enumerate(queries):
        groups[key(q)].append(n)
    out: list[list] = [[] for _ in queries]
    for k, members in groups.items():
        for n, result in zip(members, call(k, [queries[n] for n in members]), strict=True):
            out[n] = result
    return out
