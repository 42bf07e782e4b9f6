"""Faults during a distributed job: a SIGKILLed embed worker, a Redis restart.

Both must end with exact counters (indexed + unchanged + failed == listed), every image
in Milvus exactly once, and nothing dead-lettered.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.ingest.conftest import ROOT, png_bytes

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]

N = 240  # 15 tasks of 2 x 8 images
# A batch must never hit its time limit here, however busy the CPU (it would be dead-lettered
# as `timeout` and the counts would not be exact): a generous limit, and the visibility
# timeout (how long a lost batch takes to come back) just above it.
LIMITS = {"visibility_timeout": 75, "batch_time_limit": 60, "unacked_restore_interval": 1}


def upload(dist, n: int = N) -> list[str]:
    return [dist.put(f"lot/img{i:04d}.png", png_bytes(i)) for i in range(n)]


def assert_complete_and_exact(dist, job_id: str, uris: list[str]) -> None:
    job = dist.jobs().get(job_id)
    assert job.status == "done", job.to_dict()
    assert (job.listed, job.indexed, job.unchanged, job.failed) == (len(uris), len(uris), 0, 0)
    assert job.batches_done == job.batches_total == len(dist.jobs().batch_records(job_id))
    assert dist.jobs().dead_letters(job_id) == []
    store = dist.store()
    rows = store.client.query(store.alias, filter="id >= 0", output_fields=["uri"], limit=16384)
    got = [r["uri"] for r in rows]
    assert len(got) == len(set(got)), "duplicate rows"
    assert sorted(got) == sorted(uris), "missing or extra rows"
    assert store.count() == len(uris)


def enqueue(dist, prefix: str) -> str:
    run = dist.cli("ingest", f"s3://{dist.bucket}/{prefix}", "--json")
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)["job"]


def held_by_queue(dist) -> list[str]:
    """Routing keys (queues) of the messages delivered but not yet acknowledged."""
    return [json.loads(v)[2] for v in dist.redis.client().hvals("unacked")]


def test_sigkilled_embed_worker_batch_comes_back_and_counts_stay_exact(dist):
    # The embed worker starts only when all 15 tasks wait in its queue, and it is struck only
    # while it is observed to hold one of them in `unacked`: it is stopped (SIGSTOP, so it
    # can acknowledge nothing), `unacked` is read again, and only then is it SIGKILLed. No
    # timing is guessed; a busy CPU only makes the test slower.
    dist.set(batch_size=8, batches_per_task=2, ocr_enabled="false", caption_backend="off", **LIMITS)
    uris = upload(dist)
    dist.start_worker("ocr,caption,finish,plan", "cpu")
    job_id = enqueue(dist, "lot/")
    jobs = dist.jobs()
    dist.wait_for(lambda: jobs.get(job_id).planned, 180, "the job planned")
    assert jobs.get(job_id).batches_total == N // 16
    embed = dist.start_worker("embed", "embed")

    def holding_embed() -> bool:
        if "embed" not in held_by_queue(dist):
            return False
        dist.freeze(embed)
        if "embed" in held_by_queue(dist):
            return True
        dist.thaw(embed)  # it acknowledged in between: look again
        return False

    dist.wait_for(holding_embed, 300, "the embed worker holding a batch in unacked")
    dist.kill_worker(embed)
    assert "embed" in held_by_queue(dist)  # so one must come back
    before = jobs.get(job_id)
    assert before.status == "running" and before.batches_done < before.batches_total

    dist.start_worker("embed", "embed-2")
    dist.wait_for(lambda: jobs.get(job_id).finished, 900, "job done after the kill")
    assert_complete_and_exact(dist, job_id, uris)


def test_redis_restart_mid_job_the_job_completes(dist):
    # an acknowledgement sent while Redis is down is lost; that batch comes back after the
    # visibility timeout (75 s here, not an hour)
    # OCR/captions off as above: their redelivery is tested in test_distributed_text.py
    dist.set(batch_size=8, batches_per_task=2, ocr_enabled="false", caption_backend="off", **LIMITS)
    uris = upload(dist)
    dist.start_worker("embed", "embed")
    dist.start_worker("ocr,caption,finish,plan", "cpu")
    follower = subprocess.Popen([sys.executable, "-m", "imgsearch", "ingest", f"s3://{dist.bucket}/lot/",
                                 "--wait", "--json", "--no-progress"], env=dist.env, cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        jobs = dist.jobs()
        job_id = dist.wait_for(lambda: [j.id for j in jobs.list() if j.batches_done >= 2], 180,
                               "two batches done")[0]
        assert not jobs.get(job_id).finished
        dist.redis.restart()
        out, err = follower.communicate(timeout=900)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
    assert follower.returncode == 0, out + err + dist.logs()
    assert json.loads(out)["id"] == job_id
    assert_complete_and_exact(dist, job_id, uris)


def test_sigkilled_plan_worker_resumes_listing_from_its_checkpoint(dist):
    # slices of 4 objects: 60 plan steps. The plan worker is struck while it is observed to
    # hold a plan step in `unacked` with listing not finished (frozen first, checked again).
    dist.set(batch_size=8, batches_per_task=2, ocr_enabled="false", caption_backend="off", plan_slice_objects=4,
             **LIMITS)
    uris = upload(dist)
    planner = dist.start_worker("plan", "plan")
    job_id = enqueue(dist, "lot/")
    jobs = dist.jobs()

    def mid_listing() -> bool:
        if jobs.get(job_id).planning()["step"] < 2 or "plan" not in held_by_queue(dist):
            return False
        dist.freeze(planner)
        p = jobs.get(job_id).planning()
        if not p["done"] and "plan" in held_by_queue(dist):
            return True
        dist.thaw(planner)
        return False

    dist.wait_for(mid_listing, 300, "the plan worker holding a plan step mid-listing", interval=0.02)
    dist.kill_worker(planner)
    at_kill = jobs.get(job_id)
    assert 0 < at_kill.planning()["listed"] < N and not at_kill.planned

    dist.start_worker("plan,ocr,caption,finish", "cpu")
    dist.start_worker("embed", "embed")
    dist.wait_for(lambda: jobs.get(job_id).finished, 900, "job done after the plan worker was killed")
    job = jobs.get(job_id)
    assert job.epoch == at_kill.epoch, "planning started over instead of resuming"
    assert job.planning()["step"] > at_kill.planning()["step"]
    assert_complete_and_exact(dist, job_id, uris)
