"""Distributed ingest end to end: real Redis, SeaweedFS S3, milvus-lite server, Celery workers.

The operator's commands are run as subprocesses (``python -m imgsearch ...``) against real
``imgsearch worker`` processes; results are checked in Milvus and in the job's counters.
"""

from __future__ import annotations

import io
import json
from collections import Counter

import pytest
from PIL import Image

from common.ids import image_id
from common.store import ImageStore
from tests.ingest.conftest import png_bytes

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def all_uris(store: ImageStore) -> list[str]:
    rows = store.client.query(store.alias, filter="id >= 0", output_fields=["uri"], limit=16384)
    return [r["uri"] for r in rows]


def test_300_images_become_searchable_and_a_second_ingest_does_no_model_work(dist, warm_model):
    uris = [dist.put(f"shop/{i // 100}/img{i:03d}.png", png_bytes(i)) for i in range(300)]
    dist.put("elsewhere/not-this.png", png_bytes(999))
    dist.start_worker("embed", "embed")
    dist.start_worker("ocr,caption,finish,plan", "cpu")

    run = dist.cli("ingest", f"s3://{dist.bucket}/shop/", "--wait", "--json")
    assert run.returncode == 0, run.stderr + dist.logs()
    job = json.loads(run.stdout)
    assert job["status"] == "done"
    assert (job["listed"], job["indexed"], job["unchanged"], job["failed"]) == (300, 300, 0, 0)
    assert job["batches_total"] == job["batches_done"] == 10  # 300 / (16 * 2) rounded up
    assert job["dead_letters"] == []

    store = dist.store()
    assert store.count() == 300
    got = all_uris(store)
    assert sorted(got) == sorted(uris)
    # searchable: each probed image's own vector finds it first
    for i in (0, 151, 299):
        row = store.get(image_id(uris[i]), with_vector=True)
        assert row["model"] == f"{warm_model.spec.name}@{warm_model.spec.digest}"
        hits = store.search([row["clip"]], k=3)[0]
        assert hits[0].uri == uris[i]
    # and a query encoded in this process (same model) agrees with what the worker stored
    vec = warm_model.encode_images([Image.open(io.BytesIO(png_bytes(42))).convert("RGB")])[0]
    assert store.search([vec.tolist()], k=1)[0][0].uri == uris[42]

    again = dist.cli("ingest", f"s3://{dist.bucket}/shop/", "--wait", "--json")
    assert again.returncode == 0, again.stderr + dist.logs()
    second = json.loads(again.stdout)
    assert (second["listed"], second["indexed"], second["unchanged"], second["failed"]) == (300, 0, 300, 0)
    assert second["batches_total"] == 0
    assert second["encoded"] == 0  # no image went through the model
    assert dist.store().count() == 300

    listing = dist.cli("jobs", "list", "--json")
    assert listing.returncode == 0, listing.stderr
    assert Counter(j["status"] for j in json.loads(listing.stdout)) == {"done": 2}
    status = dist.cli("jobs", "status", job["id"])
    assert status.returncode == 0 and "300 indexed" in status.stdout
