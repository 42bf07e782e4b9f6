"""One run at a time per source (or per migrated alias), across the whole cluster.

A Redis key holds the id of the job that owns the run, with an expiry. The job renews it
whenever it makes progress (each planned page, each finished batch) and releases it when it
ends; every change is a compare-and-set on the job id (Lua), so a late or duplicate task
can never release or extend another run's lock. A run that finished without releasing (a
worker died at the wrong moment) does not block the next one: the next acquirer sees that
the holder job has ended and takes the lock over. The expiry is the last resort when even
the job record is gone.

Every attempt, taken or refused, is appended to a capped Redis list, so a refused second
beat or overlapping run is visible afterwards (``imgsearch schedules``), not just logged.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

from common.errors import ImgsearchError
from common.jobs import PREFIX, JobNotFoundError, JobStore

log = logging.getLogger(__name__)

HISTORY_KEY = PREFIX + "runs:history"
HISTORY_MAX = 500

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_TAKEOVER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
"""


class RunRefused(ImgsearchError):
    """Another run of the same source (or migration of the same alias) is in progress."""


def reindex_lock_key(collection: str, source: str) -> str:
    return f"{PREFIX}lock:reindex:{collection}:{source}"


def migrate_lock_key(alias: str) -> str:
    return f"{PREFIX}lock:migrate:{alias}"


@dataclass
class RunLock:
    """The lock ``key`` held by job ids, expiring after ``ttl_s`` without renewal."""

    jobs: JobStore
    key: str
    ttl_s: int

    @property
    def _ms(self) -> int:
        return self.ttl_s * 1000

    def holder(self) -> str | None:
        value = self.jobs.r.get(self.key)
        return value.decode() if value else None

    def acquire(self, job_id: str) -> None:
        """Take the lock for ``job_id`` or raise :class:`RunRefused` naming the holder."""
        r = self.jobs.r
        for _ in range(3):  # a holder may end or vanish while we look at it
            if r.set(self.key, job_id, nx=True, px=self._ms):
                return
            holder = self.holder()
            if holder is None:
                continue
            if holder == job_id:
                return
            if self._holder_ended(holder):
                if r.eval(_TAKEOVER, 1, self.key, holder, job_id, self._ms):
                    log.warning("took over a run lock whose job had ended", extra={"lock": self.key,
                                                                                   "stale_job": holder})
                    return
                continue
            ttl = r.pttl(self.key)
            raise RunRefused(f"refused: job {holder} is still running for this lock ({self.key}, expires in "
                             f"{max(ttl, 0) / 1000:.0f}s unless renewed); follow it with "
                             f"`imgsearch jobs status {holder}` or stop it with `imgsearch jobs cancel {holder}`")
        raise RunRefused(f"refused: lock {self.key} is contended; try again")

    def _holder_ended(self, holder: str) -> bool:
        try:
            return self.jobs.get(holder).finished
        except JobNotFoundError:
            return True

    def renew(self, job_id: str) -> bool:
        return bool(self.jobs.r.eval(_RENEW, 1, self.key, job_id, self._ms))

    def release(self, job_id: str) -> bool:
        return bool(self.jobs.r.eval(_RELEASE, 1, self.key, job_id))


def record(jobs: JobStore, **entry) -> dict:
    """Append one run attempt (started / refused) to the capped history list."""
    entry = {"at": time.time(), **entry}
    pipe = jobs.r.pipeline()
    pipe.lpush(HISTORY_KEY, json.dumps(entry))
    pipe.ltrim(HISTORY_KEY, 0, HISTORY_MAX - 1)
    pipe.execute()
    return entry


def history(jobs: JobStore, limit: int = 50) -> list[dict]:
    """Recent run attempts, newest first."""
    return [json.loads(v) for v in jobs.r.lrange(HISTORY_KEY, 0, limit - 1)]


def lock_of(job, jobs: JobStore, ttl_s: int) -> RunLock | None:
    """The lock a job holds (recorded in its options when it was submitted), if any."""
    key = job.options.get("lock")
    return RunLock(jobs, key, ttl_s) if key else None
