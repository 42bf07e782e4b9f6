"""Plan steps (ingest/planning.py) against real Redis, SeaweedFS and a milvus-lite server,
in this process: each step lists a bounded slice after the job's checkpoint; a step that
dies after enqueueing its batches but before its checkpoint is run again and enqueues the
SAME batch ids (so ``finish`` counts them once); counts end exact; the job view shows
planning progress; a re-index's deletions are found through the job's listed-id set.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from common.ids import image_id
from ingest.listing import DiskListedIds, RedisListedIds
from ingest.planning import Cursor, JobPlanState, plan_step
from tests.ingest.conftest import png_bytes

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


class Crash(Exception):
    """Stands for the planner's process dying at that point."""


class DiesBeforeCheckpoint(JobPlanState):
    """The real Redis-backed state, except that the process 'dies' right before one commit."""

    def __init__(self, *args, die_at: set[int]):
        super().__init__(*args)
        self.die_at = die_at  # shared across attempts: each death happens once

    def commit(self, epoch: int, expected_step: int, cursor: Cursor) -> bool:
        if expected_step in self.die_at:
            self.die_at.discard(expected_step)
            raise Crash
        return super().commit(epoch, expected_step, cursor)


def put_many(dist, keys: list[str]) -> list[str]:
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda ik: dist.put(ik[1], png_bytes(ik[0], 8)), enumerate(keys)))


def run_steps(dist, job_id: str, state_for) -> tuple[list[dict], list]:
    """Run plan steps like the plan worker does until none is left; (specs, results)."""
    jobs, settings = dist.jobs(), dist.settings
    specs: list[dict] = []
    results = []
    step = 0
    while True:
        job = jobs.get(job_id)
        state = state_for(job)
        try:
            result = plan_step(job, step, settings, state, specs.append)
        except Crash:
            continue  # "redelivered": the same step runs again from the last checkpoint
        results.append(result)
        if result.next_step is None:
            return specs, results
        step = result.next_step


def test_plan_steps_checkpoint_resume_and_count_a_slice_once(dist):
    dist.set(plan_slice_objects=50, batch_size=8, batches_per_task=2)
    uris = put_many(dist, [f"lot/img{i:04d}.png" for i in range(230)])
    jobs = dist.jobs()
    job_id = jobs.create(f"s3://{dist.bucket}/lot/", dist.collection)
    seen_views = []
    deaths = {2}

    def state_for(job):
        seen_views.append(jobs.get(job.id).planning())
        return DiesBeforeCheckpoint(jobs, job, dist.settings, die_at=deaths)

    specs, results = run_steps(dist, job_id, state_for)
    # 230 objects in slices of 50: 5 slices listed (the one after step 2 twice), then done
    assert [r.outcome for r in results] == ["listed"] * 4 + ["done"]
    by_batch: dict[int, list[list[str]]] = {}
    for s in specs:
        by_batch.setdefault(s["batch"], []).append([m["uri"] for m in s["manifest"]])
    replayed = [b for b, copies in by_batch.items() if len(copies) > 1]
    assert replayed and not deaths, "the slice of the step that died was not enqueued again"
    assert all(c == by_batch[b][0] for b in replayed for c in by_batch[b]), "a replay changed a batch"
    planned = sorted(u for b in sorted(by_batch) for u in by_batch[b][0])
    assert planned == sorted(uris)  # every object in exactly one batch id
    job = jobs.get(job_id)
    assert job.planned and (job.listed, job.unchanged, job.new, job.batches_total) == (230, 0, 230, len(by_batch))
    assert job.planning()["listed"] == 230 and job.planning()["done"]
    assert [v["listed"] for v in seen_views[:3]] == [0, 50, 100]  # progress is visible while listing

    # counting: each batch id once, the replayed copies are not counted again
    for b, copies in by_batch.items():
        for _ in copies:
            jobs.finish_batch(job_id, job.epoch, b, indexed=len(copies[0]), failures=[])
    job = jobs.get(job_id)
    assert job.status == "done" and job.indexed == 230


def test_listed_id_sets_answer_what_was_not_listed(dist, tmp_path):
    ids = [image_id(f"s3://b/k{i}") for i in range(25_000)]
    for store in (RedisListedIds(dist.redis.client(), "imgsearch:test:listed"), DiskListedIds(tmp_path / "l.sqlite")):
        store.add(ids[:20_000])
        store.add(ids[10_000:20_000])  # a slice listed twice changes nothing
        assert store.missing(ids[19_990:20_010]) == ids[20_000:20_010]
        store.drop()
