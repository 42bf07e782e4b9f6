"""The gateway's ASGI guard on its own: the key is checked before a byte of the body is read,
Content-Length and the streamed count are enforced (413 the moment the limit is passed, the
rest never read), and a keyless gateway answers only trusted hosts (DNS rebinding)."""

from __future__ import annotations

import asyncio
import json

import pytest

from common.settings import Settings
from query.guard import Guard

MB = 1024 * 1024


class Body:
    """An ASGI receive() that streams ``total`` bytes in 1 MB chunks and counts what was read."""

    def __init__(self, total: int):
        self.total, self.sent, self.calls = total, 0, 0

    async def __call__(self) -> dict:
        self.calls += 1
        chunk = min(MB, self.total - self.sent)
        self.sent += chunk
        return {"type": "http.request", "body": b"\0" * chunk, "more_body": self.sent < self.total}


async def reading_app(scope, receive, send) -> None:
    """Stands for any route: reads the whole body, then answers 200 with its size."""
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    body = json.dumps({"read": size}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


def call(guard: Guard, path: str, headers: dict[str, str], body: Body) -> tuple[int, dict]:
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path,
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}
    asyncio.run(guard(scope, body, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    return start["status"], json.loads(b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"))


def guard(**overrides) -> Guard:
    settings = Settings.from_env({}, gateway_max_body_bytes=MB, **overrides)
    return Guard(reading_app, settings, {"/v1/upload": 10 * MB})


LOCAL = {"host": "127.0.0.1:8080"}


def test_the_key_is_checked_before_the_body_is_read():
    g = guard(gateway_api_key="s3cret")
    for headers in ({}, {"x-api-key": "wrong"}, {"x-api-key": "s3cre"}):
        body = Body(300 * MB)
        status, doc = call(g, "/v1/search", {**LOCAL, **headers}, body)
        assert (status, doc["error"]["code"]) == (401, "unauthorized")
        assert body.calls == 0, "the body was read before the key was checked"
    body = Body(1000)
    assert call(g, "/v1/search", {"x-api-key": "s3cret"}, body) == (200, {"read": 1000})
    for open_path in ("/healthz", "/v1/capabilities", "/"):  # open without a key (README says why)
        assert call(g, open_path, {}, Body(10))[0] == 200


def test_a_declared_length_over_the_limit_is_refused_unread():
    g = guard()
    body = Body(300 * MB)
    status, doc = call(g, "/v1/search", {**LOCAL, "content-length": str(300 * MB)}, body)
    assert (status, doc["error"]["code"], body.calls) == (413, "too_large", 0)
    status, _ = call(g, "/v1/search", {**LOCAL, "content-length": "lots"}, Body(10))
    assert status == 400


@pytest.mark.parametrize("path, limit", [("/v1/search", MB), ("/v1/upload", 10 * MB), ("/v1/graph", MB)])
def test_a_streamed_body_gets_413_the_moment_it_passes_the_limit(path, limit):
    g = guard()
    body = Body(300 * MB)  # chunked: no Content-Length, the count decides
    status, doc = call(g, path, LOCAL, body)
    assert (status, doc["error"]["code"]) == (413, "too_large")
    assert body.sent <= limit + MB, f"read {body.sent} bytes for a limit of {limit}"
    assert call(g, path, LOCAL, Body(limit)) == (200, {"read": limit})  # at the limit: fine


def test_a_keyless_gateway_answers_only_trusted_hosts():
    g = guard()  # no key: localhost names only
    for host in ("127.0.0.1:8080", "localhost", "LOCALHOST:1", "[::1]:8080"):
        assert call(g, "/healthz", {"host": host}, Body(0))[0] == 200, host
    for host in ("evil.example", "evil.example:8080", "127.0.0.1.evil.example", ""):
        status, doc = call(g, "/v1/search", {"host": host}, Body(10))
        assert (status, doc["error"]["code"]) == (400, "bad_request"), host
        assert "untrusted Host" in doc["error"]["message"]
    keyed = guard(gateway_api_key="k")  # with a key, the key is the guard: any host
    assert call(keyed, "/v1/search", {"host": "search.example", "x-api-key": "k"}, Body(1))[0] == 200
    pinned = guard(gateway_trusted_hosts="search.example")
    assert call(pinned, "/healthz", {"host": "search.example"}, Body(0))[0] == 200
    assert call(pinned, "/healthz", {"host": "127.0.0.1"}, Body(0))[0] == 400
