"""Scheduled re-indexing: a Celery beat schedule from ``IMGSEARCH_SCHEDULES``, one run at a time.

``IMGSEARCH_SCHEDULES`` maps sources to cron strings (UTC), e.g.
``{"s3://photos/shop/": "0 2 * * *"}``. ``imgsearch beat`` (Celery beat) sends
``ingest.scheduled_reindex(source)`` at each tick; a plan worker then submits a ``reindex``
job for the source. Two guards keep it to one run:

- per tick: the first scheduled task of a (collection, source, minute) sets a Redis key
  with NX; a second beat's task for the same tick is refused (two beats started by mistake,
  or a failover beat that overlaps the old one);
- per run: the job takes the source's run lock (:mod:`ingest.runlock`); a tick that comes
  while the previous run still works, or a manual ``imgsearch reindex`` of the same source,
  is refused with the holder's job id.

Each refusal is logged (WARNING) and recorded in the run history (``imgsearch schedules``).
"""

from __future__ import annotations

import logging
import time

from common.jobs import PREFIX, JobStore, new_job_id
from common.settings import Settings
from common.sources import open_source
from ingest.app import SCHEDULED_REINDEX, beat_schedule
from ingest.runlock import RunLock, RunRefused, record, reindex_lock_key

log = logging.getLogger(__name__)

TASK = SCHEDULED_REINDEX

__all__ = ["TASK", "beat_schedule", "run_scheduled", "submit_reindex"]


def submit_reindex(location: str, settings: Settings, include: tuple[str, ...] = (), trigger: str = "cli") -> str:
    """Take the source's run lock, record a ``reindex`` job and enqueue its plan.

    Raises :class:`RunRefused` (recorded in the run history) while another run holds it."""
    from ingest.distributed import submit

    jobs = JobStore.from_url(settings.redis_url)
    root = open_source(location, settings, include).root  # a bad location fails here
    job_id = new_job_id()
    lock = RunLock(jobs, reindex_lock_key(settings.collection, root), settings.schedule_lock_ttl)
    what = {"kind": "reindex", "source": root, "collection": settings.collection, "trigger": trigger}
    try:
        lock.acquire(job_id)
    except RunRefused as exc:
        record(jobs, **what, outcome="refused", holder=lock.holder(), message=str(exc))
        log.warning("reindex refused", extra={**what, "reason": str(exc)})
        raise RunRefused(f"reindex of {root} {exc}") from None
    submit(location, settings, include, kind="reindex", options={"lock": lock.key, "trigger": trigger},
           job_id=job_id)
    record(jobs, **what, outcome="started", job=job_id)
    log.info("reindex started", extra={**what, "job": job_id})
    return job_id


def run_scheduled(source: str, settings: Settings, now: float | None = None) -> dict:
    """The body of the scheduled task: one run per tick, and none while one is running."""
    jobs = JobStore.from_url(settings.redis_url)
    tick = time.strftime("%Y%m%d%H%M", time.gmtime(now or time.time()))
    what = {"kind": "reindex", "source": source, "collection": settings.collection, "trigger": "schedule",
            "tick": tick}
    key = f"{PREFIX}schedule:tick:{settings.collection}:{source}:{tick}"
    if not jobs.r.set(key, "1", nx=True, ex=86_400):
        message = f"refused: this schedule already fired for tick {tick} (a second beat is running)"
        record(jobs, **what, outcome="refused", message=message)
        log.warning("scheduled reindex refused", extra={**what, "reason": message})
        return {**what, "outcome": "refused", "message": message}
    try:
        job_id = submit_reindex(source, settings, trigger=f"schedule@{tick}")
    except RunRefused as exc:
        return {**what, "outcome": "refused", "message": str(exc)}
    return {**what, "outcome": "started", "job": job_id}
