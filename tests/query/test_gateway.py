"""HTTP gateway in front of a live worker subprocess: search, upload limits, auth, health, metrics."""

from __future__ import annotations

import base64

import pytest
from fastapi.testclient import TestClient

from query.gateway import create_app
from query.search import SearchService

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

KEY = "s3cret-key"


@pytest.fixture
def gateway_settings(queue_settings):
    return queue_settings.with_overrides(gateway_api_key=KEY, query_max_image_bytes=5000)


@pytest.fixture
def http(gateway_settings):
    with TestClient(create_app(gateway_settings), headers={"X-API-Key": KEY}) as client:
        yield client


def sample_png(samples_dir) -> bytes:
    return sorted(samples_dir.glob("bag/*.png"))[0].read_bytes()


def test_health_readiness_search_upload_and_metrics(gateway_settings, http, start_worker, samples_dir):
    assert http.get("/healthz").json() == {"status": "ok"}
    not_ready = http.get("/readyz")
    assert not_ready.status_code == 503 and not_ready.json()["error"]["code"] == "not_ready"
    start_worker(gateway_settings, "gw-worker")
    assert http.get("/readyz").json() == {"status": "ready", "workers": ["gw-worker"]}

    service = SearchService(gateway_settings)
    got = http.post("/v1/search", json={"text": "a leather handbag", "k": 5, "channels": ["clip"]})
    assert got.status_code == 200, got.text
    assert [h["id"] for h in got.json()["hits"]] == [h.id for h in service.search_text("a leather handbag", 5)]
    assert got.json()["worker"] == "gw-worker" and got.json()["batch"] >= 1

    png = sample_png(samples_dir)
    up = http.post("/v1/search/image", files={"file": ("q.png", png, "image/png")}, data={"k": "5", "channels": "clip"})
    assert up.status_code == 200, up.text
    assert [h["id"] for h in up.json()["hits"]] == [h.id for h in service.search_image(png, 5)]
    b64 = http.post("/v1/search", json={"image_base64": base64.b64encode(png).decode(), "k": 5,
                                           "channels": ["clip"]})
    assert [h["id"] for h in b64.json()["hits"]] == [h["id"] for h in up.json()["hits"]]

    first = got.json()["hits"][0]["id"]
    like = http.post("/v1/search", json={"like": first, "k": 5, "channels": ["clip"],
                                         "filters": [{"field": "width", "op": ">=", "value": 1}]})
    assert [h["id"] for h in like.json()["hits"]] == [h.id for h in service.search_like(first, 5)]

    metrics = http.get("/metrics").text
    assert 'imgsearch_gateway_requests_total{kind="text",outcome="ok"} 1.0' in metrics
    assert 'imgsearch_gateway_requests_total{kind="image",outcome="ok"} 2.0' in metrics
    assert "imgsearch_gateway_request_seconds_bucket" in metrics
    assert "imgsearch_query_batch_size_count 4.0" in metrics
    assert "imgsearch_query_queue_depth 0.0" in metrics
    assert "imgsearch_query_workers_ready 1.0" in metrics


BAD_CALLS = [
    (lambda h: h.post("/v1/search", json={"text": "a coat", "sql": "1"}), 400, "sql: Extra inputs"),
    (lambda h: h.post("/v1/search", json={"text": "a coat", "like": 5}), 400, "exactly one of"),
    (lambda h: h.post("/v1/search", json={"text": "a coat", "k": 0}), 400, "k: Input should be greater"),
    (lambda h: h.post("/v1/search", json={"text": "a coat", "filters": [{"field": "model", "op": "==",
                                                                         "value": "x"}]}),
     400, "unknown filter field 'model'"),
    (lambda h: h.post("/v1/search", json={"text": "a coat", "filters": [{"field": "uri", "op": "==",
                                                                         "value": "x", "expr": "id>0"}]}),
     400, "Extra inputs"),
    (lambda h: h.post("/v1/search", json={"like": 4242, "k": 3}), 404, "no indexed image"),
    (lambda h: h.post("/v1/search/image", files={"file": ("big.png", b"\x89PNG" + b"0" * 6000, "image/png")}),
     413, "larger than the limit of 5000 bytes"),
    (lambda h: h.post("/v1/search", json={"image_base64": base64.b64encode(b"0" * 6000).decode()}),
     413, "larger than the limit"),
    (lambda h: h.post("/v1/search/image", files={"file": ("x.png", b"<html>not an image</html>", "image/png")}),
     400, "unsupported_type"),
    (lambda h: h.post("/v1/search/image", files={"file": ("x.png", b"", "image/png")}), 400, "empty upload"),
]


def test_bad_requests_get_clear_errors_and_the_service_keeps_answering(gateway_settings, http, start_worker):
    worker = start_worker(gateway_settings)
    for call, status, fragment in BAD_CALLS:
        resp = call(http)
        assert resp.status_code == status, resp.text
        assert fragment in resp.json()["error"]["message"], resp.text
        assert http.post("/v1/search", json={"text": "a coat", "k": 2}).status_code == 200
    assert worker.proc.poll() is None


def test_api_key_timeout_and_openapi(gateway_settings):
    with TestClient(create_app(gateway_settings)) as http:  # no worker on this stream
        assert http.post("/v1/search", json={"text": "a coat"}).status_code == 401
        wrong = http.post("/v1/search", json={"text": "a coat"}, headers={"X-API-Key": "nope"})
        assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "unauthorized"
        late = http.post("/v1/search", json={"text": "a coat", "timeout_ms": 300}, headers={"X-API-Key": KEY})
        assert late.status_code == 504 and late.json()["error"]["code"] == "timeout"
        assert http.get("/healthz").status_code == 200  # health needs no key
        paths = http.get("/openapi.json").json()["paths"]
        assert {"/v1/search", "/v1/search/image", "/healthz", "/readyz", "/metrics"} <= set(paths)
    open_settings = gateway_settings.with_overrides(gateway_api_key="")
    with TestClient(create_app(open_settings), base_url="http://127.0.0.1") as http:
        late = http.post("/v1/search", json={"text": "a coat", "timeout_ms": 200})
        assert late.status_code == 504
