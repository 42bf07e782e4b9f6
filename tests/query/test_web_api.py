"""The web page's endpoints over a live query worker: page and assets, capabilities,
thumbnails (limits, caching, refusal of anything not indexed, missing and broken sources),
results graph, collection map caching, job view, and the op requests behind them."""

from __future__ import annotations

import io
import json
import shutil
import uuid

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient
from PIL import Image

from common.store import ImageStore
from query.gateway import create_app
from query.ops import decode_vectors, parse_op
from query.protocol import CHANNELS, REQUEST_KEYS, ProtocolError, now_ms, reply_key
from query.search import SearchService
from query.thumbnails import ThumbnailCache
from tests.conftest import CLASSES
from tests.query.web_stack import ingest_job, running_worker

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

LOCAL = "http://127.0.0.1"  # a keyless gateway answers only trusted hosts (DNS-rebinding guard)


@pytest.fixture(scope="module")
def web_collection(tmp_path_factory, model_cache, samples_dir, milvus_server):
    """30 samples (3 per class) plus one 600x400 picture, indexed into their own collection."""
    from common.settings import Settings
    from ingest.runner import run_ingest

    folder = tmp_path_factory.mktemp("web-images")
    for name in CLASSES:
        (folder / name).mkdir()
        for path in sorted((samples_dir / name).glob("*.png"))[:3]:
            shutil.copy(path, folder / name / path.name)
    big = Image.open(sorted((samples_dir / "bag").glob("*.png"))[0]).convert("RGB").resize((600, 400))
    big.save(folder / "bag" / "big.png")
    settings = Settings.from_env({}, clip_model="imgsearch-fmnist-lit-minilm",
                                 data_dir=tmp_path_factory.mktemp("web-data"), model_cache_dir=str(model_cache),
                                 milvus_uri=milvus_server.uri, collection=f"web{uuid.uuid4().hex[:6]}",
                                 batch_size=64)
    summary = run_ingest(str(folder), settings, progress=False)
    assert summary.failed == 0 and summary.indexed == 31, summary.render()
    return settings, folder


@pytest.fixture(scope="module")
def web_settings(web_collection, redis_server):
    settings, _folder = web_collection
    return settings.with_overrides(redis_url=redis_server.url, query_stream=f"web:{uuid.uuid4().hex[:8]}",
                                   query_timeout_ms=30_000)


@pytest.fixture(scope="module")
def worker(web_settings, tmp_path_factory):
    with running_worker(web_settings, tmp_path_factory.mktemp("web-worker-logs")) as w:
        yield w


@pytest.fixture
def http(web_settings, worker):
    with TestClient(create_app(web_settings), base_url=LOCAL) as client:
        yield client


def row_of(settings, name: str) -> dict:
    store = ImageStore(settings)
    rows = [r for r in store.sample(1000)[1] if r["uri"].endswith(name)]
    assert len(rows) == 1, name
    return rows[0]


def test_page_and_assets_are_served_locally_and_capabilities_follow_the_protocol(web_settings):
    with TestClient(create_app(web_settings), base_url=LOCAL) as http:  # no worker needed for static files
        page = http.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert '<script src="/static/app.js"' in page.text and "://" not in page.text
        for asset, kind in (("app.js", "javascript"), ("app.css", "text/css")):
            got = http.get(f"/static/{asset}")
            assert got.status_code == 200 and kind in got.headers["content-type"], asset
            assert "https://" not in got.text and "//cdn" not in got.text, f"{asset} loads something remote"
        assert http.get("/static/../gateway.py").status_code == 404
        caps = http.get("/v1/capabilities").json()
        assert caps["channels"] == list(CHANNELS) and caps["must"] == ("must" in REQUEST_KEYS)
        assert caps["filter_fields"]["width"][:2] == ["==", "!="] and "prefix" in caps["filter_fields"]["uri"]
        assert caps["api_key_required"] is False


def test_thumbnails_of_indexed_images_with_limits_caching_and_clear_errors(web_settings, web_collection, http):
    _settings, folder = web_collection
    big = row_of(web_settings, "/bag/big.png")
    got = http.get(f"/v1/thumbnails/{big['id']}", params={"size": 128})
    assert got.status_code == 200 and got.headers["content-type"] == "image/jpeg", got.text
    assert Image.open(io.BytesIO(got.content)).size == (128, 85)  # aspect kept, longer edge = size
    small = row_of(web_settings, "/sneaker/" + sorted((folder / "sneaker").glob("*.png"))[0].name)
    tiny = http.get(f"/v1/thumbnails/{small['id']}", params={"size": 256})
    assert Image.open(io.BytesIO(tiny.content)).size == (28, 28)  # never enlarged

    cache: ThumbnailCache = http.app.state.thumbnails
    hits = cache.hits
    again = http.get(f"/v1/thumbnails/{big['id']}", params={"size": 128})
    assert again.content == got.content and cache.hits == hits + 1
    assert again.headers["etag"] == got.headers["etag"]

    too_big = http.get(f"/v1/thumbnails/{big['id']}", params={"size": web_settings.thumb_max_size + 1})
    assert too_big.status_code == 400 and "IMGSEARCH_THUMB_MAX_SIZE" in too_big.json()["error"]["message"]
    assert http.get(f"/v1/thumbnails/{big['id']}", params={"size": 4}).status_code == 400
    unknown = http.get("/v1/thumbnails/4242")
    assert unknown.status_code == 404 and "no indexed image with id 4242" in unknown.json()["error"]["message"]
    # Nothing but an indexed id is accepted: paths and URIs are refused before any read.
    for bad in ("..%2F..%2Fetc%2Fpasswd", "file:%2F%2F%2Fetc%2Fpasswd", "-5", "9223372036854775808"):
        refused = http.get(f"/v1/thumbnails/{bad}")
        assert refused.status_code in (400, 404), (bad, refused.status_code)
        assert refused.headers["content-type"].startswith("application/json"), bad
    assert http.get("/v1/thumbnails/1", params={"uri": "file:///etc/passwd"}).status_code == 404

    # The byte limit of the gateway applies to the source object: 413, not a decode attempt.
    with TestClient(create_app(web_settings.with_overrides(max_image_bytes=2000)), base_url=LOCAL) as strict:
        over = strict.get(f"/v1/thumbnails/{big['id']}", params={"size": 64})
        assert over.status_code == 413 and "too_large" in over.json()["error"]["message"]


def test_thumbnails_of_vanished_and_broken_sources(web_settings, web_collection, http):
    _settings, folder = web_collection
    gone_path, broken_path = sorted((folder / "coat").glob("*.png"))[:2]
    gone, broken = row_of(web_settings, "/coat/" + gone_path.name), row_of(web_settings, "/coat/" + broken_path.name)
    gone_path.unlink()
    broken_path.write_bytes(b"<html>an error page saved as png</html>")
    missing = http.get(f"/v1/thumbnails/{gone['id']}")
    assert missing.status_code == 404 and "no longer exists" in missing.json()["error"]["message"]
    bad = http.get(f"/v1/thumbnails/{broken['id']}")
    assert bad.status_code == 422 and "unsupported_type" in bad.json()["error"]["message"], bad.text


def test_thumbnail_cache_is_bounded_by_bytes_least_recently_used_first():
    cache = ThumbnailCache(max_bytes=10)
    cache.put(("a",), b"1234")
    cache.put(("b",), b"1234")
    assert cache.get(("a",)) == b"1234"  # a is now the most recent
    cache.put(("c",), b"1234")
    assert cache.get(("b",)) is None and cache.get(("a",)) and cache.get(("c",))
    assert cache.bytes == 8 and len(cache) == 2
    cache.put(("huge",), b"x" * 11)
    assert cache.get(("huge",)) is None and cache.bytes == 8


def test_results_graph_groups_and_weights_edges_by_stored_vector_similarity(web_settings, http):
    hits = http.post("/v1/search", json={"text": "a photo of a sneaker", "k": 20}).json()["hits"]
    ids = [h["id"] for h in hits]
    got = http.post("/v1/graph", json={"ids": ids, "groups": 4})
    assert got.status_code == 200, got.text
    graph = got.json()
    assert [n["id"] for n in graph["nodes"]] == [str(i) for i in ids]  # strings: 63-bit ids
    assert graph["groups"] == 4 and {n["group"] for n in graph["nodes"]} == {0, 1, 2, 3}
    assert all(0 <= n["x"] <= 1 and 0 <= n["y"] <= 1 for n in graph["nodes"])
    vectors = {int(r["id"]): np.asarray(r["clip"], dtype=np.float32)
               for r in ImageStore(web_settings).rows(ids, with_vector=True)}
    for edge in graph["edges"]:
        a, b = vectors[int(edge["source"])], vectors[int(edge["target"])]
        cosine = float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
        assert edge["weight"] == pytest.approx(cosine, abs=1e-3)
    assert len(graph["edges"]) >= len(ids) * 3 // 2  # each node links to its 3 nearest (undirected)

    assert http.post("/v1/graph", json={"ids": [4242]}).status_code == 404
    assert http.post("/v1/graph", json={"ids": list(range(1, 102))}).status_code == 400
    assert http.post("/v1/graph", json={"ids": ids, "expr": "id > 0"}).status_code == 400


def test_collection_map_is_cached_until_the_collection_changes(web_settings, web_collection, http, samples_dir):
    from ingest.runner import run_ingest

    first = http.get("/v1/map")
    assert first.status_code == 200, first.text
    m = first.json()
    count = ImageStore(web_settings).count()
    assert (m["cached"], m["count"], m["sampled"], m["method"]) == (False, count, count, "t-SNE")
    assert len({p["id"] for p in m["points"]}) == count
    assert all(0 <= p["x"] <= 1 and 0 <= p["y"] <= 1 for p in m["points"])
    assert {p["folder"] for p in m["points"]} == set(CLASSES)
    second = http.get("/v1/map").json()
    assert second["cached"] is True and second["points"] == m["points"]
    assert http.app.state.maps.computed == 1

    _settings, folder = web_collection
    extra = folder / "more"
    extra.mkdir()
    for path in sorted((samples_dir / "dress").glob("*.png"))[3:8]:
        shutil.copy(path, extra / path.name)
    assert run_ingest(str(extra), web_collection[0], progress=False).indexed == 5
    third = http.get("/v1/map").json()
    assert (third["cached"], third["count"]) == (False, count + 5)
    assert http.app.state.maps.computed == 2

    with TestClient(create_app(web_settings.with_overrides(map_sample=10)), base_url=LOCAL) as capped:
        small = capped.get("/v1/map").json()
        assert small["count"] == count + 5 and 1 <= small["sampled"] == len(small["points"]) <= 10


def test_thumbnails_of_images_indexed_from_s3(web_settings, web_collection, http, s3_server, samples_dir):
    """Objects indexed from a bucket are fetched with the S3 settings; a deleted object is a 404."""
    from ingest.runner import run_ingest

    client = s3_server.client()
    bucket = f"web{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket)
    for path in sorted((samples_dir / "sandal").glob("*.png"))[5:7]:
        client.put_object(Bucket=bucket, Key=f"shop/sandal/{path.name}", Body=path.read_bytes())
    s3 = {"s3_endpoint_url": s3_server.endpoint_url, "s3_region": s3_server.region,
          "s3_access_key": s3_server.access_key, "s3_secret_key": s3_server.secret_key}
    assert run_ingest(f"s3://{bucket}/shop/", web_collection[0].with_overrides(**s3), progress=False).indexed == 2
    kept, gone = sorted((r for r in ImageStore(web_settings).sample(1000)[1] if r["uri"].startswith(f"s3://{bucket}/")),
                        key=lambda r: r["uri"])
    client.delete_object(Bucket=bucket, Key=gone["uri"].split(f"s3://{bucket}/", 1)[1])
    with TestClient(create_app(web_settings.with_overrides(**s3)), base_url=LOCAL) as s3_http:
        got = s3_http.get(f"/v1/thumbnails/{kept['id']}", params={"size": 64})
        assert got.status_code == 200, got.text
        assert Image.open(io.BytesIO(got.content)).size == (28, 28)
        missing = s3_http.get(f"/v1/thumbnails/{gone['id']}", params={"size": 64})
        assert missing.status_code == 404 and "no longer exists" in missing.json()["error"]["message"], missing.text
    wrong = web_settings.with_overrides(**{**s3, "s3_secret_key": "wrong-secret"})
    with TestClient(create_app(wrong), base_url=LOCAL) as bad_http:
        refused = bad_http.get(f"/v1/thumbnails/{kept['id']}", params={"size": 64})
        assert refused.status_code == 502 and "cannot fetch" in refused.json()["error"]["message"], refused.text


def test_job_view_shows_progress_rate_and_dead_letters(web_settings, redis_server, http):
    job_id = ingest_job(redis_server.url, "s3://photos/2024/", listed=10, indexed=6,
                        failed_uris=["s3://photos/2024/broken.jpg"])
    jobs = http.get("/v1/jobs").json()["jobs"]
    job = next(j for j in jobs if j["id"] == job_id)
    assert (job["status"], job["listed"], job["processed"], job["failed"]) == ("running", 10, 7, 1)
    assert job["rate_per_s"] > 0 and job["eta_s"] is not None
    dead = http.get(f"/v1/jobs/{job_id}/dead-letters").json()["dead_letters"]
    assert [(d["uri"], d["reason"], d["attempts"]) for d in dead] == [("s3://photos/2024/broken.jpg",
                                                                      "undecodable", 1)]
    assert http.get("/v1/jobs/nosuchjob/dead-letters").status_code == 404
    assert http.get("/v1/jobs/..%2Fx/dead-letters").status_code in (400, 404)


def test_stats_and_malformed_op_requests_get_error_replies_from_the_worker(web_settings, http, worker):
    stats = http.get("/v1/stats").json()
    assert stats["count"] == ImageStore(web_settings).count() and stats["collection"] == web_settings.collection
    assert stats["physical"] == ImageStore(web_settings).physical_name()
    r = redis.Redis.from_url(web_settings.redis_url)
    for raw, fragment in (("{not json", "not valid JSON"),
                          (json.dumps({"v": 1, "id": "op1", "deadline": now_ms() + 9000, "op": "drop"}), "unknown op"),
                          (json.dumps({"v": 1, "id": "op1", "deadline": now_ms() + 9000, "op": "rows",
                                       "ids": ["1 or 1"]}), "ids must be"),
                          (json.dumps({"v": 1, "id": "op1", "deadline": now_ms() + 9000, "op": "sample",
                                       "n": 10**6}), "n must be")):
        request_id = uuid.uuid4().hex
        raw = raw.replace('"op1"', f'"{request_id}"')
        r.xadd(web_settings.query_stream, {"id": request_id, "op": raw})
        _key, reply = r.blpop([reply_key(web_settings.query_stream, request_id)], timeout=30)
        doc = json.loads(reply)
        assert doc["ok"] is False and doc["error"]["code"] == "bad_request" and fragment in doc["error"]["message"]
    assert worker.proc.poll() is None
    # A good rows op returns exact float32 vectors.
    ids = [h["id"] for h in http.post("/v1/search", json={"text": "a bag", "k": 3}).json()["hits"]]
    service = SearchService(web_settings)
    expected = np.stack([np.asarray(service.lookup(i)["clip"], dtype=np.float32) for i in ids])
    import asyncio

    from query.client import AsyncSearchClient

    async def fetch():
        client = AsyncSearchClient(settings=web_settings)
        try:
            return await client.op("rows", ids=ids, vectors=True)
        finally:
            await client.close()

    rows = asyncio.run(fetch())["rows"]
    order = {int(row["id"]): k for k, row in enumerate(rows)}
    got = decode_vectors(rows)
    np.testing.assert_array_equal(np.stack([got[order[i]] for i in ids]), expected)


@pytest.mark.parametrize("doc, fragment", [
    ({"op": "rows", "ids": []}, "ids must be"),
    ({"op": "rows", "ids": [True]}, "ids must be"),
    ({"op": "sample", "n": 0}, "n must be"),
    ({"op": "stats", "sql": "x"}, "unknown op request fields: sql"),
    ({"op": "stats", "v": 2}, "unsupported schema version"),
    ({"op": "stats", "vectors": "yes"}, "vectors must be"),
])
def test_op_parsing_is_strict(doc, fragment):
    full = {"v": 1, "id": "a1", "deadline": now_ms() + 1000, **doc}
    with pytest.raises(ProtocolError, match=fragment):
        parse_op(json.dumps(full))


@pytest.mark.parametrize("env, fragment", [
    ({"IMGSEARCH_THUMB_MAX_SIZE": "8"}, "IMGSEARCH_THUMB_MAX_SIZE must be from 16"),
    ({"IMGSEARCH_THUMB_CACHE_MB": "-1"}, "IMGSEARCH_THUMB_CACHE_MB must be >= 0"),
    ({"IMGSEARCH_MAP_SAMPLE": "20000"}, "IMGSEARCH_MAP_SAMPLE must be from 10 to 16384"),
])
def test_web_settings_are_validated(env, fragment):
    from common.errors import ConfigError
    from common.settings import Settings

    with pytest.raises(ConfigError, match=fragment):
        Settings.from_env(env)
