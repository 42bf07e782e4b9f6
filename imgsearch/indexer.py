"""What the gateway's indexing endpoints call: jobs (ingest, re-index) of a source.

The gateway (``query``) may not import ``ingest``; ``imgsearch serve`` composes the two by
handing the gateway one of these. :class:`EmbeddedJobs` runs jobs in the serving process
(one at a time, on a thread of its own, through the same embedded runner as ``imgsearch
ingest``) and keeps their records in memory; :class:`DistributedJobs` submits them to the
Celery workers and reads them from Redis (:mod:`common.jobs`).

Both answer the job store interface the web page reads (``list``, ``dead_letters``) plus
``start(source, include, kind)`` and ``get(job_id)`` -> a dict with ``finished``, and the
one-image calls of ``/v1/images`` (``upload``, ``index_uri``, ``delete``, ``detail``;
:mod:`imgsearch.images_api`).
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from common.jobs import Job, JobNotFoundError, new_job_id
from common.settings import Settings

log = logging.getLogger(__name__)
KINDS = ("ingest", "reindex")
MAX_KEPT = 200


class EmbeddedJobs:
    """Jobs run in this process, one at a time, in submission order."""

    def __init__(self, settings: Settings, on_change=None):
        self.settings = settings
        self.jobs: dict[str, Job] = {}
        self.results: dict[str, dict] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="imgsearch-ingest")
        self._on_change = on_change  # called after a job wrote to the collection

    def start(self, source: str, include: tuple[str, ...] = (), kind: str = "ingest") -> dict:
        from common.sources import open_source

        root = open_source(source, self.settings, include).root  # a bad source fails now, typed
        job = Job(new_job_id(), root, self.settings.collection, "planning", time.time(), list(include), kind=kind)
        with self._lock:
            self.jobs[job.id] = job
            for old in list(self.jobs)[:-MAX_KEPT]:
                self.jobs.pop(old, None)
                self.results.pop(old, None)
        self._pool.submit(self._run, job, source, tuple(include))
        return self.view(job)

    def _run(self, job: Job, source: str, include: tuple[str, ...]) -> None:
        job.status = "running"
        try:
            if job.kind == "reindex":
                from ingest.reindex import run_reindex

                report = run_reindex(source, self.settings, include, progress=False)
                done = report.to_dict()
                rendered = report.render()
                failures = report.failures
                job.counters.update(listed=report.listed, indexed=report.encoded, failed=report.failed,
                                    unchanged=report.unchanged, new=report.new, changed=report.changed,
                                    removed=report.removed)
            else:
                from ingest.runner import run_ingest

                summary = run_ingest(source, self.settings, include, progress=False)
                done = summary.to_dict()
                rendered = summary.render()
                failures = done["failures"]
                job.counters.update(listed=summary.listed, indexed=summary.indexed, unchanged=summary.unchanged,
                                    failed=summary.failed)
            job.status = "done"
            self.results[job.id] = {"summary": done, "rendered": rendered, "dead_letters": failures}
        except Exception as exc:
            log.exception("embedded job failed", extra={"job": job.id})
            job.status, job.error = "failed", f"{type(exc).__name__}: {exc}"[:2000]
        finally:
            job.planned = True
            job.finished_at = time.time()
            self._changed()

    def view(self, job: Job) -> dict:
        extra = {k: v for k, v in self.results.get(job.id, {}).items() if k != "dead_letters"}
        return {**job.to_dict(), "finished": job.finished, **extra}

    def get(self, job_id: str) -> dict:
        job = self.jobs.get(job_id)
        if job is None:
            raise JobNotFoundError(f"no job {job_id!r} in this server")
        return self.view(job)

    def list(self, limit: int = 20) -> list[Job]:
        return sorted(self.jobs.values(), key=lambda j: j.created_at, reverse=True)[:limit]

    def dead_letters(self, job_id: str) -> list[dict]:
        if job_id not in self.jobs:
            raise JobNotFoundError(f"no job {job_id!r} in this server")
        return list(self.results.get(job_id, {}).get("dead_letters", []))

    # -- one image (POST/GET/DELETE /v1/images): on the jobs' thread, one write at a time --
    def _on_jobs_thread(self, fn, *args):
        return self._pool.submit(fn, *args).result()

    def upload(self, data: bytes, name: str | None) -> dict:
        from imgsearch.images_api import store_upload

        return self.index_uri(store_upload(data, name, self.settings))

    def index_uri(self, uri: str) -> dict:
        from imgsearch.images_api import index_embedded

        try:
            return self._on_jobs_thread(index_embedded, uri, self.settings)
        finally:
            self._changed()

    def delete(self, ident: int) -> dict | None:
        from imgsearch.images_api import delete_image

        return self._on_jobs_thread(delete_image, ident, self.settings)

    def detail(self, ident: int) -> dict | None:
        from imgsearch.images_api import image_detail

        return image_detail(ident, self.settings)

    def _changed(self) -> None:
        if self._on_change is not None:
            try:
                self._on_change()
            except Exception:
                log.exception("after-write hook failed")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class DistributedJobs:
    """Jobs submitted to the Celery workers; their records live in Redis."""

    def __init__(self, settings: Settings):
        from common.jobs import JobStore

        self.settings = settings
        self.store = JobStore.from_url(settings.redis_url)

    def start(self, source: str, include: tuple[str, ...] = (), kind: str = "ingest") -> dict:
        if kind == "reindex":
            from ingest.schedules import submit_reindex

            return self.get(submit_reindex(source, self.settings, tuple(include)))
        from ingest.distributed import submit

        return self.get(submit(source, self.settings, tuple(include)))

    def get(self, job_id: str) -> dict:
        job = self.store.get(job_id)
        return {**job.to_dict(), "finished": job.finished}

    def list(self, limit: int = 20) -> list[Job]:
        return self.store.list(limit)

    def upload(self, data: bytes, name: str | None) -> dict:
        from imgsearch.images_api import store_upload

        return self.index_uri(store_upload(data, name, self.settings))

    def index_uri(self, uri: str) -> dict:
        from imgsearch.images_api import index_distributed

        return index_distributed(uri, self.settings)

    def delete(self, ident: int) -> dict | None:
        from imgsearch.images_api import delete_image

        return delete_image(ident, self.settings)

    def detail(self, ident: int) -> dict | None:
        from imgsearch.images_api import image_detail

        return image_detail(ident, self.settings)

    def dead_letters(self, job_id: str) -> list[dict]:
        return self.store.dead_letters(job_id)

    def close(self) -> None:
        pass


def jobs_for(settings: Settings, on_change=None):
    return DistributedJobs(settings) if settings.redis_url else EmbeddedJobs(settings, on_change)
