"""Client library: search through the query workers without knowing the protocol.

``SearchClient(redis_url).search(text="a red sneaker", k=10)`` adds a request to the stream
and blocks on its reply list (``BLPOP``) until the request's deadline. Exactly one reply is
taken: workers write at most one (see :mod:`query.worker`), and on timeout the client marks
the request settled (and deletes its entry) so a late worker does not answer into the void.

A request is checked here by the protocol's own parser (:func:`query.protocol.request_from_doc`)
before it is sent, so the client refuses exactly what a worker would. Query images are
bytes or an ``s3://`` URI the worker fetches; the client never reads a file, whatever it
is given (the gateway sits on it).

Backpressure: a Lua script adds the request only while the stream holds fewer than
``IMGSEARCH_QUERY_MAX_BACKLOG`` entries, and always with ``XADD MAXLEN ~
IMGSEARCH_QUERY_STREAM_MAX_LEN``; over the bound the call fails fast with :class:`Overloaded`.

Errors are typed: :class:`SearchTimeout` (no answer before the deadline),
:class:`BadRequest` (the request is wrong; ``code`` says how: bad_request, not_found,
too_large), :class:`Overloaded` (backlog over its bound; retry after ``retry_after`` s),
:class:`ServerError` (a worker or Redis failed). :class:`AsyncSearchClient` is the same
over ``redis.asyncio``.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.asyncio as aioredis

from common.errors import QueryError
from common.settings import Settings
from common.store import Hit
from query.filters import Filter
from query.fusion import FusedHit
from query.protocol import (
    HEARTBEAT_FRESH_MS,
    ProtocolError,
    Reply,
    Request,
    done_key,
    heartbeat_key,
    now_ms,
    parse_reply,
    reply_key,
    request_from_doc,
)
from query.vocabulary import (
    BAD_REQUEST,
    CALLER_CODES,
    MAX_TIMEOUT_MS,
    OVERLOADED,
    RETRY_AFTER_S,
    SCHEMA_VERSION,
    SERVER_ERROR,
    TIMEOUT,
)

# KEYS: the stream. ARGV: backlog bound, stream cap, then the entry's field/value pairs.
# Returns the entry id, or false (nil) when the backlog is over the bound (nothing added).
ADD_SCRIPT = """
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then
  return false
end
return redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', unpack(ARGV, 3))
"""


class SearchError(QueryError):
    """Base of the client's errors; ``code`` is the protocol error code (or ``timeout``)."""

    code = SERVER_ERROR


class SearchTimeout(SearchError):
    """No worker answered before the deadline (none running, overloaded, or all died)."""

    code = TIMEOUT


class BadRequest(SearchError):
    """The request was refused: malformed, unknown filter field, bad image, unknown id;
    ``code`` is bad_request, not_found or too_large."""

    def __init__(self, message: str, code: str = BAD_REQUEST):
        super().__init__(message)
        self.code = code


class Overloaded(SearchError):
    """The request backlog is over IMGSEARCH_QUERY_MAX_BACKLOG: not queued; retry later."""

    code = OVERLOADED
    retry_after = RETRY_AFTER_S


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


def build_request(text: str | None = None, image: bytes | str | None = None, like: int | str | None = None,
                  k: int = 10, filters: Sequence[Filter | dict] | None = None, timeout_s: float = 10.0,
                  channels: Sequence[str] | None = None, must: Sequence[str] | None = None,
                  max_image_bytes: int = 10 * 1024 * 1024, image_uri: str | None = None) -> Request:
    """A request checked by the protocol's parser (BadRequest with the reply's code if not).

    ``image`` is bytes, or an ``s3://`` URI (fetched by a worker, from an allowed bucket);
    ``image_uri`` says the latter explicitly. Anything else (a path, a file name) is refused:
    the client never reads files, so nothing that forwards a caller's value through it (the
    gateway) can be made to read one. A program with a file reads it and passes the bytes.
    """
    if isinstance(image, str) and image_uri is None:
        image, image_uri = None, image
        if not image_uri.startswith("s3://"):
            raise BadRequest("image must be bytes or an s3:// URI; the client never reads files "
                             "(read the file yourself and pass its bytes)")
    given = [name for name, value in (("text", text), ("image", image), ("image_uri", image_uri), ("like", like))
             if value is not None]
    if len(given) != 1:
        raise BadRequest(f"give exactly one of text, image, like (got {', '.join(given) or 'none'})")
    if image is not None and not isinstance(image, bytes | bytearray | memoryview):
        raise BadRequest(f"image must be bytes or an s3:// URI, not {type(image).__name__}; the client never "
                         "reads files (read the file yourself and pass its bytes)")
    if image is not None and len(image) > max_image_bytes:  # before base64 doubles the work
        raise BadRequest(f"query image is larger than the limit of {max_image_bytes} bytes", "too_large")
    if not isinstance(timeout_s, int | float) or isinstance(timeout_s, bool) or not (
            0 < timeout_s <= MAX_TIMEOUT_MS / 1000):
        raise BadRequest(f"timeout must be a number of seconds above 0 and at most {MAX_TIMEOUT_MS // 1000}")
    value: Any = {"text": text, "image_uri": image_uri, "like": like}.get(given[0])
    if given[0] == "image":
        value = base64.b64encode(bytes(image)).decode("ascii")  # type: ignore[arg-type]
    doc: dict[str, Any] = {"v": SCHEMA_VERSION, "id": uuid.uuid4().hex, "deadline": now_ms() + int(timeout_s * 1000),
                           "query": {given[0]: value}, "k": k, "filters": _filter_docs(filters)}
    if channels is not None:
        doc["channels"] = list(channels) if isinstance(channels, list | tuple) else channels
    if must:
        doc["must"] = list(must) if isinstance(must, list | tuple) else must
    try:
        return request_from_doc(doc, max_image_bytes)
    except ProtocolError as exc:
        raise BadRequest(str(exc), exc.code) from None


def _filter_docs(filters: Any) -> Any:
    if filters is None:
        return []
    if not isinstance(filters, list | tuple):
        return filters  # the parser says what is wrong with it
    return [f.to_dict() if isinstance(f, Filter) else f for f in filters]


def _result(reply: Reply) -> SearchResult:
    if reply.ok:
        return SearchResult(reply.hits, reply.worker, reply.batch, reply.took_ms)
    if reply.error_code in CALLER_CODES:
        raise BadRequest(reply.error_message, reply.error_code)
    raise ServerError(f"{reply.error_code}: {reply.error_message}")


def _decode_op(raw: bytes | str) -> dict:
    """An op's reply -> its result, or the typed error it carries (as :func:`_decode` for searches)."""
    from query.ops import parse_op_reply

    try:
        ok, result = parse_op_reply(raw)
    except ProtocolError as exc:
        raise ServerError(str(exc)) from None
    if ok:
        return result
    if result["code"] in CALLER_CODES:
        raise BadRequest(result["message"], result["code"])
    raise ServerError(f"{result['code']}: {result['message']}")


def _decode(raw: bytes) -> SearchResult:
    try:
        return _result(parse_reply(raw))
    except ProtocolError as exc:
        raise ServerError(str(exc)) from None


def _no_answer(timeout_s: float) -> SearchTimeout:
    return SearchTimeout(f"no answer within {timeout_s:g}s (are query workers running?)")


def _overloaded(settings: Settings) -> Overloaded:
    return Overloaded(f"the query backlog is over {settings.query_max_backlog} requests "
                      f"(IMGSEARCH_QUERY_MAX_BACKLOG); retry in {RETRY_AFTER_S}s")


class _Base:
    def __init__(self, redis_url: str | None = None, settings: Settings | None = None):
        self.settings = settings or Settings.from_env()
        self.redis_url = redis_url or self.settings.redis_url
        if not self.redis_url:
            raise QueryError("no Redis URL: pass one or set IMGSEARCH_REDIS_URL")
        self.stream = self.settings.query_stream

    def _request(self, timeout: float | None, **query) -> tuple[Request, float]:
        timeout_s = timeout if timeout is not None else self.settings.query_timeout_ms / 1000
        req = build_request(timeout_s=timeout_s, max_image_bytes=self.settings.query_max_image_bytes, **query)
        return req, timeout_s

    def _entry(self, req: Request) -> dict:
        return {"id": req.id, "req": req.to_json()}

    def _add_args(self, entry: dict) -> list:
        return [self.settings.query_max_backlog, self.settings.query_stream_max_len,
                *(x for pair in entry.items() for x in pair)]


class SearchClient(_Base):
    """Blocking client. Thread-safe (one connection pool); one call = one request."""

    def __init__(self, redis_url: str | None = None, settings: Settings | None = None):
        super().__init__(redis_url, settings)
        # Blocking reads wait up to the request timeout: no socket timeout below that.
        self.redis = redis.Redis.from_url(self.redis_url, socket_timeout=None, socket_connect_timeout=5)
        self._add = self.redis.register_script(ADD_SCRIPT)

    def search(self, text: str | None = None, image: bytes | str | None = None,
               like: int | str | None = None, k: int = 10, filters: Sequence[Filter | dict] | None = None,
               timeout: float | None = None, channels: Sequence[str] | None = None,
               must: Sequence[str] | None = None, image_uri: str | None = None) -> SearchResult:
        """Search by text, image (bytes or an s3:// URI) or an indexed image (id or URI).

        ``channels`` picks search channels (clip, bm25, dense, phash; None: the query kind's
        defaults); ``must`` keeps only images whose indexed text contains every word."""
        req, timeout_s = self._request(timeout, text=text, image=image, like=like, k=k, filters=filters,
                                       channels=channels, must=must, image_uri=image_uri)
        return _decode(self._exchange(req.id, self._entry(req), timeout_s))

    def _exchange(self, request_id: str, entry: dict, timeout_s: float) -> bytes:
        """Add ``entry`` (unless overloaded) and wait for its one reply (SearchTimeout at the deadline)."""
        try:
            entry_id = self._add(keys=[self.stream], args=self._add_args(entry))
            if entry_id is None:
                raise _overloaded(self.settings)
            popped = self.redis.blpop([reply_key(self.stream, request_id)], timeout=timeout_s)
            if popped is None:
                if self.redis.set(done_key(self.stream, request_id), "timeout", nx=True,
                                  ex=self.settings.query_reply_ttl_s):
                    self.redis.xdel(self.stream, entry_id)  # nobody waits for it any more
                    raise _no_answer(timeout_s)
                # A worker settled it in the last instant: its reply is there now.
                popped = self.redis.blpop([reply_key(self.stream, request_id)], timeout=1)
                if popped is None:
                    raise _no_answer(timeout_s)
        except redis.RedisError as exc:
            raise ServerError(f"redis: {exc}") from exc
        return popped[1]

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
        self._add = self.redis.register_script(ADD_SCRIPT)

    async def search(self, text: str | None = None, image: bytes | str | None = None,
                     like: int | str | None = None, k: int = 10, filters: Sequence[Filter | dict] | None = None,
                     timeout: float | None = None, channels: Sequence[str] | None = None,
                     must: Sequence[str] | None = None, image_uri: str | None = None) -> SearchResult:
        """Same as :meth:`SearchClient.search`, without blocking the event loop."""
        req, timeout_s = self._request(timeout, text=text, image=image, like=like, k=k, filters=filters,
                                       channels=channels, must=must, image_uri=image_uri)
        return _decode(await self._exchange(req.id, self._entry(req), timeout_s))

    async def op(self, op: str, timeout: float | None = None, **args) -> dict:
        """A read-only collection op (``stats``, ``rows``, ``sample``; see :mod:`query.ops`) -> its result."""
        from query.ops import OpRequest

        timeout_s = timeout if timeout is not None else self.settings.query_timeout_ms / 1000
        req = OpRequest(uuid.uuid4().hex, now_ms() + int(timeout_s * 1000), op, **args)
        return _decode_op(await self._exchange(req.id, {"id": req.id, "op": req.to_json()}, timeout_s))

    async def _exchange(self, request_id: str, entry: dict, timeout_s: float) -> bytes:
        """Add ``entry`` (unless overloaded) and wait for its one reply (SearchTimeout at the deadline)."""
        try:
            entry_id = await self._add(keys=[self.stream], args=self._add_args(entry))
            if entry_id is None:
                raise _overloaded(self.settings)
            popped = await self.redis.blpop([reply_key(self.stream, request_id)], timeout=timeout_s)
            if popped is None:
                if await self.redis.set(done_key(self.stream, request_id), "timeout", nx=True,
                                        ex=self.settings.query_reply_ttl_s):
                    await self.redis.xdel(self.stream, entry_id)  # nobody waits for it any more
                    raise _no_answer(timeout_s)
                popped = await self.redis.blpop([reply_key(self.stream, request_id)], timeout=1)
                if popped is None:
                    raise _no_answer(timeout_s)
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
