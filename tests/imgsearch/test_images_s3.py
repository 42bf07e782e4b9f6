"""``/v1/images`` with S3: uploads stored under IMGSEARCH_UPLOAD_URI, ``s3://`` objects of an
allowed bucket indexed one at a time, behind the API key. A real S3 server (SeaweedFS), a
real Milvus Lite server, the gateway app with the embedded indexer (as ``imgsearch serve``
composes it) in this process."""

from __future__ import annotations

import base64

import pytest
from fastapi.testclient import TestClient

from imgsearch.demo import SAMPLES_DIR
from imgsearch.indexer import EmbeddedJobs
from query.gateway import create_app

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]
KEY = "images-key-1"


@pytest.fixture
def http(s3_settings, s3_server, milvus_server, tmp_path):
    settings = s3_settings(milvus_uri=milvus_server.uri, collection=f"img{tmp_path.name[-6:].replace('-', '')}x",
                           upload_uri="s3://uploads/in/", query_uri_buckets="uploads,photos", gateway_api_key=KEY)
    client = s3_server.client()
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}  # the S3 server is per session
    for bucket in {"uploads", "photos"} - existing:
        client.create_bucket(Bucket=bucket)
    indexer = EmbeddedJobs(settings)
    app = create_app(settings, indexer)
    with TestClient(app, base_url="http://127.0.0.1", headers={"X-API-Key": KEY}) as http:
        yield http, settings, client
    indexer.close()


def png(name: str = "bag", n: int = 0) -> bytes:
    return sorted((SAMPLES_DIR / name).glob("*.png"))[n].read_bytes()


def test_uploads_go_to_the_upload_bucket_and_s3_objects_index_one_at_a_time(http):
    http, settings, s3 = http
    up = http.post("/v1/images", json={"image_base64": base64.b64encode(png()).decode(), "name": "b.png"})
    assert up.status_code == 201 and up.json()["searchable"], up.text
    uri = up.json()["uri"]
    assert uri.startswith("s3://uploads/in/") and uri.endswith("/b.png")
    key = uri[len("s3://uploads/"):]
    assert s3.get_object(Bucket="uploads", Key=key)["Body"].read() == png()

    s3.put_object(Bucket="photos", Key="2024/shoe one.png", Body=png("sneaker", 2))
    one = http.post("/v1/images", json={"uri": "s3://photos/2024/shoe one.png"})
    assert one.status_code == 201 and one.json()["status"] == "indexed", one.text
    assert http.get("/v1/stats").json()["count"] == 2
    detail = http.get(f"/v1/images/{one.json()['id']}").json()
    assert detail["image"]["uri"] == one.json()["uri"] and detail["image"]["width"] == 28

    missing = http.post("/v1/images", json={"uri": "s3://photos/2024/none.png"})
    assert missing.status_code == 404 and missing.json()["error"]["reason"] == "not_found"
    outside = http.post("/v1/images", json={"uri": "s3://elsewhere/x.png"})
    assert outside.status_code == 400 and "IMGSEARCH_QUERY_URI_BUCKETS" in outside.json()["error"]["message"]
    assert http.delete(f"/v1/images/{one.json()['id']}").json()["deleted"] is True
    assert http.get("/v1/stats").json()["count"] == 1


def test_the_indexing_endpoints_need_the_key(http):
    http, _settings, _s3 = http
    for method, path, body in (("post", "/v1/images", {"uri": "s3://photos/x.png"}), ("get", "/v1/images/5", None),
                               ("delete", "/v1/images/5", None), ("post", "/v1/jobs", {"source": "s3://photos/"}),
                               ("get", "/v1/jobs/abc", None)):
        kwargs = {"json": body} if body is not None else {}
        reply = getattr(http, method)(path, headers={"X-API-Key": "wrong"}, **kwargs)
        assert reply.status_code == 401 and reply.json()["error"]["code"] == "unauthorized", (method, path)


def test_with_an_index_key_the_api_key_only_searches(s3_settings, milvus_server, tmp_path):
    settings = s3_settings(milvus_uri=milvus_server.uri, collection=f"ik{tmp_path.name[-6:].replace('-', '')}x",
                           gateway_api_key=KEY, gateway_index_key="write-key-2")
    indexer = EmbeddedJobs(settings)
    with TestClient(create_app(settings, indexer), base_url="http://127.0.0.1") as http:
        body = {"image_base64": base64.b64encode(png()).decode()}
        refused = http.post("/v1/images", json=body, headers={"X-API-Key": KEY})
        assert refused.status_code == 401 and "IMGSEARCH_GATEWAY_INDEX_KEY" in refused.json()["error"]["message"]
        assert http.get("/v1/capabilities").json()["index_key_required"] is True
        added = http.post("/v1/images", json=body, headers={"X-API-Key": "write-key-2"})
        assert added.status_code == 201, added.text
        for key in (KEY, "write-key-2"):  # both search
            hits = http.post("/v1/search", json={"like": int(added.json()["id"]), "k": 1, "channels": ["clip"]},
                             headers={"X-API-Key": key})
            assert hits.status_code == 200, hits.text
            assert http.get(f"/v1/images/{added.json()['id']}", headers={"X-API-Key": key}).status_code == 200
        assert http.delete(f"/v1/images/{added.json()['id']}", headers={"X-API-Key": KEY}).status_code == 401
        assert http.delete(f"/v1/images/{added.json()['id']}", headers={"X-API-Key": "write-key-2"}).status_code == 200
        assert http.post("/v1/jobs", json={"source": "s3://x/"}, headers={"X-API-Key": "nope"}).status_code == 401
    indexer.close()
