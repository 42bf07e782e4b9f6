"""The query worker: read requests from a Redis stream (consumer group), answer in batches.

Delivery is at-least-once: a request stays pending for its worker until the reply is
written, then it is acknowledged and deleted from the stream (so ``XLEN`` is the queue
depth). Requests left pending by a worker that died are claimed by another one after
``IMGSEARCH_QUERY_CLAIM_TIMEOUT_MS`` (``XAUTOCLAIM``). A reply is written by a Lua script
that first sets ``<stream>:done:<id>`` with NX, so a request answered twice (claimed from a
slow worker) or answered after its caller gave up never reaches the caller a second time.

Batching is dynamic: the worker takes everything queued (up to ``query_max_batch``); when
it sees concurrency (the read or the previous batch held more than one request) it waits
up to ``query_max_wait_ms`` for more. A lone request is never held back.

SIGTERM/SIGINT: stop reading, finish the batch in hand, leave, exit 0.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from collections.abc import Callable

import redis

from common.settings import Settings
from common.store import milvus_client, resolve_alias
from query.batch import BatchSearcher
from query.isolation import run_isolated
from query.ops import answer_entry
from query.protocol import (
    ID_RE,
    SERVER_ERROR,
    TOO_LARGE,
    ProtocolError,
    Reply,
    done_key,
    heartbeat_key,
    now_ms,
    parse_request,
    reply_key,
)
from query.search import SearchService

log = logging.getLogger(__name__)

BLOCK_MS = 500  # longest a read blocks: bounds how late a stop request or heartbeat is noticed
HEARTBEAT_EVERY_MS = 1000

# KEYS: done marker, reply list. ARGV: reply JSON, TTL seconds. Returns 1 if this reply won.
REPLY_SCRIPT = """
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[2]) then
  redis.call('RPUSH', KEYS[2], ARGV[1])
  redis.call('EXPIRE', KEYS[2], ARGV[2])
  return 1
end
return 0
"""


def ensure_group(client: redis.Redis, settings: Settings) -> None:
    """Create the stream and its consumer group if missing (idempotent)."""
    try:
        client.xgroup_create(settings.query_stream, settings.query_group, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


class QueryWorker:
    """One worker process: warm the model, then serve until told to stop."""

    def __init__(self, settings: Settings, name: str | None = None,
                 service_factory: Callable[[Settings, str | None], SearchService] = SearchService):
        self.settings = settings
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.redis = redis.Redis.from_url(settings.redis_url, socket_timeout=BLOCK_MS / 1000 + 10)
        self._reply = self.redis.register_script(REPLY_SCRIPT)
        self._service_factory = service_factory
        self.searcher: BatchSearcher | None = None
        self.serving: str | None = None  # the physical collection the searcher is bound to
        self._follow = True  # False when IMGSEARCH_COLLECTION names no alias (nothing to follow)
        self._alias_checked = 0.0  # monotonic time of the last look at the alias
        self.stopping = False
        self._last_batch = 0
        self._last_heartbeat = 0
        self._last_claim = 0.0
        self.answered = 0

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        """Load and warm the model, create the group; only then announce readiness."""
        ensure_group(self.redis, self.settings)
        self._follow_alias()
        if self.searcher is None:  # the alias could not be resolved: serve it by name
            self.searcher = BatchSearcher(self._service_factory(self.settings, None), self.settings)
            self.searcher.warm()
        self._heartbeat(force=True)
        log.info("query worker ready", extra={"worker": self.name, "stream": self.settings.query_stream})

    def _follow_alias(self) -> BatchSearcher | None:
        """Bind to the collection the alias points to now (looked up before a batch, at most
        every ``query_alias_check_ms``: the lookup is a Milvus call, ~1 ms a batch).

        A batch is answered by ONE searcher bound to one physical collection and its own
        model, so when a migration moves the alias (``alter_alias``) each answer comes wholly
        from the old or wholly from the new collection. The new searcher is loaded and warmed
        before it replaces the old one; if that fails, the old one keeps serving."""
        if not self._follow:
            return self.searcher
        now = time.monotonic()
        if self.searcher is not None and (now - self._alias_checked) * 1000 < self.settings.query_alias_check_ms:
            return self.searcher
        self._alias_checked = now
        try:
            client = milvus_client(self.settings)
            if self.searcher is None and self.settings.collection not in (client.list_aliases().get("aliases") or []):
                self._follow = False  # a physical collection (or none yet): served by name
                return None
            name = resolve_alias(client, self.settings.collection)
        except Exception as exc:  # Milvus hiccup: keep serving what we have
            log.warning("could not resolve the alias", extra={"alias": self.settings.collection, "error": str(exc)})
            return self.searcher
        if name is None or name == self.serving:
            return self.searcher

        try:
            searcher = BatchSearcher(self._service_factory(self.settings, name), self.settings)
            searcher.warm()
        except Exception:
            if self.searcher is None:
                raise
            log.exception("cannot serve the alias' new collection; staying on the old one",
                          extra={"alias": self.settings.collection, "old": self.serving, "new": name})
            return self.searcher
        if self.serving is not None:
            log.warning("alias moved: serving the new collection", extra={
                "alias": self.settings.collection, "old": self.serving, "new": name})
        self.searcher, self.serving = searcher, name
        return searcher

    def install_signal_handlers(self) -> None:
        def stop(signum, _frame) -> None:
            log.info("stopping after the batch in hand", extra={"signal": signum, "worker": self.name})
            self.stopping = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)

    def run(self) -> None:
        """Serve until :attr:`stopping`; Redis outages are retried with backoff, never fatal."""
        if self.searcher is None:
            self.start()
        backoff = 0.1
        while not self.stopping:
            try:
                self._heartbeat()
                self._claim_abandoned()
                entries = self._read_batch()
                if entries:
                    self.handle(entries)
                backoff = 0.1
            except redis.RedisError as exc:
                log.warning("redis error; retrying", extra={"error": str(exc), "retry_in_s": backoff})
                time.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                if isinstance(exc, redis.ResponseError) and "NOGROUP" in str(exc):
                    ensure_group(self.redis, self.settings)
        try:
            self.redis.zrem(heartbeat_key(self.settings.query_stream), self.name)
        except redis.RedisError:
            pass
        log.info("query worker stopped", extra={"worker": self.name, "answered": self.answered})

    # -- reading ------------------------------------------------------------------------
    def _read(self, count: int, block_ms: int | None) -> list[tuple[bytes, dict]]:
        resp = self.redis.xreadgroup(self.settings.query_group, self.name, {self.settings.query_stream: ">"},
                                     count=count, block=block_ms)
        return [entry for _stream, entries in resp or [] for entry in entries]

    def _read_batch(self) -> list[tuple[bytes, dict]]:
        max_batch = self.settings.query_max_batch
        entries = self._read(max_batch, BLOCK_MS)
        wait_s = self.settings.query_max_wait_ms / 1000
        if entries and wait_s > 0 and len(entries) < max_batch and (len(entries) > 1 or self._last_batch > 1):
            until = time.monotonic() + wait_s
            while len(entries) < max_batch:
                left_ms = int((until - time.monotonic()) * 1000)
                if left_ms < 1:
                    break
                more = self._read(max_batch - len(entries), left_ms)
                if not more:
                    break
                entries.extend(more)
        self._last_batch = len(entries)
        return entries

    def _claim_abandoned(self) -> None:
        """Take over requests another worker read but never acknowledged (it died)."""
        timeout_ms = self.settings.query_claim_timeout_ms
        if time.monotonic() - self._last_claim < min(timeout_ms / 2000, 5.0):
            return
        self._last_claim = time.monotonic()
        start = "0-0"
        while True:
            resp = self.redis.xautoclaim(self.settings.query_stream, self.settings.query_group, self.name,
                                         min_idle_time=timeout_ms, start_id=start,
                                         count=self.settings.query_max_batch)
            start, claimed = resp[0], resp[1]
            if claimed:
                log.warning("claimed abandoned requests", extra={"worker": self.name, "count": len(claimed)})
                self.handle(claimed)
            if not claimed or start in (b"0-0", "0-0"):
                return

    def _heartbeat(self, force: bool = False) -> None:
        now = now_ms()
        if force or now - self._last_heartbeat >= HEARTBEAT_EVERY_MS:
            self.redis.zadd(heartbeat_key(self.settings.query_stream), {self.name: now})
            self._last_heartbeat = now

    # -- answering ----------------------------------------------------------------------
    def handle(self, entries: list[tuple[bytes, dict]]) -> None:
        """Parse, drop expired, answer, reply, then acknowledge and delete every entry.

        Every entry with a usable id gets exactly one reply of its own: a parse error, an
        op's result, or its search answer; a failure of one never becomes another's."""
        assert self.searcher is not None
        started = time.perf_counter()
        replies: list = []  # Reply or query.ops.OpReply
        requests = []
        now = now_ms()
        max_entry = 4 * (self.settings.query_max_image_bytes // 3 + 1) + self.settings.gateway_max_body_bytes
        for entry_id, fields in entries:
            request_id = _text(fields.get(b"id")) if fields else ""
            if not ID_RE.match(request_id):
                log.warning("request without a usable id dropped", extra={"entry": _text(entry_id)})
                continue
            raw = fields.get(b"op") if fields.get(b"op") is not None else fields.get(b"req", b"")
            if len(raw) > max_entry:
                replies.append(Reply.error(request_id, TOO_LARGE, f"request is larger than {max_entry} bytes"))
                continue
            if fields.get(b"op") is not None:  # a read-only op (query.ops), not a search
                op_reply = answer_entry(self.searcher.service.store, raw, request_id, now)
                if op_reply is not None:
                    replies.append(op_reply)
                continue
            try:
                req = parse_request(raw, self.settings.query_max_image_bytes)
                if req.id != request_id:
                    raise ProtocolError(f"request id {req.id!r} differs from the entry's id {request_id!r}")
            except ProtocolError as exc:
                replies.append(Reply.failed(request_id, exc))
                continue
            if req.expired(now):
                log.info("expired request dropped", extra={"request": req.id, "late_ms": now - req.deadline})
                continue
            requests.append(req)
        if requests:
            searcher = self._follow_alias() or self.searcher
            answered: dict[str, Reply] = {}

            def failed(r, exc: Exception) -> None:  # answer() raised: a bug, costing only its request
                log.error("request failed outside its batch step", exc_info=exc, extra={"request": r.id})
                answered[r.id] = Reply.failed(r.id, exc)

            run_isolated(requests, lambda rs: answered.update(searcher.answer(rs)), failed)
            took = (time.perf_counter() - started) * 1000
            for r in requests:
                reply = answered.get(r.id) or Reply.error(r.id, SERVER_ERROR, "no answer produced")
                reply.batch, reply.took_ms = len(requests), took
                replies.append(reply)
        self._send(replies, [entry_id for entry_id, _ in entries])

    def _send(self, replies: list[Reply], entry_ids: list[bytes]) -> None:
        stream, ttl = self.settings.query_stream, self.settings.query_reply_ttl_s
        pipe = self.redis.pipeline(transaction=False)
        for reply in replies:
            reply.worker = self.name
            self._reply(keys=[done_key(stream, reply.id), reply_key(stream, reply.id)],
                        args=[reply.to_json(), ttl], client=pipe)
        if entry_ids:
            pipe.xack(stream, self.settings.query_group, *entry_ids)
            pipe.xdel(stream, *entry_ids)
        pipe.execute()
        self.answered += len(replies)


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
