"""Client library: search through the query workers without knowing the protocol.

``SearchClient(redis_url).search(text="a red sneaker", k=10)`` adds a request to the stream
and blocks on its reply list (``BLPOP``) until the request's deadline. Exactly one reply is
taken: workers write at most one (see :mod:`query.worker`), and on timeout the client marks
the request settled so a late worker does not answer into the void.

Errors are typed: :class:`SearchTimeout` (no answer before the deadline),
:class:`BadRequest` (the request is wrong; ``code`` says how), :class:`ServerError`
(a worker or Redis failed). :class:`AsyncSearchClient` is the same over ``redis.asyncio``.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import redis
import redis.asyncio as aioredis

from common.errors import QueryError
from common.settings import Settings
from common.store import Hit
from query.filters import Filter, parse_filters
from query.fusion import FusedHit
from query.protocol import (
    BAD_REQUEST,
    HEARTBEAT_FRESH_MS,
    NOT_FOUND,
    SERVER_ERROR,
    ProtocolError,
    Reply,
    Request,
    done_key,
    heartbeat_key,
    now_ms,
    parse_reply,
    reply_key,
)
from query.search import check_must, resolve_channels


class SearchError(QueryError):
    """Base of the client's errors; ``code`` is the protocol error code (or ``timeout``)."""

    code = SERVER_ERROR


class SearchTimeout(SearchError):
    """No worker answered before the deadline (none running, overloaded, or all died)."""

    code = "timeout"


class BadRequest(SearchError):
    """The request was refused: malformed, unknown filter field, bad image, unknown id."""

    def __init__(self, message: str, code: str = BAD_REQUEST):
        super().__init__(message)
        self.code = code


class ServerError(SearchError):
    """A worker (or Redis) failed while answering; retrying may help."""


@dataclass
class SearchResult:
    """Hits best first, plus which worker answered and in how large a batch."""

    hits: list[Hit | FusedHit]  # FusedHit (with per-channel evidence) from current workers
    worker: str = ""
    batch: int = 0
    took_ms: float = 0.0
    extra: dict = field(default_factory=dict)


def build_request(text: str | None = None, image: bytes | str | Path | None = None, like: int | str | None = None,
                  k: int = 10, filters: Sequence[Filter | dict] | None = None, timeout_s: float = 10.0,
                  channels: Sequence[str] | None = None, must: Sequence[str] | None = None,
                  max_image_bytes: int = 10 * 1024 * 1024) -> Request:
    """Check what can be checked locally (one query, filters, image size) and make a request.

    ``image`` is bytes, a local file path (read here, sent as bytes) or an ``s3://`` URI
    (fetched by the worker).
    """
    given = [name for name, value in (("text", text), ("image", image), ("like", like)) if value is not None]
    if len(given) != 1:
        raise BadRequest(f"give exactly one of text, image, like (got {', '.join(given) or 'none'})")
    try:
        parsed_filters = parse_filters(list(filters) if filters else [])
        picked = resolve_channels(given[0], list(channels)) if channels is not None else None
        words = check_must(list(must) if must else None)
    except QueryError as exc:
        raise BadRequest(str(exc)) from None
    req = Request(id=uuid.uuid4().hex, deadline=now_ms() + int(timeout_s * 1000), kind=given[0], k=k,
                  filters=parsed_filters, channels=picked, must=words)
    if text is not None:
        req.text = text
    elif like is not None:
        req.like = like
    elif isinstance(image, str) and image.startswith("s3://"):
        req.kind, req.image_uri = "image_uri", image
    else:
        if not isinstance(image, bytes):
            try:
                image = Path(image).expanduser().read_bytes()
            except OSError as exc:
                raise BadRequest(f"cannot read query image {image}: {exc.strerror or exc}") from None
        if len(image) > max_image_bytes:
            raise BadRequest(f"query image is larger than the limit of {max_image_bytes} bytes")
        req.image = image
    return req


def _result(reply: Reply) -> SearchResult:
    if reply.ok:
        return SearchResult(reply.hits, reply.worker, reply.batch, reply.took_ms)
    if reply.error_code in (BAD_REQUEST, NOT_FOUND):
        raise BadRequest(reply.error_message, reply.error_code)
    raise ServerError(f"{reply.error_code}: {reply.error_message}")


def _decode(raw: bytes) -> SearchResult:
    try:
        return _result(parse_reply(raw))
    except ProtocolError as exc:
        raise ServerError(str(exc)) from None


class _Base:
    def __init__(self, redis_url: str | None = None, settings: Settings | None = None):
        self.settings = settings or Settings.from_env()
        self.redis_url = redis_url or self.settings.redis_url
        if not self.redis_url:
            raise QueryError("no Redis URL: pass one or set IMGSEARCH_REDIS_URL")
        self.stream = self.settings.query_stream

    def _request(self, timeout: float | None, **query) -> tuple[Request, float]:
        timeout_s = timeout if timeout is not None else self.settings.query_timeout_ms / 1000
        if timeout_s <= 0:
            raise BadRequest("timeout must be positive")
        req = build_request(timeout_s=timeout_s, max_image_bytes=self.settings.query_max_image_bytes, **query)
        return req, timeout_s

    def _entry(self, req: Request) -> dict:
        return {"id": req.id, "req": req.to_json()}


class SearchClient(_Base):
    """Blocking client. Thread-safe (one connection pool); one call = one request."""

    def __init__(self, redis_url: str | None = None, settings: Settings | None = None):
        super().__init__(redis_url, settings)
        # Blocking reads wait up to the request timeout: no socket timeout below that.
        self.redis = redis.Redis.from_url(self.redis_url, socket_timeout=None, socket_connect_timeout=5)

    def search(self, text: str | None = None, image: bytes | str | Path | None = None,
               like: int | str | None = None, k: int = 10, filters: Sequence[Filter | dict] | None = None,
               timeout: float | None = None, channels: Sequence[str] | None = None,
               must: Sequence[str] | None = None) -> SearchResult:
        """Search by text, image (bytes, path or s3:// URI) or an indexed image (id or URI).

        ``channels`` picks search channels (clip, bm25, dense, phash; None: the query kind's
        defaults); ``must`` keeps only images whose indexed text contains every word."""
        req, timeout_s = self._request(timeout, text=text, image=image, like=like, k=k, filters=filters,
                                       channels=channels, must=must)
        try:
            self.redis.xadd(self.stream, self._entry(req))
            # Socket timeout must outlast the BLPOP itself.
            popped = self.redis.blpop([reply_key(self.stream, req.id)], timeout=timeout_s)
            if popped is None:
                if self.redis.set(done_key(self.stream, req.id), "timeout", nx=True,
                                  ex=self.settings.query_reply_ttl_s):
                    raise SearchTimeout(f"no answer within {timeout_s:g}s (are query workers running?)")
                # A worker settled it in the last instant: its reply is there now.
                popped = self.redis.blpop([reply_key(self.stream, req.id)], timeout=1)
                if popped is None:
                    raise SearchTimeout(f"no answer within {timeout_s:g}s")
        except redis.RedisError as exc:
            raise ServerError(f"redis: {exc}") from exc
        return _decode(popped[1])

    def ready_workers(self) -> list[str]:
        """Names of workers that are warm and sent a heartbeat recently."""
        names = self.redis.zrangebyscore(heartbeat_key(self.stream), now_ms() - HEARTBEAT_FRESH_MS, "+inf")
        return [n.decode() for n in names]

    def queue_depth(self) -> int:
        """Requests in the stream not yet answered (queued or being worked on)."""
        return int(self.redis.xlen(self.stream))

    def close(self) -> None:
        self.redis.close()


class AsyncSearchClient(_Base):
    """asyncio client over ``redis.asyncio``: many searches in flight on one event loop."""

    def __init__(self, redis_url: str | None = None, settings: Settings | None = None):
        super().__init__(redis_url, settings)
        self.redis = aioredis.Redis.from_url(self.redis_url, socket_timeout=None, socket_connect_timeout=5)

    async def search(self, text: str | None = None, image: bytes | str | Path | None = None,
                     like: int | str | None = None, k: int = 10, filters: Sequence[Filter | dict] | None = None,
                     timeout: float | None = None, channels: Sequence[str] | None = None,
                     must: Sequence[str] | None = None) -> SearchResult:
        """Same as :meth:`SearchClient.search`, without blocking the event loop."""
        req, timeout_s = self._request(timeout, text=text, image=image, like=like, k=k, filters=filters,
                                       channels=channels, must=must)
        return _decode(await self._exchange(req.id, self._entry(req), timeout_s))

    async def op(self, op: str, timeout: float | None = None, **args) -> dict:
        """A read-only collection op (``stats``, ``rows``, ``sample``; see :mod:`query.ops`) -> its result."""
        from query.ops import OpRequest, parse_op_reply

        timeout_s = timeout if timeout is not None else self.settings.query_timeout_ms / 1000
        req = OpRequest(uuid.uuid4().hex, now_ms() + int(timeout_s * 1000), op, **args)
        try:
            ok, result = parse_op_reply(await self._exchange(req.id, {"id": req.id, "op": req.to_json()},
                                                             timeout_s))
        except ProtocolError as exc:
            raise ServerError(str(exc)) from None
        if ok:
            return result
        if result["code"] in (BAD_REQUEST, NOT_FOUND):
            raise BadRequest(result["message"], result["code"])
        raise ServerError(f"{result['code']}: {result['message']}")

    async def _exchange(self, request_id: str, entry: dict, timeout_s: float) -> bytes:
        """Add ``entry`` to the stream and wait for its one reply (SearchTimeout at the deadline)."""
        try:
            await self.redis.xadd(self.stream, entry)
            popped = await self.redis.blpop([reply_key(self.stream, request_id)], timeout=timeout_s)
            if popped is None:
                if await self.redis.set(done_key(self.stream, request_id), "timeout", nx=True,
                                        ex=self.settings.query_reply_ttl_s):
                    raise SearchTimeout(f"no answer within {timeout_s:g}s (are query workers running?)")
                popped = await self.redis.blpop([reply_key(self.stream, request_id)], timeout=1)
                if popped is None:
                    raise SearchTimeout(f"no answer within {timeout_s:g}s")
        except redis.RedisError as exc:
            raise ServerError(f"redis: {exc}") from exc
        return popped[1]

    async def ready_workers(self) -> list[str]:
        names = await self.redis.zrangebyscore(heartbeat_key(self.stream), now_ms() - HEARTBEAT_FRESH_MS, "+inf")
        return [n.decode() for n in names]

    async def queue_depth(self) -> int:
        return int(await self.redis.xlen(self.stream))

    async def close(self) -> None:
        await self.redis.aclose()
