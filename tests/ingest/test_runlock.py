"""The run lock against a real Redis: one holder, compare-and-set renew/release, expiry,
take-over from a job that ended without releasing, refusals recorded."""

from __future__ import annotations

import time
import uuid

import pytest

from common.jobs import JobStore
from ingest.runlock import RunLock, RunRefused, history, record

pytestmark = pytest.mark.integration


@pytest.fixture
def jobs(redis_server) -> JobStore:
    return JobStore.from_url(redis_server.url)


def test_one_holder_and_only_the_holder_renews_or_releases(jobs):
    a = jobs.create("s3://b/p/", "images", kind="reindex")
    b = jobs.create("s3://b/p/", "images", kind="reindex")
    lock = RunLock(jobs, f"imgsearch:lock:{uuid.uuid4().hex}", ttl_s=30)
    lock.acquire(a)
    lock.acquire(a)  # re-entrant for the same job (a redelivered submit)
    with pytest.raises(RunRefused, match=f"job {a} is still running"):
        lock.acquire(b)
    assert not lock.renew(b) and not lock.release(b)  # a stranger cannot extend or free it
    assert lock.holder() == a
    jobs.r.pexpire(lock.key, 500)
    assert lock.renew(a) and jobs.r.pttl(lock.key) > 25_000
    assert lock.release(a) and lock.holder() is None
    lock.acquire(b)
    assert lock.holder() == b


def test_a_lock_of_an_ended_job_is_taken_over_and_an_expired_one_is_free(jobs):
    stale = jobs.create("s3://b/p/", "images", kind="reindex")
    fresh = jobs.create("s3://b/p/", "images", kind="reindex")
    lock = RunLock(jobs, f"imgsearch:lock:{uuid.uuid4().hex}", ttl_s=30)
    lock.acquire(stale)
    jobs.fail(stale, "worker lost")  # ended without releasing
    lock.acquire(fresh)
    assert lock.holder() == fresh

    short = RunLock(jobs, f"imgsearch:lock:{uuid.uuid4().hex}", ttl_s=1)
    short.acquire(fresh)
    time.sleep(1.2)
    assert short.holder() is None  # nothing renewed it: the last resort expiry freed it
    short.acquire(stale)


def test_history_is_newest_first(jobs):
    tag = uuid.uuid4().hex
    for i in range(3):
        record(jobs, kind="reindex", source=f"{tag}{i}", outcome="refused" if i else "started")
    got = [e for e in history(jobs, 500) if e["source"].startswith(tag)]
    assert [e["source"] for e in got] == [f"{tag}2", f"{tag}1", f"{tag}0"]
    assert got[0]["outcome"] == "refused" and got[0]["at"] <= time.time()
