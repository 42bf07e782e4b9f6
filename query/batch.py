"""Answer a batch of validated requests: one :meth:`SearchService.search_many` call.

Concurrent requests are cheap to answer together: the search service runs each channel
over the whole batch, so all text queries go through ONE ``encode_texts`` call, all image
queries through ONE ``encode_images`` call, and requests that share a limit, filter and
exclusions go to Milvus in ONE search. A clip-only request takes the same path as a hybrid
one (the clip channel alone; fusion then keeps its own scores).

Isolation: every request gets its own reply, and one request's failure never changes
another's answer. Per-request work (fetch, decode, lookup) fails alone; a batched step
(an encoder call, a shared Milvus search) that fails is repeated one request at a time
(:func:`query.isolation.run_isolated`), so only the guilty request gets the error. Errors
map to reply codes by type (:meth:`Reply.failed`), never by their text. Nothing here knows
about Redis.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from common.errors import QueryError
from common.settings import Settings
from query.isolation import run_isolated
from query.protocol import SERVER_ERROR, Reply, Request
from query.search import Query, SearchService

log = logging.getLogger(__name__)


class BatchSearcher:
    """Encodes and searches batches of requests with a warm :class:`SearchService`."""

    def __init__(self, service: SearchService, settings: Settings):
        self.service = service
        self.settings = settings

    def warm(self) -> None:
        """Run every code path of every channel this worker serves once before serving."""
        self.service.warm()

    def answer(self, requests: Sequence[Request]) -> dict[str, Reply]:
        """request id -> reply, for every request given (errors included); never raises."""
        replies: dict[str, Reply] = {}

        def failed(r: Request, exc: Exception) -> None:
            if not isinstance(exc, QueryError):
                log.error("request failed", exc_info=exc, extra={"request": r.id, "kind": r.kind})
            replies[r.id] = Reply.failed(r.id, exc)

        run_isolated(requests, lambda rs: self._search(rs, replies), failed)
        for r in requests:
            replies.setdefault(r.id, Reply.error(r.id, SERVER_ERROR, "no answer produced"))
        return replies

    def _search(self, requests: Sequence[Request], replies: dict[str, Reply]) -> None:
        """One search_many call for all of them (each answer or error its own)."""
        queries = [Query("image" if r.kind == "image_uri" else r.kind, text=r.text, image=r.image,
                         image_uri=r.image_uri, like=r.like, k=r.k, filter_expr=r.filter_expr,
                         channels=r.channels, must=r.must) for r in requests]
        for r, result in zip(requests, self.service.search_many(queries), strict=True):
            replies[r.id] = Reply.failed(r.id, result) if isinstance(result, Exception) else Reply(r.id, True, result)
