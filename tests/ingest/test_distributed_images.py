"""``/v1/images`` on a distributed gateway: uploads stored under IMGSEARCH_UPLOAD_URI and
``s3://`` objects indexed by a job on real Celery workers (Redis, SeaweedFS, Milvus Lite
server); the answer says the image is searchable once that job is done."""

from __future__ import annotations

import base64
import signal
import subprocess
import sys

import httpx
import pytest

from tests.ingest.conftest import ROOT, png_bytes
from tests.servers import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


def test_an_upload_and_an_s3_object_are_indexed_by_jobs_and_can_be_deleted(dist, warm_model):
    dist.set(UPLOAD_URI=f"s3://{dist.bucket}/uploads/", QUERY_URI_BUCKETS=dist.bucket)
    dist.start_worker("embed", "embed")
    dist.start_worker("ocr,caption,finish,plan", "cpu")
    port = free_port()
    dist.set(GATEWAY_PORT=port)
    log = open(dist.tmp / "serve.log", "wb")
    serve = subprocess.Popen([sys.executable, "-m", "imgsearch", "serve"], env=dist.env, cwd=ROOT, stdout=log,
                             stderr=subprocess.STDOUT, start_new_session=True)

    def healthy():
        assert serve.poll() is None, (dist.tmp / "serve.log").read_text()
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        dist.wait_for(healthy, 120, "imgsearch serve")
        _exercise(dist, httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120))
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(30)
        log.close()


def _exercise(dist, http) -> None:
    """Upload, index an s3:// object, follow their jobs, inspect, refuse, delete."""
    up = http.post("/v1/images", json={"image_base64": base64.b64encode(png_bytes(1)).decode(), "name": "a.png"})
    assert up.status_code == 202 and up.json()["searchable"] is False, up.text
    assert up.json()["uri"].startswith(f"s3://{dist.bucket}/uploads/") and up.json()["job"]
    dist.put("photos/b [1].png", png_bytes(2))
    dist.put("photos/b [1].png2", png_bytes(3))  # same prefix: must not be indexed with it
    one = http.post("/v1/images", json={"uri": f"s3://{dist.bucket}/photos/b [1].png"})
    assert one.status_code == 202, one.text
    for added in (up.json(), one.json()):
        job = dist.wait_for(lambda a=added: (lambda j: j if j["finished"] else None)(
            http.get(f"/v1/jobs/{a['job']}").json()), 300, f"job {added['job']}", interval=0.5)
        assert (job["status"], job["listed"], job["indexed"], job["failed"]) == ("done", 1, 1, 0), job
        detail = http.get(f"/v1/images/{added['id']}")
        assert detail.status_code == 200 and detail.json()["image"]["uri"] == added["uri"]
    assert dist.store().count() == 2
    bad = http.post("/v1/images", json={"image_base64": base64.b64encode(b"no picture").decode()})
    assert bad.status_code == 422 and bad.json()["error"]["reason"] == "unsupported_type"
    assert http.delete(f"/v1/images/{one.json()['id']}").json()["deleted"] is True
    assert dist.store().count() == 1
