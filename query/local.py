"""The in-process search service behind the gateway in embedded mode (no Redis).

:class:`LocalSearchClient` has the interface of :class:`query.client.AsyncSearchClient`
(``search``, ``op``, ``ready_workers``, ``queue_depth``, ``close``), so the gateway and the
web page sit on either unchanged. Requests are checked by the same parser
(:func:`query.client.build_request`), batched the way a query worker batches them (take
everything waiting up to ``query_max_batch``; when there is concurrency, wait up to
``query_max_wait_ms`` for more; a lone request is never held back) and answered by the same
:class:`query.batch.BatchSearcher`. Replies go through the protocol's JSON both ways, so a
caller sees exactly what a worker would have sent.

All Milvus and model work happens on ONE thread owned by this object: Milvus Lite allows
one process per database file, and this process is now it (see :mod:`query.holder`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from common.settings import Settings
from query.client import (
    BadRequest,
    SearchResult,
    ServerError,
    _decode,
    _decode_op,
    _no_answer,
    _overloaded,
    build_request,
)
from query.protocol import Reply, Request, now_ms
from query.vocabulary import CALLER_CODES

log = logging.getLogger(__name__)


class LocalSearchClient:
    """Search and ops answered in this process, batched like a query worker."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.name = f"embedded-{os.getpid()}"
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="imgsearch-search")
        self._queue: asyncio.Queue | None = None
        self._dispatcher: asyncio.Task | None = None
        self._searcher = None
        self._warm_error: BaseException | None = None
        self._warming: asyncio.Future | None = None
        self._in_flight = 0
        self._stale = False  # set by refresh(): build the service again before the next request
        self._last_batch = 0
        self.batches: list[int] = []  # sizes of the batches answered (tests, metrics)

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        """Begin loading and warming the model and collection (on the search thread)."""
        loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue()
        self._warming = loop.run_in_executor(self._executor, self._warm)
        self._dispatcher = loop.create_task(self._dispatch())

    def _warm(self) -> None:
        from query.batch import BatchSearcher
        from query.search import SearchService

        try:
            searcher = BatchSearcher(SearchService(self.settings), self.settings)
            searcher.warm()
            self._searcher, self._warm_error = searcher, None
            log.info("embedded search service ready", extra={"collection": self.settings.collection})
        except BaseException as exc:  # reported by readyz and by every request
            self._warm_error = exc
            log.error("embedded search service could not start: %s", exc)

    def refresh(self) -> None:
        """The collection changed under us (an ingest job of this process created or grew
        it): build the search service again before the next request. Any thread may call."""
        self._stale = True

    async def _ready(self):
        if self._warming is None:
            self.start()
        if (self._stale or self._searcher is None) and self._warming.done():  # or it failed: try again
            self._stale = False
            self._warming = asyncio.get_running_loop().run_in_executor(self._executor, self._warm)
        await asyncio.shield(self._warming)
        if self._searcher is None:
            exc = self._warm_error
            if isinstance(exc, BadRequest | ServerError):
                raise exc
            code = getattr(exc, "code", None)
            if code in CALLER_CODES:
                raise BadRequest(str(exc), code)
            raise ServerError(f"the search service could not start: {exc}")
        return self._searcher

    async def close(self) -> None:
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            try:
                await self._dispatcher
            except (asyncio.CancelledError, Exception):
                pass
        self._executor.shutdown(wait=True, cancel_futures=True)

    # -- the interface of AsyncSearchClient -----------------------------------------------
    async def search(self, timeout: float | None = None, **query) -> SearchResult:
        timeout_s = timeout if timeout is not None else self.settings.query_timeout_ms / 1000
        req = build_request(timeout_s=timeout_s, max_image_bytes=self.settings.query_max_image_bytes, **query)
        await self._ready()
        if self._queue.qsize() + self._in_flight >= self.settings.query_max_backlog:
            raise _overloaded(self.settings)
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((req, future))
        try:
            raw = await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except TimeoutError:
            raise _no_answer(timeout_s) from None
        return _decode(raw)

    async def op(self, op: str, timeout: float | None = None, **args) -> dict:
        """A read-only collection op (``stats``, ``rows``, ``sample``; :mod:`query.ops`)."""
        from query.ops import OpRequest, answer_entry

        timeout_s = timeout if timeout is not None else self.settings.query_timeout_ms / 1000
        req = OpRequest(uuid.uuid4().hex, now_ms() + int(timeout_s * 1000), op, **args)
        searcher = await self._ready()
        raw = req.to_json().encode()

        def answer() -> str | None:
            reply = answer_entry(searcher.service.store, raw, req.id, now_ms())
            if reply is None:
                return None
            reply.worker = self.name
            return reply.to_json()

        try:
            text = await asyncio.wait_for(self.run(answer), timeout_s)
        except TimeoutError:
            raise _no_answer(timeout_s) from None
        if text is None:
            raise _no_answer(timeout_s)
        return _decode_op(text)

    async def run(self, fn, *args):
        """Run ``fn(*args)`` on the search thread (the one that owns Milvus and the models)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    @property
    def service(self):
        """The warm :class:`query.search.SearchService` (None until ready)."""
        return self._searcher.service if self._searcher is not None else None

    async def ready_workers(self) -> list[str]:
        return [self.name] if self._searcher is not None else []

    async def queue_depth(self) -> int:
        return (self._queue.qsize() if self._queue is not None else 0) + self._in_flight

    # -- batching ---------------------------------------------------------------------------
    async def _take_batch(self) -> list[tuple[Request, asyncio.Future]]:
        max_batch = self.settings.query_max_batch
        batch = [await self._queue.get()]
        while len(batch) < max_batch and not self._queue.empty():
            batch.append(self._queue.get_nowait())
        wait_s = self.settings.query_max_wait_ms / 1000
        if wait_s > 0 and len(batch) < max_batch and (len(batch) > 1 or self._last_batch > 1):
            until = time.monotonic() + wait_s
            while len(batch) < max_batch:
                left = until - time.monotonic()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), left))
                except TimeoutError:
                    break
        self._last_batch = len(batch)
        return batch

    async def _dispatch(self) -> None:
        while True:
            batch = await self._take_batch()
            live = [(r, f) for r, f in batch if not f.done()]
            now = now_ms()
            live = [(r, f) for r, f in live if not r.expired(now)]
            if not live:
                continue
            self._in_flight = len(live)
            try:
                replies = await self.run(self._answer, [r for r, _ in live])
            except Exception as exc:  # answer() never raises; this is a bug, not a reply
                log.exception("embedded batch failed")
                replies = {r.id: Reply.failed(r.id, exc).to_json() for r, _ in live}
            finally:
                self._in_flight = 0
            self.batches.append(len(live))
            for r, f in live:
                if not f.done():
                    f.set_result(replies[r.id])

    def _answer(self, requests: list[Request]) -> dict[str, str]:
        started = time.perf_counter()
        answered = self._searcher.answer(requests)
        took = (time.perf_counter() - started) * 1000
        out = {}
        for r in requests:
            reply = answered[r.id]
            reply.batch, reply.took_ms, reply.worker = len(requests), took, self.name
            out[r.id] = reply.to_json()
        return out
