"""Bodies of hundreds of MB against a real ``imgsearch serve`` (uvicorn) process: a wrong key
is refused before the body is read, an oversized body gets 413 as soon as it passes the
limit (declared or streamed), the gateway's memory stays flat and nothing is spooled to disk
(its peak RSS and the bytes it writes are read from /proc)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

import httpx
import pytest

from common.settings import Settings
from tests.query.conftest import ROOT, settings_env
from tests.query.hostile import reset_peak_rss, status_kb, written_bytes
from tests.servers import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

MB = 1024 * 1024
KEY = "body-test-key"
BODY = 300 * MB


@pytest.fixture
def gateway(tmp_path, redis_server):
    settings = Settings.from_env({}, clip_model="imgsearch-fmnist-lit-minilm",
                                 data_dir=tmp_path / "data", redis_url=redis_server.url, gateway_api_key=KEY,
                                 gateway_port=free_port(), query_stream=f"bodies:{uuid.uuid4().hex[:8]}")
    log = open(tmp_path / "gateway.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "imgsearch", "serve"], cwd=ROOT, env=settings_env(settings),
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{settings.gateway_port}"
    until = time.monotonic() + 120
    while True:
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert proc.poll() is None and time.monotonic() < until, (tmp_path / "gateway.log").read_text()
        time.sleep(0.2)
    yield proc, url, settings
    proc.terminate()
    proc.wait(20)
    log.close()


def stream(total: int, head: bytes = b"", tail: bytes = b""):
    """``total`` bytes from a generator (never held in this process either)."""
    yield head
    chunk = b"A" * MB
    left = total - len(head) - len(tail)
    while left > 0:
        yield chunk[:min(MB, left)]
        left -= MB
    yield tail


def multipart(total: int):
    boundary = "imgsearchboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode()
    return f"multipart/form-data; boundary={boundary}", stream(total, head, f"\r\n--{boundary}--\r\n".encode())


def json_body(total: int):
    return "application/json", stream(total, b'{"image_base64": "', b'"}')


def post(url: str, content_type: str, body, key: str | None, length: int | None = None) -> httpx.Response:
    headers = {"Content-Type": content_type}
    if key is not None:
        headers["X-API-Key"] = key
    if length is not None:
        headers["Content-Length"] = str(length)
    return httpx.post(url, content=body, headers=headers, timeout=60)


CASES = [  # (route, body maker, key, declare the length?) -> (status, code)
    ("/v1/search/image", multipart, "wrong", False, 401, "unauthorized"),
    ("/v1/search/image", multipart, None, True, 401, "unauthorized"),
    ("/v1/search", json_body, "wrong", False, 401, "unauthorized"),
    ("/v1/search", json_body, KEY, False, 413, "too_large"),
    ("/v1/search", json_body, KEY, True, 413, "too_large"),
    ("/v1/search/image", multipart, KEY, False, 413, "too_large"),
    ("/v1/search/image", multipart, KEY, True, 413, "too_large"),
    ("/v1/graph", json_body, KEY, False, 413, "too_large"),
]


@pytest.mark.parametrize("route, make, key, declared, status, code", CASES)
def test_huge_bodies_are_cut_off_with_flat_memory_and_nothing_spooled(gateway, route, make, key, declared,
                                                                     status, code):
    proc, url, _settings = gateway
    reset_peak_rss(proc.pid)
    idle_kb, written = status_kb(proc.pid, "VmRSS"), written_bytes(proc.pid)
    content_type, body = make(BODY)
    resp = post(url + route, content_type, body, key, BODY if declared else None)
    assert resp.status_code == status, resp.text
    assert resp.json()["error"]["code"] == code
    grown_mb = (status_kb(proc.pid, "VmHWM") - idle_kb) / 1024
    wrote_mb = (written_bytes(proc.pid) - written) / MB
    assert grown_mb < 64, f"the gateway grew by {grown_mb:.0f} MB for a {BODY // MB} MB body"
    assert wrote_mb < 1, f"the gateway wrote {wrote_mb:.1f} MB (spooled the body?)"
    assert httpx.get(url + "/healthz", timeout=5).status_code == 200  # and it keeps serving


def test_strict_types_overload_and_open_routes(gateway, redis_server):
    """No coercion of "k": "10" or "like": true; a backlog over its bound is 503 + Retry-After."""
    _proc, url, settings = gateway
    keyed = {"X-API-Key": KEY}
    for body in ({"text": "a coat", "k": "10"}, {"like": True}, {"like": "42"}, {"text": "a coat", "k": 10.0},
                 {"text": "a coat", "timeout_ms": "500"}, {"like": 2**70},
                 {"text": "a coat", "filters": [{"field": "width", "op": ">", "value": "1"}]}):
        resp = httpx.post(url + "/v1/search", json=body, headers=keyed, timeout=30)
        assert resp.status_code == 400 and resp.json()["error"]["code"] == "bad_request", (body, resp.text)
    surrogate = httpx.post(url + "/v1/search", content=b'{"text": "a \\ud800 coat"}', timeout=30,
                           headers={**keyed, "Content-Type": "application/json"})
    assert surrogate.status_code == 400, surrogate.text
    r = redis_server.client()
    for n in range(settings.query_max_backlog):  # a backlog no worker drains
        r.xadd(settings.query_stream, {"id": f"queued-{n}", "req": "{}"})
    busy = httpx.post(url + "/v1/search", json={"text": "a coat"}, headers=keyed, timeout=30)
    assert busy.status_code == 503 and busy.json()["error"]["code"] == "overloaded", busy.text
    assert busy.headers["Retry-After"] == "1"
    assert r.xlen(settings.query_stream) == settings.query_max_backlog  # nothing was added
    for path in ("/healthz", "/metrics", "/v1/capabilities", "/", "/openapi.json"):  # open (README says why)
        assert httpx.get(url + path, timeout=10).status_code == 200, path
    for path in ("/v1/stats", "/v1/jobs", "/v1/thumbnails/1"):
        assert httpx.get(url + path, timeout=10).status_code == 401, path
    caps = httpx.get(url + "/v1/capabilities", timeout=10).json()
    assert caps["api_key_required"] is True and json.dumps(caps).find(KEY) == -1
