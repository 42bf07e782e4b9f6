"""Sending work to the workers BY TASK NAME: the one module the operator side (CLI, gateway,
beat, benches) and the plan steps enqueue through.

Nothing here imports :mod:`ingest.tasks` (the worker graph: models, stages, stores); a
message names its task (``ingest.plan``, ``ingest.embed`` ...) and ``ingest.app``'s routes
put it on that stage's queue. Only a worker imports the tasks.
"""

from __future__ import annotations

from celery import chain

from common.jobs import JobStore
from common.settings import Settings
from ingest.app import app
from ingest.planning import BatchSpec, batch_spec

PLAN, EMBED, OCR, CAPTION, FINISH = "ingest.plan", "ingest.embed", "ingest.ocr", "ingest.caption", "ingest.finish"


def send_plan(job_id: str, settings: Settings | None = None, step: int = 0) -> None:
    """Enqueue plan step ``step`` of a job (step 0 starts it; see ingest/planning.py)."""
    app.send_task(PLAN, args=[job_id, step])


def enqueue_batch(spec: BatchSpec) -> None:
    """One chain per batch ``embed | ocr | caption | finish``, each stage on its own queue."""
    chain(app.signature(EMBED, args=(spec,)), app.signature(OCR), app.signature(CAPTION),
          app.signature(FINISH)).apply_async()


def enqueue_dead_letter_retry(job_id: str, settings: Settings) -> int:
    """Re-run a job's dead-lettered objects as new batches of the same job; returns how many."""
    store = JobStore.from_url(settings.redis_url)
    job = store.get(job_id)
    entries = store.dead_letters(job_id)
    if not entries:
        return 0
    size = settings.batch_size * settings.batches_per_task
    manifests = [[{k: e[k] for k in ("uri", "etag", "size")} for e in entries[i:i + size]]
                 for i in range(0, len(entries), size)]
    first = store.add_batches(job_id, len(manifests))
    for n, manifest in enumerate(manifests):
        spec = batch_spec(job_id, job.epoch, first + n, job.source, job.collection, manifest, retry=True)
        if job.kind == "migrate":
            spec["model"] = job.options["model"]
        enqueue_batch(spec)
    return len(manifests)
