"""Celery tasks: thin wrappers that route the stages of :mod:`ingest.stages` to queues.

A batch runs as the chain ``embed | ocr | caption | finish``. A stage never raises out of
the chain for a permanent problem: the batch's objects are dead-lettered with a reason
instead, so ``finish`` still counts them and a job can never hang. Transient faults
(S3, Milvus, Redis) retry with exponential backoff and jitter first.
"""

from __future__ import annotations

import logging
import random
import threading
from dataclasses import replace

from celery import signals
from celery.exceptions import SoftTimeLimitExceeded

from common.errors import ConfigError, ImgsearchError, SourceError
from common.jobs import JobStore
from common.store import ImageStore
from common.texts import TextStore
from ingest.app import app, settings
from ingest.dispatch import enqueue_batch, send_plan
from ingest.lifecycle import on_job_end
from ingest.planning import JobPlanState, plan_step
from ingest.schedules import run_scheduled
from ingest.stages import BatchSpec, WorkerContext, embed_stage, failed_batch_result, finish_stage
from ingest.text_stages import TextContext, caption_stage, ocr_stage, stage_failed

log = logging.getLogger(__name__)

_state: dict[str, object] = {}
_state_lock = threading.Lock()
_worker_queues: set[str] = set()


def jobs() -> JobStore:
    """This process's job store (created after fork: sockets are never shared)."""
    with _state_lock:
        if "jobs" not in _state:
            _state["jobs"] = JobStore.from_url(settings.redis_url)
        return _state["jobs"]  # type: ignore[return-value]


def worker_context() -> WorkerContext:
    """This process's model and pools, built once (normally right after fork)."""
    with _state_lock:
        if "ctx" not in _state:
            _state["ctx"] = WorkerContext.build(settings)
        return _state["ctx"]  # type: ignore[return-value]


def text_context() -> TextContext:
    """This process's OCR/caption/text models and stores, built once (after fork)."""
    with _state_lock:
        if "text" not in _state:
            from concurrent.futures import ThreadPoolExecutor

            _state["text"] = TextContext(settings, ThreadPoolExecutor(settings.fetch_workers,
                                                                      thread_name_prefix="fetch"))
        return _state["text"]  # type: ignore[return-value]


@signals.celeryd_init.connect
def _check_config(sender=None, conf=None, options=None, **_):
    """Refuse to start a worker that could not do its job, with the reason."""
    if not settings.redis_url:
        raise ConfigError("IMGSEARCH_REDIS_URL is not set: workers need Redis (distributed mode)")
    if not settings.milvus_uri:
        raise ConfigError("IMGSEARCH_MILVUS_URI is not set: workers in several processes need a Milvus "
                          "server (a Milvus Lite file serves one process only)")
    queues = (options or {}).get("queues") or []
    if isinstance(queues, str):
        queues = queues.split(",")
    _worker_queues.update(q.strip() for q in queues)


@signals.worker_process_init.connect
def _load_models(**_):
    """Load the model once per pool process, after fork, before the first task arrives."""
    if not _worker_queues or "embed" in _worker_queues:
        try:
            worker_context()
        except Exception:  # the first embed task raises it again, and dead-letters with the reason
            log.exception("could not load the model at process start")
    if not _worker_queues or "ocr" in _worker_queues or "caption" in _worker_queues:
        try:
            ctx = text_context()
            ctx.encoder  # noqa: B018 - load the text model now, not in the first task
            if settings.ocr_enabled and (not _worker_queues or "ocr" in _worker_queues):
                ctx.ocr()
        except Exception:  # the first text task raises it again and dead-letters with the reason
            log.exception("could not load the text models at process start")


TRANSIENT: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError)


def _transient_types() -> tuple[type[BaseException], ...]:
    import botocore.exceptions
    import redis.exceptions
    from pymilvus.exceptions import MilvusException

    return TRANSIENT + (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, MilvusException,
                        botocore.exceptions.EndpointConnectionError, botocore.exceptions.ConnectionClosedError)


def _reset_milvus() -> None:
    """Drop this process's Milvus clients so the retry connects afresh.

    pymilvus pings idle channels every 10 s; a server enforcing gRPC's default ping policy
    answers with GOAWAY ("Too many pings") and the cached channel can stay broken.
    """
    from common.store import close_clients

    ctx = _state.get("ctx")
    if isinstance(ctx, WorkerContext):
        with ctx.lock:
            ctx.stores.clear()
    text = _state.get("text")
    if isinstance(text, TextContext):
        text.reset()
    close_clients()


def _countdown(retries: int) -> float:
    """Exponential backoff with full jitter, capped at a minute."""
    return random.uniform(0.5, min(60.0, 2.0 ** (retries + 1)))


@app.task(name="ingest.plan", bind=True, max_retries=settings.task_max_retries)
def plan(self, job_id: str, step: int = 0) -> dict:
    """One plan step (ingest/planning.py): list and diff a bounded slice of the job's source
    (or, for a migration, the live collection) after its checkpoint, enqueue one chain per
    batch, checkpoint, then enqueue the next step."""
    try:
        job = jobs().get(job_id)
        if job.finished:
            return {"job": job_id, "step": step, "outcome": job.status}
        state = JobPlanState(jobs(), job, settings)
        result = plan_step(job, step, settings, state, enqueue_batch)
        if result.next_step is not None:
            send_plan(job_id, settings, result.next_step)
            state.commit(result.epoch, result.next_step, replace(result.cursor, next_enqueued=True))
        on_job_end(job_id, settings, jobs())  # nothing to do: the job is already done
        return result.to_dict()
    except SourceError as exc:
        jobs().fail(job_id, str(exc))
        on_job_end(job_id, settings, jobs())
        return {"job": job_id, "error": str(exc)}
    except _transient_types() as exc:
        _reset_milvus()
        if self.request.retries < self.max_retries:
            raise self.retry(exc=exc, countdown=_countdown(self.request.retries)) from exc
        jobs().fail(job_id, f"planning failed after {self.max_retries} retries: {type(exc).__name__}: {exc}")
        on_job_end(job_id, settings, jobs())
        raise
    except Exception as exc:  # model mismatch, a bug: the job fails visibly instead of hanging
        log.exception("plan failed", extra={"job": job_id})
        jobs().fail(job_id, f"{type(exc).__name__}: {exc}")
        on_job_end(job_id, settings, jobs())
        return {"job": job_id, "error": str(exc)}


@app.task(name="ingest.embed", bind=True, max_retries=settings.task_max_retries)
def embed(self, spec: BatchSpec) -> dict:
    """Fetch, decode, CLIP-encode and upsert one batch (GPU queue)."""
    try:
        if jobs().status(spec["job"]) == "cancelled":
            return {**failed_batch_result(spec, "cancelled", "job cancelled"), "failures": []}
        return embed_stage(spec, worker_context(), jobs())
    except SoftTimeLimitExceeded:
        return failed_batch_result(spec, "timeout", f"batch exceeded {settings.batch_time_limit}s")
    except _transient_types() as exc:
        _reset_milvus()
        if self.request.retries < self.max_retries:
            raise self.retry(exc=exc, countdown=_countdown(self.request.retries)) from exc
        return failed_batch_result(spec, "batch_error", f"after {self.max_retries} retries: "
                                                        f"{type(exc).__name__}: {exc}")
    except ImgsearchError as exc:  # model mismatch, bad config: permanent
        return failed_batch_result(spec, "batch_error", f"{type(exc).__name__}: {exc}")
    except Exception as exc:  # a bug must not hang the job: dead-letter and log it
        log.exception("embed batch failed", extra={"job": spec["job"], "batch": spec["batch"]})
        return failed_batch_result(spec, "batch_error", f"{type(exc).__name__}: {exc}")


def _text_task(task, stage, name: str, result: dict) -> dict:
    """Run a text stage; transient faults retry with backoff, anything else dead-letters the
    batch's objects with ``<name>_error`` so ``finish`` still counts them."""
    if result.get("job") and jobs().status(result["job"]) == "cancelled":
        return {**result, "stages": [*result.get("stages", []), name]}
    try:
        return stage(result, text_context())
    except SoftTimeLimitExceeded:
        return {**stage_failed(result, "timeout", f"{name} exceeded {settings.batch_time_limit}s"),
                "stages": [*result.get("stages", []), name]}
    except _transient_types() as exc:
        _reset_milvus()
        if task.request.retries < task.max_retries:
            raise task.retry(exc=exc, countdown=_countdown(task.request.retries)) from exc
        message = f"after {task.max_retries} retries: {type(exc).__name__}: {exc}"
    except Exception as exc:  # bad config or a bug: the batch is dead-lettered, the job goes on
        log.exception("text stage failed", extra={"stage": name, "job": result.get("job")})
        message = f"{type(exc).__name__}: {exc}"
    return {**stage_failed(result, f"{name}_error", message), "stages": [*result.get("stages", []), name]}


@app.task(name="ingest.ocr", bind=True, max_retries=settings.task_max_retries)
def ocr(self, result: dict) -> dict:
    """OCR lines of the batch's indexed images into ``texts`` (CPU queue)."""
    return _text_task(self, ocr_stage, "ocr", result)


@app.task(name="ingest.caption", bind=True, max_retries=settings.task_max_retries)
def caption(self, result: dict) -> dict:
    """Captions/tags of the batch's indexed images into ``texts`` (VLM queue)."""
    return _text_task(self, caption_stage, "caption", result)


@app.task(name="ingest.finish", bind=True, max_retries=100)
def finish(self, result: dict) -> dict:
    """Count the batch in its job exactly once, write its dead letters."""
    try:
        done = finish_stage(result, jobs())
        job = jobs().get(result["job"])
        if job.finished and job.indexed:
            ImageStore(settings, alias=job.collection).flush()  # searches then use the index
            TextStore(settings, job.collection).flush()
        on_job_end(job.id, settings, jobs())  # renews a running job's lock; swaps/releases at the end
        return done
    except _transient_types() as exc:
        raise self.retry(exc=exc, countdown=_countdown(min(self.request.retries, 5))) from exc


@app.task(name="ingest.scheduled_reindex")
def scheduled_reindex(source: str) -> dict:
    """Sent by beat (``IMGSEARCH_SCHEDULES``): start a re-index of ``source`` unless one runs."""
    return run_scheduled(source, settings)
