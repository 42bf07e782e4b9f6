"""``imgsearch serve`` with no Redis, and the commands that share its data dir meanwhile.

Real subprocesses on a Milvus Lite file (one process per data dir): the server holds the
dir; ``search`` and ``ingest`` go through it, ``duplicates`` stops with one line naming the
holder; after the server stops the data dir is whole and searchable directly.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from common.settings import Settings
from imgsearch.demo import SAMPLES_DIR
from tests.query.conftest import ROOT, settings_env
from tests.servers import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]
CLASSES = ("bag", "sneaker")


def cli(settings: Settings, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "imgsearch", *args], cwd=ROOT, env=settings_env(settings),
                          capture_output=True, text=True, timeout=timeout)


def wait_ready(proc: subprocess.Popen, base: str, log) -> None:
    import time

    until = time.monotonic() + 300
    while True:
        assert proc.poll() is None, log.read_text()
        try:
            if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < until, "embedded serve not ready:\n" + log.read_text()
        time.sleep(0.2)


@pytest.fixture(scope="module")
def served(tmp_path_factory, model_cache):
    """Two sample classes indexed by ``imgsearch ingest`` into a Lite data dir, then ``imgsearch
    serve`` on it (no Redis); yields (base URL, settings, server process)."""
    root = tmp_path_factory.mktemp("embedded-serve")
    photos = root / "photos"
    for name in CLASSES:
        shutil.copytree(SAMPLES_DIR / name, photos / name)
    settings = Settings.from_env({}, clip_model="imgsearch-fmnist-lit-minilm",
                                 data_dir=root / "data", model_cache_dir=str(model_cache),
                                 gateway_port=free_port(), query_max_wait_ms=50, max_image_bytes=20_000)
    first = cli(settings, "ingest", str(photos), "--no-progress")
    assert first.returncode == 0, first.stderr
    log = root / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "imgsearch", "serve"], cwd=ROOT, env=settings_env(settings),
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{settings.gateway_port}"
    try:
        wait_ready(proc, base, log)
        yield base, settings, proc, root
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)


def test_the_page_and_the_api_answer_without_redis(served):
    base, _settings, _proc, _root = served
    page = httpx.get(base + "/")
    assert page.status_code == 200 and "<html" in page.text.lower()
    reply = httpx.post(base + "/v1/search", json={"text": "a bag", "k": 5}, timeout=60).json()
    assert len(reply["hits"]) == 5 and reply["worker"].startswith("embedded-")
    assert sum("/bag/" in h["uri"] for h in reply["hits"]) >= 4
    stats = httpx.get(base + "/v1/stats", timeout=60).json()
    assert stats["count"] == 40
    top = reply["hits"][0]["id"]
    thumb = httpx.get(f"{base}/v1/thumbnails/{top}?size=64", timeout=60)
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"


def test_search_on_the_held_data_dir_goes_through_the_server(served):
    base, settings, _proc, _root = served
    proc = cli(settings, "search", "--text", "a sneaker", "-k", "5", "--json")
    assert proc.returncode == 0, proc.stderr
    hits = json.loads(proc.stdout)
    direct = httpx.post(base + "/v1/search", json={"text": "a sneaker", "k": 5}, timeout=60).json()["hits"]
    assert [h["id"] for h in hits] == [h["id"] for h in direct]
    image = cli(settings, "search", "--image", str(sorted((SAMPLES_DIR / "bag").glob("*.png"))[0]), "-k", "3")
    assert image.returncode == 0 and "/bag/" in image.stdout.splitlines()[0], image.stderr


def test_a_command_that_cannot_go_through_names_the_holder_in_one_line(served):
    _base, settings, server, _root = served
    proc = cli(settings, "duplicates")
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert f"pid {server.pid}" in lines[0] and "imgsearch serve" in lines[0]


def test_ingest_on_the_held_data_dir_runs_as_a_job_of_the_server(served):
    base, settings, _proc, root = served
    new = root / "new"
    new.mkdir()
    for n, path in enumerate(sorted((SAMPLES_DIR / "coat").glob("*.png"))[:2]):
        shutil.copy(path, new / f"coat{n}.png")
    (new / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    proc = cli(settings, "ingest", str(new), "--json")
    assert proc.returncode == 3, proc.stderr  # one image failed: the embedded ingest's exit code
    summary = json.loads(proc.stdout)
    assert (summary["indexed"], summary["failed"]) == (2, 1)
    assert summary["failures"][0]["reason"] == "unsupported_type"  # the same typed reason as any ingest
    assert httpx.get(base + "/v1/stats", timeout=60).json()["count"] == 42
    hits = httpx.post(base + "/v1/search", json={"text": "a coat", "k": 2}, timeout=60).json()["hits"]
    assert {h["uri"] for h in hits} == {p.as_uri() for p in new.glob("coat*.png")}
    jobs = httpx.get(base + "/v1/jobs", timeout=60).json()["jobs"]
    assert jobs[0]["source"] == new.as_uri() and jobs[0]["status"] == "done"
    dead = httpx.get(f"{base}/v1/jobs/{jobs[0]['id']}/dead-letters", timeout=60).json()["dead_letters"]
    assert [d["uri"] for d in dead] == [(new / "broken.png").as_uri()]


def test_a_job_source_outside_the_allow_list_is_refused(served):
    base, _settings, _proc, _root = served
    reply = httpx.post(base + "/v1/jobs", json={"source": "s3://not-allowed/x/"}, timeout=60)
    assert reply.status_code == 400 and reply.json()["error"]["code"] == "bad_request"
    assert "IMGSEARCH_QUERY_URI_BUCKETS" in reply.json()["error"]["message"]


def test_a_folder_is_indexed_only_for_the_holder_of_the_data_dir(served):
    """A caller on this machine without the holder record's token (another user, a page in a
    browser) cannot make the server read a folder; the record is the owner's only."""
    import stat

    base, settings, _proc, root = served
    folder = root / "private"
    folder.mkdir()
    shutil.copy(sorted((SAMPLES_DIR / "coat").glob("*.png"))[0], folder / "secret.png")
    for headers in ({}, {"X-Imgsearch-Local-Token": "guessed"}):
        reply = httpx.post(base + "/v1/jobs", json={"source": str(folder)}, headers=headers, timeout=60)
        assert reply.status_code == 400 and reply.json()["error"]["code"] == "bad_request", reply.text
        assert "local token" in reply.json()["error"]["message"]
    record = Path(settings.data_dir) / "holder.json"
    assert stat.S_IMODE(record.stat().st_mode) == 0o600
    jobs = httpx.get(base + "/v1/jobs", timeout=60).json()["jobs"]
    assert folder.as_uri() not in {j["source"] for j in jobs} and str(folder) not in {j["source"] for j in jobs}


def noise_png(side: int) -> bytes:
    import io

    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(side).integers(0, 255, (side, side, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG")
    return out.getvalue()


def test_an_uploaded_image_is_searchable_when_the_answer_comes_and_can_be_inspected_and_deleted(served):
    from query.gateway_client import GatewayClient

    base, settings, _proc, root = served
    client = GatewayClient(base)
    before = httpx.get(base + "/v1/stats", timeout=60).json()["count"]
    original = sorted((SAMPLES_DIR / "bag").glob("*.png"))[3]
    added = client.index_image(original.read_bytes(), name="my bag.png")
    assert added["searchable"] is True and added["status"] == "indexed"
    assert added["uri"].startswith((settings.data_dir / "uploads").resolve().as_uri()) and added["uri"].endswith(
        "/my_bag.png")
    assert httpx.get(base + "/v1/stats", timeout=60).json()["count"] == before + 1
    hits = client.search(image=original.read_bytes(), k=2, channels=["phash"])["hits"]
    assert added["id"] in {str(h["id"]) for h in hits}  # searchable as soon as the answer came

    detail = client.image(added["id"])
    assert detail["image"]["uri"] == added["uri"] and detail["image"]["mime"] == "image/png"
    assert (detail["image"]["width"], detail["image"]["height"]) == (28, 28)
    assert any(t["text"] == "bag" for t in detail["tags"])  # the caption stage ran (CLIP tags)
    indexed_copy = (root / "photos" / "bag" / original.name).as_uri()
    assert indexed_copy in {n["uri"] for n in detail["near_duplicates"]}  # the same picture, distance 0
    assert all(n["distance"] <= settings.duplicate_threshold for n in detail["near_duplicates"])

    again = client.index_image(original.read_bytes(), name="my bag.png")  # same bytes: same object, same id
    assert again["id"] == added["id"] and again["status"] == "unchanged"

    assert client.delete_image(added["id"])["deleted"] is True
    assert httpx.get(base + "/v1/stats", timeout=60).json()["count"] == before
    gone = httpx.get(f"{base}/v1/images/{added['id']}", timeout=60)
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "not_found"
    assert httpx.delete(f"{base}/v1/images/{added['id']}", timeout=60).status_code == 404
    assert not list((settings.data_dir / "uploads").rglob("*.png"))  # the stored bytes went with it


def test_bad_uploads_get_ingest_reasons_and_nothing_is_stored(served):
    from query.gateway_client import GatewayClient, GatewayError

    base, settings, _proc, _root = served
    client = GatewayClient(base)
    cases = [(b"just some text, not a picture", 422, "unprocessable", "unsupported_type"),
             (noise_png(50)[:3000], 422, "unprocessable", "truncated"),
             (noise_png(120), 413, "too_large", "too_large"),  # over IMGSEARCH_MAX_IMAGE_BYTES (20 000)
             (b"", 422, "unprocessable", "empty")]
    for data, status, code, reason in cases:
        with pytest.raises(GatewayError) as caught:
            client.index_image(data)
        assert (caught.value.status, caught.value.code, caught.value.reason) == (status, code, reason), data[:20]
    with pytest.raises(GatewayError) as caught:
        client.index_uri("s3://not-allowed/cat.jpg")
    assert caught.value.code == "bad_request" and "IMGSEARCH_QUERY_URI_BUCKETS" in caught.value.message
    form = httpx.post(base + "/v1/images", files={"file": ("x.txt", b"hello")}, data={"colour": "red"}, timeout=60)
    assert form.status_code == 400 and "unknown form fields" in form.json()["error"]["message"]
    letters = [json.loads(line) for line in (settings.data_dir / "dead-letters" / "images.jsonl").open()]
    uploads_refused = [d["reason"] for d in letters if d["source"] == "upload"]
    assert uploads_refused[-4:] == [reason for *_, reason in cases]  # dead letters, as an ingest's
    uploads = settings.data_dir / "uploads"
    assert not uploads.exists() or not any(p.is_file() for p in uploads.rglob("*"))


def test_a_multipart_upload_indexes_too(served):
    base, _settings, _proc, _root = served
    png = sorted((SAMPLES_DIR / "sneaker").glob("*.png"))[5].read_bytes()
    reply = httpx.post(base + "/v1/images", files={"file": ("shoe.png", png, "image/png")}, timeout=120)
    assert reply.status_code == 201 and reply.json()["searchable"] is True, reply.text
    assert httpx.delete(f"{base}/v1/images/{reply.json()['id']}", timeout=60).json()["deleted"] is True


def test_zz_after_the_server_stops_the_data_dir_is_whole(served):
    """Last in the module: stops the server, then opens the Lite file directly."""
    _base, settings, server, _root = served
    server.send_signal(signal.SIGTERM)
    server.wait(60)
    proc = cli(settings, "search", "--text", "a coat", "-k", "3", "--json")
    assert proc.returncode == 0, proc.stderr
    assert all("/new/coat" in h["uri"] for h in json.loads(proc.stdout)[:2])
    dups = cli(settings, "duplicates", "--json")
    assert dups.returncode == 0, dups.stderr
