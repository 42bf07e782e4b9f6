"""Helpers shared by the web page's API and browser tests: a module-long worker, a real job."""

from __future__ import annotations

import contextlib
import uuid
from pathlib import Path

from common.jobs import JobStore
from common.settings import Settings
from tests.query.conftest import WorkerProcess


@contextlib.contextmanager
def running_worker(settings: Settings, log_dir: Path, name: str | None = None):
    """One warm ``imgsearch query-worker`` subprocess for a whole module (startup costs model loading)."""
    worker = WorkerProcess(settings, name or f"web-{uuid.uuid4().hex[:6]}", log_dir)
    try:
        worker.wait_ready()
        yield worker
    finally:
        worker.stop()


def ingest_job(redis_url: str, source: str, listed: int, indexed: int, failed_uris: list[str]) -> str:
    """A job recorded the way a distributed ingest records one (plan, then batches finishing)."""
    jobs = JobStore.from_url(redis_url)
    job_id = jobs.create(source, "images")
    epoch = jobs.begin_plan(job_id)
    jobs.planned(job_id, epoch, listed=listed, unchanged=0, batches=2)
    failures = [{"uri": u, "reason": "undecodable", "message": "cannot decode PNG data", "etag": "e", "size": 3,
                 "batch": 0} for u in failed_uris]
    jobs.finish_batch(job_id, epoch, 0, indexed=indexed, failures=failures)
    return job_id
