"""The gateway's door, at the ASGI level: trusted hosts, the API key, body limits.

It runs before any route, dependency or body parser, so every route gets it for free
(routes added later, upload routes included):

1. **Host** (DNS rebinding): when the gateway has no API key, a browser page on another
   site can resolve its own name to 127.0.0.1 and talk to a local gateway; so requests
   whose ``Host`` is not trusted (``Settings.trusted_hosts``) get 400 before anything else.
2. **Key**: paths under ``/v1/`` (except :data:`OPEN_PATHS`) need ``X-API-Key`` when one is
   set; a missing or wrong key gets 401 *before a byte of the body is read*.
3. **Body**: a ``Content-Length`` over the route's limit gets 413 at once, unread; a body
   without one (chunked) is counted while it streams in, and the request gets 413 the
   moment the count passes the limit (the rest is never read; the connection is closed).
   Nothing is buffered or spooled here: the limit bounds what a route can hold.

Limits are per path (:meth:`Guard.limit`): routes that take more than
``IMGSEARCH_GATEWAY_MAX_BODY_BYTES`` (a query image, an upload) put theirs in the mapping the
guard was given (the gateway's ``app.state.body_limits``).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from common.settings import Settings
from query.vocabulary import BAD_REQUEST, TOO_LARGE, UNAUTHORIZED, status_of

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

OPEN_PATHS = frozenset({"/v1/capabilities"})  # under /v1/ but open: the page needs it to ask for a key
KEY_PREFIX = "/v1/"


class _TooLarge(Exception):
    """Raised inside ``receive`` once the streamed body passes its limit."""


def error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


class Guard:
    """ASGI middleware: ``Guard(app, settings)``; see the module docstring."""

    def __init__(self, app, settings: Settings, limits: MutableMapping[str, int] | None = None):
        self.app = app
        self.key = settings.gateway_api_key.encode() if settings.gateway_api_key else None
        # the index key (IMGSEARCH_GATEWAY_INDEX_KEY) opens every /v1/ path the API key opens
        self.other_keys = [settings.gateway_index_key.encode()] if settings.gateway_index_key else []
        self.hosts = settings.trusted_hosts()
        self.default_limit = settings.gateway_max_body_bytes
        # path -> body bytes allowed (default gateway_max_body_bytes); shared with the app
        # (``app.state.body_limits``) so routes added later can register theirs
        self.limits = limits if limits is not None else {}

    def limit(self, path: str) -> int:
        return self.limits.get(path, self.default_limit)

    def needs_key(self, path: str) -> bool:
        return self.key is not None and path.startswith(KEY_PREFIX) and path not in OPEN_PATHS

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers: dict[bytes, bytes] = {}
        for name, value in scope.get("headers") or ():
            headers.setdefault(name.lower(), value)
        path = scope.get("path", "")
        refused = self._refusal(path, headers)
        if refused is not None:
            await _respond(send, *refused)
            return
        limit = self.limit(path)
        length = headers.get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                await _respond(send, BAD_REQUEST, "Content-Length is not a number")
                return
            if declared > limit:
                await _respond(send, TOO_LARGE, f"request body of {declared} bytes is over the limit of "
                                                f"{limit} bytes for {path}")
                return
        await self._guarded(scope, receive, send, limit, path)

    def _refusal(self, path: str, headers: dict[bytes, bytes]) -> tuple[str, str] | None:
        if self.hosts is not None:
            host = _host_name(headers.get(b"host", b""))
            if host not in self.hosts:
                return BAD_REQUEST, ("untrusted Host header: this gateway has no API key and answers only "
                                     "IMGSEARCH_GATEWAY_TRUSTED_HOSTS (DNS-rebinding guard)")
        if self.needs_key(path):
            given = headers.get(b"x-api-key")
            if not (given and any(secrets.compare_digest(given, k)  # type: ignore[arg-type]
                                  for k in (self.key, *self.other_keys))):
                return UNAUTHORIZED, "missing or wrong X-API-Key"
        return None

    async def _guarded(self, scope: Scope, receive: Receive, send: Send, limit: int, path: str) -> None:
        received = 0
        over = False
        started = False

        async def counted() -> Message:
            nonlocal received, over
            if over:
                raise _TooLarge()
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    over = True
                    raise _TooLarge()
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            if over:  # the app answered its own way (e.g. "error parsing the body"): ours wins
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except _TooLarge:
            pass
        except Exception:
            if not over:
                raise
        if over and not started:
            await _respond(send, TOO_LARGE, f"request body is over the limit of {limit} bytes for {path}")


def _host_name(raw: bytes) -> str:
    """``Host`` header -> lower-case name without the port (``[::1]:8080`` -> ``::1``)."""
    host = raw.decode("latin-1").strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


async def _respond(send: Send, code: str, message: str) -> None:
    body = error_body(code, message)
    await send({"type": "http.response.start", "status": status_of(code),
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
