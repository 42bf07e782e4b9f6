"""Query images under attack: no caller-named local reads anywhere, s3:// URIs only from
allowed buckets (and an unreadable one reads the same whatever the cause), bounded reads,
and a bounded cost per accepted image, measured as the worker's peak RSS.

Real query-worker subprocesses, Redis, a Milvus Lite server and SeaweedFS (S3 with auth).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time

import pytest
import redis
from fastapi.testclient import TestClient
from PIL import Image

from query.client import BadRequest, SearchClient
from query.gateway import create_app
from query.search import SearchService
from tests.query.conftest import ROOT, settings_env
from tests.query.hostile import huge_png, png, reset_peak_rss, status_kb

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

ALLOWED, FORBIDDEN = "qallowed", "qforbidden"


@pytest.fixture
def uri_settings(queue_settings, s3_server):
    client = s3_server.client()
    for bucket in (ALLOWED, FORBIDDEN):
        try:
            client.create_bucket(Bucket=bucket)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass
    return queue_settings.with_overrides(
        s3_endpoint_url=s3_server.endpoint_url, s3_region=s3_server.region, s3_access_key=s3_server.access_key,
        s3_secret_key=s3_server.secret_key, query_uri_buckets=ALLOWED, query_max_image_bytes=200_000)


def test_image_uris_come_only_from_allowed_buckets(uri_settings, s3_server, start_worker, samples_dir):
    start_worker(uri_settings)
    s3 = s3_server.client()
    query = sorted((samples_dir / "bag").glob("*.png"))[2].read_bytes()
    for bucket in (ALLOWED, FORBIDDEN):
        s3.put_object(Bucket=bucket, Key="q/bag.png", Body=query)
    s3.put_object(Bucket=ALLOWED, Key="q/big.bin", Body=b"\x89PNG" + b"0" * 300_000)
    client = SearchClient(settings=uri_settings)

    by_uri = client.search(image=f"s3://{ALLOWED}/q/bag.png", k=5)
    assert [h.id for h in by_uri.hits] == [h.id for h in client.search(image=query, k=5).hits]
    clip_only = client.search(image_uri=f"s3://{ALLOWED}/q/bag.png", k=5, channels=["clip"])
    assert [h.id for h in clip_only.hits] == [h.id for h in SearchService(uri_settings).search_image(query, 5)]

    # A bucket off the list, a missing key, a missing bucket: one error, one message.
    messages = []
    for uri in (f"s3://{FORBIDDEN}/q/bag.png", f"s3://{ALLOWED}/q/missing.png", "s3://no-such-bucket-x/q/bag.png"):
        for channels in (None, ["clip"]):
            with pytest.raises(BadRequest) as info:
                client.search(image=uri, k=5, channels=channels)
            assert info.value.code == "not_found"
            messages.append(str(info.value).replace(uri, "<uri>"))
    assert len(set(messages)) == 1, messages

    with pytest.raises(BadRequest) as info:  # read in bounded chunks: the limit, not the object, decides
        client.search(image=f"s3://{ALLOWED}/q/big.bin", k=5)
    assert info.value.code == "too_large"

    cli = subprocess.run([sys.executable, "-m", "imgsearch", "search", "--image", f"s3://{ALLOWED}/q/bag.png",
                          "-k", "5", "--json"], cwd=ROOT, env=settings_env(uri_settings), capture_output=True,
                         text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    assert [h["id"] for h in json.loads(cli.stdout)] == [h.id for h in by_uri.hits]
    client.close()


def test_no_caller_named_local_file_is_ever_read(uri_settings, start_worker):
    start_worker(uri_settings)
    r = redis.Redis.from_url(uri_settings.redis_url)
    client = SearchClient(settings=uri_settings)
    for name in ("/etc/passwd", "/proc/self/environ", "/dev/zero", "file:///etc/passwd", "~/.aws/credentials"):
        with pytest.raises(BadRequest, match="never reads files"):
            client.search(image=name, k=3)
    assert r.xlen(uri_settings.query_stream) == 0  # refused before anything was queued
    app = create_app(uri_settings.with_overrides(gateway_api_key="k"))
    with TestClient(app, headers={"X-API-Key": "k"}) as http:
        for uri in ("/proc/self/environ", "file:///etc/passwd", "/dev/zero", "s3:///etc/passwd"):
            resp = http.post("/v1/search", json={"image_uri": uri, "k": 3})
            assert resp.status_code == 400 and "s3://" in resp.json()["error"]["message"], resp.text
        like = http.post("/v1/search", json={"like": "file:///etc/passwd", "k": 3})  # a lookup in the index only
        assert like.status_code == 404 and like.json()["error"]["code"] == "not_found"
    client.close()


def test_a_query_image_costs_a_bounded_amount_of_worker_memory(queue_settings, start_worker):
    """A PNG declaring 10000x10000 pixels (a few KB) is refused from its header; the largest
    accepted images (just under IMGSEARCH_QUERY_MAX_IMAGE_PIXELS) are scaled down once, so
    the whole default hybrid path (CLIP, 23 phash variants, OCR) stays within a few hundred MB."""
    worker = start_worker(queue_settings)
    client = SearchClient(settings=queue_settings)
    client.search(text="warm up", k=3)
    gradient = Image.linear_gradient("L").resize((6000, 6000))  # 36 MP, compresses to well under 10 MB
    rgba = Image.merge("RGBA", [gradient, gradient.transpose(Image.Transpose.ROTATE_90), gradient, gradient])
    jpeg = io.BytesIO()
    Image.merge("RGB", [gradient] * 3).save(jpeg, "JPEG", quality=70)
    accepted = {"png_rgba_36mp": png(rgba), "jpeg_36mp": jpeg.getvalue()}
    del gradient, rgba
    pid = worker.proc.pid
    time.sleep(0.5)
    reset_peak_rss(pid)
    idle_kb = status_kb(pid, "VmRSS")

    with pytest.raises(BadRequest) as info:
        client.search(image=huge_png(), k=5)
    assert info.value.code == "too_large" and "pixels" in str(info.value)
    bomb_peak_mb = (status_kb(pid, "VmHWM") - idle_kb) / 1024
    assert bomb_peak_mb < 50, f"a refused 100 MP header cost the worker {bomb_peak_mb:.0f} MB"

    for name, data in accepted.items():
        assert len(data) < queue_settings.query_max_image_bytes, (name, len(data))
        hits = client.search(image=data, k=5).hits  # default channels: clip, phash, bm25, dense (+ OCR)
        assert hits, name
        peak_mb = (status_kb(pid, "VmHWM") - idle_kb) / 1024
        print(f"{name}: worker peak {peak_mb:.0f} MB above idle")
        assert peak_mb < 400, f"{name} cost the worker {peak_mb:.0f} MB above idle"
    client.close()
