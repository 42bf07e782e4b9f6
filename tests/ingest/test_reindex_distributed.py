"""Distributed re-index, end to end: real Redis, SeaweedFS S3, milvus-lite server, Celery workers.

The bucket is changed between runs (objects added, overwritten with new content = new ETag,
deleted); after ``imgsearch reindex --wait`` the index must hold exactly the bucket's objects
under the prefix with their current ETags, the report must count each kind right, rows of
another prefix and the text rows of kept images must survive, text rows of removed images
must go, and a run with nothing to do must encode nothing. Overlapping runs are refused.
"""

from __future__ import annotations

import json

import pytest

from common.ids import image_id
from common.texts import TextItem, TextStore
from ingest.runlock import history
from tests.ingest.conftest import png_bytes

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def bucket_etags(dist, prefix: str) -> dict[str, str]:
    resp = dist.s3.client().list_objects_v2(Bucket=dist.bucket, Prefix=prefix)
    return {f"s3://{dist.bucket}/{o['Key']}": o["ETag"].strip('"') for o in resp.get("Contents", [])}


def index_etags(dist) -> dict[str, str]:
    store = dist.store()
    return {r["uri"]: r["etag"] for r in store.iter_rows(["uri", "etag"])}


def make_texts(dist, image_ids: list[int]) -> TextStore:
    """Two OCR rows per given image in the real texts collection paired with the images
    alias (created with the text model it already records, if the pipeline made it)."""
    dist.store()  # a fresh Milvus connection (see Cluster.store)
    texts = TextStore(dist.settings, dist.collection)
    label, dim = texts.text_model() or ("test-text-vectors", 8)
    texts.ensure(label, dim)
    unit = [1.0] + [0.0] * (dim - 1)
    texts.replace_many({i: ([TextItem("ocr", f"line {n} of {i}") for n in range(2)], [unit, unit])
                        for i in image_ids})
    texts.flush()
    return texts


def text_image_ids(dist) -> set[int]:
    dist.store()  # a fresh Milvus connection (see Cluster.store)
    texts = TextStore(dist.settings, dist.collection)
    rows = texts.client.query(texts.alias, filter="id >= 0", output_fields=["image_id"])
    return {int(r["image_id"]) for r in rows}


def test_reindex_makes_the_index_match_the_bucket(dist):
    shop = [dist.put(f"shop/img{i:02d}.png", png_bytes(i)) for i in range(12)]
    archive = dist.put("archive/old.png", png_bytes(500))
    dist.start_worker("embed", "embed")
    dist.start_worker("ocr,caption,finish,plan", "cpu")
    for prefix in ("shop/", "archive/"):
        run = dist.cli("ingest", f"s3://{dist.bucket}/{prefix}", "--wait", "--json")
        assert run.returncode == 0, run.stderr + dist.logs()
    make_texts(dist, [image_id(u) for u in (shop[0], shop[3], archive)])

    added = [dist.put(f"shop/new{i}.png", png_bytes(100 + i)) for i in range(3)]
    dist.put("shop/img01.png", png_bytes(201))  # same key, new content: new ETag
    dist.put("shop/img02.png", png_bytes(202))
    for i in (3, 4, 5):
        dist.s3.client().delete_object(Bucket=dist.bucket, Key=f"shop/img{i:02d}.png")

    run = dist.cli("reindex", f"s3://{dist.bucket}/shop/", "--wait", "--json")
    assert run.returncode == 0, run.stderr + dist.logs()
    report = json.loads(run.stdout)
    assert report["status"] == "done"
    assert {k: report[k] for k in ("listed", "new", "changed", "unchanged", "removed", "failed")} == \
        {"listed": 12, "new": 3, "changed": 2, "unchanged": 7, "removed": 3, "failed": 0}, report
    assert report["encoded"] == 5

    indexed = index_etags(dist)
    shop_index = {u: e for u, e in indexed.items() if u.startswith(f"s3://{dist.bucket}/shop/")}
    assert shop_index == bucket_etags(dist, "shop/")  # exactly the bucket, with current ETags
    assert set(added) <= set(shop_index)
    assert archive in indexed  # another prefix is never touched
    # texts of the removed img03 went with it; texts of kept images stayed
    left = text_image_ids(dist)
    assert {image_id(shop[0]), image_id(archive)} <= left
    assert not left & {image_id(f"s3://{dist.bucket}/shop/img{i:02d}.png") for i in (3, 4, 5)}

    again = dist.cli("reindex", f"s3://{dist.bucket}/shop/", "--wait", "--json")
    assert again.returncode == 0, again.stderr + dist.logs()
    second = json.loads(again.stdout)
    assert {k: second[k] for k in ("listed", "new", "changed", "unchanged", "removed", "failed", "encoded")} == \
        {"listed": 12, "new": 0, "changed": 0, "unchanged": 12, "removed": 0, "failed": 0, "encoded": 0}
    job = dist.jobs().get(second["job"])
    assert job.batches_total == 0 and job.kind == "reindex"


def test_an_overlapping_reindex_is_refused_until_the_running_one_ends(dist):
    for i in range(4):
        dist.put(f"p/img{i}.png", png_bytes(i))
    dist.start_worker("ocr,caption,finish,plan", "cpu")  # no embed worker yet: the first run waits
    first = dist.cli("reindex", f"s3://{dist.bucket}/p/", "--json")
    assert first.returncode == 0, first.stderr
    job_id = json.loads(first.stdout)["job"]
    dist.wait_for(lambda: dist.jobs().get(job_id).planned, 60, "the first run to be planned")

    second = dist.cli("reindex", f"s3://{dist.bucket}/p/", "--wait")
    assert second.returncode == 1
    assert "refused" in second.stderr and job_id in second.stderr
    refusals = [e for e in history(dist.jobs(), 50) if e["source"] == f"s3://{dist.bucket}/p/"]
    assert [e["outcome"] for e in refusals][:2] == ["refused", "started"]
    assert refusals[0]["holder"] == job_id
    assert [j.id for j in dist.jobs().list(50) if j.source == f"s3://{dist.bucket}/p/"] == [job_id]

    dist.start_worker("embed", "embed")
    dist.wait_for(lambda: dist.jobs().get(job_id).status == "done", 180, "the first run to finish")
    third = dist.cli("reindex", f"s3://{dist.bucket}/p/", "--wait", "--json")  # lock released: accepted
    assert third.returncode == 0, third.stderr + dist.logs()
    assert json.loads(third.stdout)["unchanged"] == 4
