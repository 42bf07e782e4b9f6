"""Job state in a real Redis: counts are exact when a batch finishes twice, dead letters keep attempts."""

from __future__ import annotations

import pytest

from common.jobs import JobNotFoundError, JobStore

pytestmark = pytest.mark.integration


@pytest.fixture
def jobs(redis_server):
    client = redis_server.client()
    client.flushdb()
    return JobStore.from_url(redis_server.url)


def fail(uri: str, reason: str = "undecodable") -> dict:
    return {"uri": uri, "reason": reason, "message": "bad bytes", "etag": "e", "size": 3, "batch": 0}


def test_a_batch_delivered_twice_is_counted_once_and_the_job_completes(jobs):
    job_id = jobs.create("s3://b/p/", "images")
    epoch = jobs.begin_plan(job_id)
    assert jobs.finish_batch(job_id, epoch, 0, indexed=3, failures=[fail("s3://b/p/x")]) == 1
    assert jobs.planned(job_id, epoch, listed=10, unchanged=2, batches=2) == 1
    assert jobs.get(job_id).status == "running"
    assert jobs.finish_batch(job_id, epoch, 1, indexed=4, failures=[]) == 1
    assert jobs.finish_batch(job_id, epoch, 1, indexed=4, failures=[]) == 0  # redelivered
    assert jobs.finish_batch(job_id, epoch, 0, indexed=0, failures=[fail("s3://b/p/y")]) == 0
    job = jobs.get(job_id)
    assert (job.status, job.listed, job.indexed, job.unchanged, job.failed) == ("done", 10, 7, 2, 1)
    assert job.indexed + job.unchanged + job.failed == job.listed
    assert [e["uri"] for e in jobs.dead_letters(job_id)] == ["s3://b/p/x"]


def test_stale_epoch_and_cancelled_jobs_are_not_counted(jobs):
    job_id = jobs.create("s3://b/p/", "images")
    old = jobs.begin_plan(job_id)
    new = jobs.begin_plan(job_id)  # the plan task was redelivered and started over
    assert jobs.finish_batch(job_id, old, 0, indexed=5, failures=[]) == -1
    assert jobs.get(job_id).indexed == 0
    jobs.cancel(job_id)
    assert jobs.finish_batch(job_id, new, 0, indexed=5, failures=[]) == -2
    assert jobs.get(job_id).status == "cancelled"


def test_retry_batches_move_recovered_objects_and_count_attempts(jobs):
    job_id = jobs.create("s3://b/p/", "images")
    epoch = jobs.begin_plan(job_id)
    jobs.finish_batch(job_id, epoch, 0, indexed=1, failures=[fail("s3://b/p/a"), fail("s3://b/p/b")])
    jobs.planned(job_id, epoch, listed=3, unchanged=0, batches=1)
    assert jobs.get(job_id).status == "done"
    first = jobs.add_batches(job_id, 1)
    assert first == 1 and jobs.get(job_id).status == "running"
    jobs.finish_batch(job_id, epoch, first, indexed=1, failures=[fail("s3://b/p/b")], retry=True,
                      recovered=["s3://b/p/a"])
    job = jobs.get(job_id)
    assert (job.status, job.indexed, job.failed) == ("done", 2, 1)
    [entry] = jobs.dead_letters(job_id)
    assert (entry["uri"], entry["attempts"]) == ("s3://b/p/b", 2)


def test_unknown_job_is_a_clear_error(jobs):
    with pytest.raises(JobNotFoundError, match="no ingest job 'nope'"):
        jobs.get("nope")
