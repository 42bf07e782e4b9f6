"""What happens when a job ends (done, failed or cancelled), whoever noticed it.

The ``finish`` task that counts the last batch, the ``plan`` task of a job with nothing to
do, or a failed plan all call :func:`on_job_end`; it is idempotent, because a redelivered
task may call it again: a migration swaps its alias once, a run lock is released only by
the job holding it.
"""

from __future__ import annotations

import logging

from common.jobs import JobStore
from common.settings import Settings
from ingest.migrate import finish_migration
from ingest.runlock import lock_of

log = logging.getLogger(__name__)


def on_job_end(job_id: str, settings: Settings, jobs: JobStore) -> bool:
    """Run the end-of-job steps if the job has ended; returns whether it had."""
    job = jobs.get(job_id)
    if not job.finished:
        lock = lock_of(job, jobs, settings.schedule_lock_ttl)
        if lock is not None:
            lock.renew(job_id)  # still running: keep its run exclusive
        return False
    if job.kind == "migrate":
        finish_migration(job, settings, jobs)
    lock = lock_of(job, jobs, settings.schedule_lock_ttl)
    if lock is not None and lock.release(job_id):
        log.info("run lock released", extra={"job": job_id, "lock": lock.key, "status": job.status})
    return True
