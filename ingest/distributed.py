"""The operator's side of distributed ingest: submit a job, follow it, summarise it.

Used by the CLI when ``IMGSEARCH_REDIS_URL`` is set. Submitting only records the job and
enqueues its ``plan`` task; listing, diffing and indexing happen on workers.
"""

from __future__ import annotations

import sys
import time
from collections import Counter

from common.jobs import Job, JobStore
from common.settings import Settings
from common.sources import open_source

POLL_SECONDS = 0.5


def submit(location: str, settings: Settings, include: tuple[str, ...] = (), *, kind: str = "ingest",
           options: dict | None = None, job_id: str | None = None) -> str:
    """Record a job and enqueue its plan; returns the job id. Bad locations fail here."""
    from ingest.dispatch import send_plan

    source = open_source(location, settings, include)  # validates the URI / folder now
    store = JobStore.from_url(settings.redis_url)
    job_id = store.create(source.root, settings.collection, include, kind=kind, options=options, job_id=job_id)

    send_plan(job_id, settings)
    return job_id


def wait(job_id: str, settings: Settings, progress: bool = True, timeout: float | None = None) -> Job:
    """Poll the job until it ends, with a progress bar (count, rate, ETA) when asked.

    Redis outages while waiting are ridden out (the client retries with backoff); the
    job keeps running on the workers regardless of this process.
    """
    import redis

    store = JobStore.from_url(settings.redis_url)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=0, desc=f"job {job_id}", unit="img", file=sys.stderr, dynamic_ncols=True)
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while True:
            try:
                job = store.get(job_id)
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                job = None
            if job is not None and bar is not None:
                bar.total = max(job.listed, job.processed)
                if not job.planned:
                    bar.set_description(f"job {job_id} (listed {job.listed}, {job.planning()['rate']:.0f}/s)")
                bar.update(job.processed - bar.n)
                bar.set_postfix(status=job.status, indexed=job.indexed, unchanged=job.unchanged,
                                failed=job.failed, refresh=True)
            if job is not None and job.finished:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job.status if job else 'unknown'} after {timeout}s")
            time.sleep(POLL_SECONDS)
    finally:
        if bar is not None:
            bar.close()


def render(job: Job, dead: list[dict] | None = None, max_failures: int = 20) -> str:
    """The same summary shape as the embedded runner's, plus the job id and status."""
    end = job.finished_at or time.time()
    seconds = max(end - job.created_at, 0.0)
    rate = f"{job.indexed / seconds:.1f} images/s" if seconds and job.indexed else "-"
    lines = [f"job {job.id} [{job.status}] {job.source} -> collection {job.collection!r}: {job.listed} listed, "
             f"{job.indexed} indexed, {job.unchanged} unchanged (skipped), {job.failed} failed  "
             f"[{seconds:.1f}s, {rate}]"]
    if not job.planned and not job.finished:
        p = job.planning()
        lines.append(f"planning: {p['listed']} listed so far at {p['rate']:.1f} objects/s (step {p['step']})")
    if job.error:
        lines.append(f"error: {job.error}")
    if dead:
        reasons = Counter(e["reason"] for e in dead).most_common()
        lines.append("failures by reason: " + ", ".join(f"{r}={n}" for r, n in reasons))
        for e in dead[:max_failures]:
            lines.append(f"  {e['reason']:<16} {e['uri']}  ({e['message']}; attempts {e['attempts']})")
        if len(dead) > max_failures:
            lines.append(f"  ... {len(dead) - max_failures} more")
        lines.append(f"all failures: imgsearch dead-letters list {job.id}")
    return "\n".join(lines)
