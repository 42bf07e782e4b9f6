"""Planning in resumable steps: the ONE planner of ingest, re-index and migration jobs,
embedded or on Celery workers.

A plan *step* lists a bounded slice (``IMGSEARCH_PLAN_SLICE_OBJECTS`` objects or
``IMGSEARCH_PLAN_SLICE_SECONDS``, whichever comes first) after the job's checkpoint,
diffs it against the index (:mod:`ingest.listing`), enqueues that slice's batches and
checkpoints in the job: the listing position (last URI, or last id for a migration), the
counts and the next batch number. Then the caller enqueues the next step. So:

- no step runs long, whatever the source's size: a 100 M object listing is thousands of
  short tasks, none near the task time limit;
- a planner killed at any point resumes from its last checkpoint: the redelivered step
  lists the same slice again and numbers its batches from the same checkpoint, so a
  slice planned twice enqueues the same batch ids and ``finish`` counts each once;
- the checkpoint is committed with a compare-and-set on the step number, so a duplicate
  step (a redelivery racing the original) cannot count a slice twice;
- the job shows planning progress (listed so far, objects/s) while it lists.

The last step (nothing left to list) finds a re-index's deletions by sweeping the index
under the source against the job's listed-id set (bounded memory, see ``listing``) and
marks the job planned.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace

from common.jobs import Job, JobStore
from common.settings import Settings
from common.sources import open_source
from common.store import ImageStore
from ingest.listing import (
    LIST_CHUNK,
    UNCHANGED,
    DiskListedIds,
    Listed,
    ListedIds,
    RedisListedIds,
    collection_pages,
    diff_page,
    index_model_tag,
    removed_pages,
    source_pages,
)
from ingest.removal import remove_images
from ingest.runlock import lock_of

log = logging.getLogger(__name__)

BatchSpec = dict  # {"job", "epoch", "batch", "source", "collection", "retry", "manifest": [...]}


def batch_spec(job_id: str, epoch: int, batch_no: int, source: str, collection: str,
               manifest: list[dict], retry: bool = False) -> BatchSpec:
    return {"job": job_id, "epoch": epoch, "batch": batch_no, "source": source, "collection": collection,
            "retry": retry, "manifest": manifest}


@dataclass
class Cursor:
    """A plan's checkpoint: where the next step lists from and what was found so far."""

    step: int = 0
    after: str = ""  # the last listed position (a URI; a row id for a migration)
    listed: int = 0
    unchanged: int = 0
    new: int = 0
    changed: int = 0
    batches: int = 0  # batches enqueued = the next batch number
    done: bool = False  # nothing left to list
    next_enqueued: bool = False  # the step named by ``step`` was enqueued
    started_at: float = field(default_factory=time.time)
    updated_at: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Cursor":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    @property
    def rate(self) -> float:
        """Objects listed per second so far."""
        seconds = self.updated_at - self.started_at
        return self.listed / seconds if seconds > 0 else 0.0


# -- where the checkpoint lives ----------------------------------------------------------------
class PlanState:
    """A plan's checkpoint store: a Redis job (distributed) or memory (embedded)."""

    def start(self) -> tuple[int, Cursor]:
        """(epoch, cursor); the first call of a job starts it (epoch, zeroed counts)."""
        raise NotImplementedError

    def commit(self, epoch: int, expected_step: int, cursor: Cursor) -> bool:
        """Store ``cursor`` only if the stored one is still at ``expected_step``."""
        raise NotImplementedError

    def cancelled(self) -> bool:
        return False

    def renew(self) -> None:
        """Keep the job's run lock while it plans."""

    def listed_ids(self) -> ListedIds:
        raise NotImplementedError

    def planned(self) -> bool:
        raise NotImplementedError

    def finish(self, epoch: int, cursor: Cursor, removed: int) -> None:
        raise NotImplementedError


class JobPlanState(PlanState):
    def __init__(self, jobs: JobStore, job: Job, settings: Settings):
        self.jobs, self.job = jobs, job
        self.lock = lock_of(job, jobs, settings.schedule_lock_ttl)

    def start(self) -> tuple[int, Cursor]:
        epoch, raw = self.jobs.start_plan(self.job.id, Cursor().to_dict())
        return epoch, Cursor.from_dict(raw)

    def commit(self, epoch: int, expected_step: int, cursor: Cursor) -> bool:
        return self.jobs.commit_plan(self.job.id, epoch, expected_step, cursor.to_dict(),
                                     listed=cursor.listed, unchanged=cursor.unchanged, new=cursor.new,
                                     changed=cursor.changed, batches_enqueued=cursor.batches)

    def cancelled(self) -> bool:
        return self.jobs.status(self.job.id) == "cancelled"

    def renew(self) -> None:
        if self.lock is not None:
            self.lock.renew(self.job.id)

    def listed_ids(self) -> ListedIds:
        return RedisListedIds(self.jobs.r, self.jobs.key(self.job.id, "listed"))

    def planned(self) -> bool:
        return self.jobs.get(self.job.id).planned

    def finish(self, epoch: int, cursor: Cursor, removed: int) -> None:
        self.jobs.set_fields(self.job.id, epoch, removed=removed, new=cursor.new, changed=cursor.changed)
        self.jobs.planned(self.job.id, epoch, cursor.listed, cursor.unchanged, cursor.batches)
        self.listed_ids().drop()  # only after `planned`: a sweep redone without it would remove all


class LocalPlanState(PlanState):
    """Embedded runs: the checkpoint in memory, the listed ids in a file under data_dir."""

    def __init__(self, settings: Settings):
        self.cursor: Cursor | None = None
        self.removed = 0
        self.done = False
        self._path = settings.data_dir / "plans" / f"{uuid.uuid4().hex}.sqlite"
        self._ids: DiskListedIds | None = None  # only a re-index needs one

    def start(self) -> tuple[int, Cursor]:
        if self.cursor is None:
            self.cursor = Cursor()
        return 1, self.cursor

    def commit(self, epoch: int, expected_step: int, cursor: Cursor) -> bool:
        assert self.cursor is not None and self.cursor.step == expected_step
        self.cursor = cursor
        return True

    def listed_ids(self) -> ListedIds:
        if self._ids is None:
            self._ids = DiskListedIds(self._path)
        return self._ids

    def planned(self) -> bool:
        return self.done

    def finish(self, epoch: int, cursor: Cursor, removed: int) -> None:
        self.removed, self.done = removed, True
        if self._ids is not None:
            self._ids.drop()


# -- one step ------------------------------------------------------------------------------------
@dataclass
class StepResult:
    job: str
    step: int
    outcome: str  # listed | done | stale | cancelled
    epoch: int
    cursor: Cursor
    next_step: int | None = None  # the step the caller must enqueue now (None: none)
    removed: int = 0

    def to_dict(self) -> dict:
        return {"job": self.job, "step": self.step, "outcome": self.outcome, "epoch": self.epoch,
                "next_step": self.next_step, "removed": self.removed, **self.cursor.to_dict()}


def plan_step(job: Job, step: int, settings: Settings, state: PlanState,
              enqueue: Callable[[BatchSpec], None]) -> StepResult:
    """Plan one slice of ``job`` (see the module doc); the caller enqueues ``next_step``."""
    epoch, cur = state.start()
    if cur.step > step:  # this step's slice is checkpointed already: a redelivery or a duplicate
        if cur.done:
            return _finalize(job, settings, state, epoch, cur, step)
        again = None if cur.next_enqueued else cur.step  # its successor may have been lost
        return StepResult(job.id, step, "stale", epoch, cur, again)
    if cur.step < step:
        return StepResult(job.id, step, "stale", epoch, cur)
    if cur.done:
        return _finalize(job, settings, state, epoch, cur, step)
    if state.cancelled():
        return StepResult(job.id, step, "cancelled", epoch, cur)
    new = _list_slice(job, settings, state, epoch, cur, enqueue)
    if not state.commit(epoch, step, new):
        return StepResult(job.id, step, "stale", epoch, cur)
    log.info("plan step", extra={"job": job.id, "step": step, "listed": new.listed, "batches": new.batches,
                                 "rate": round(new.rate, 1)})
    if new.done:
        return _finalize(job, settings, state, epoch, new, step)
    return StepResult(job.id, step, "listed", epoch, new, new.step)


def _target(job: Job, settings: Settings) -> ImageStore:
    return ImageStore(settings.with_overrides(collection=job.collection))


def _pages(job: Job, settings: Settings, after: str) -> Iterator[list[Listed]]:
    size = max(1, min(LIST_CHUNK, settings.plan_slice_objects))
    if job.kind == "migrate":  # the live collection's rows, re-encoded into job.collection
        return collection_pages(ImageStore(settings, alias=job.options["from"]), after, size)
    return source_pages(open_source(job.source, settings, tuple(job.include)), after, size)


def _list_slice(job: Job, settings: Settings, state: PlanState, epoch: int, cur: Cursor,
                enqueue: Callable[[BatchSpec], None]) -> Cursor:
    store = _target(job, settings)
    tag = index_model_tag(store)
    ids = state.listed_ids() if job.kind == "reindex" else None
    new = replace(cur, step=cur.step + 1, next_enqueued=False, done=True)
    todo: list[Listed] = []
    # far below the task time limit, whatever the setting says
    deadline = time.monotonic() + min(settings.plan_slice_seconds, settings.batch_time_limit / 4)
    pages = _pages(job, settings, cur.after)
    count = 0
    try:
        for page in pages:
            page = diff_page(store, tag, page)
            for x in page:
                if x.state == UNCHANGED:
                    new.unchanged += 1
                else:
                    setattr(new, x.state, getattr(new, x.state) + 1)
                    todo.append(x)
            if ids is not None:
                ids.add([x.id for x in page])
            new.after = page[-1].position
            new.listed += len(page)
            count += len(page)
            state.renew()
            if count >= settings.plan_slice_objects or time.monotonic() > deadline:
                new.done = False
                break
    finally:
        close = getattr(pages, "close", None)
        if close is not None:
            close()
    new.batches = _enqueue_slice(job, epoch, cur.batches, todo, settings.batch_size * settings.batches_per_task,
                                 enqueue)
    new.updated_at = time.time()
    return new


def _enqueue_slice(job: Job, epoch: int, first: int, todo: list[Listed], task_size: int,
                   enqueue: Callable[[BatchSpec], None]) -> int:
    """The slice's batches, numbered from ``first`` in listing order (per source root):
    the same slice always gives the same batch ids. Returns the next batch number."""
    by_root: dict[str, list[dict]] = {}
    for x in todo:
        by_root.setdefault(x.root, []).append(x.obj.to_dict())
    n = first
    for root in sorted(by_root):
        items = by_root[root]
        for start in range(0, len(items), task_size):
            spec = batch_spec(job.id, epoch, n, root, job.collection, items[start:start + task_size])
            if job.kind == "migrate":
                spec["model"] = job.options["model"]
            enqueue(spec)
            n += 1
    return n


def _finalize(job: Job, settings: Settings, state: PlanState, epoch: int, cur: Cursor, step: int) -> StepResult:
    """Nothing left to list: a re-index removes the rows of unlisted objects; the job is
    then planned (idempotent: a redelivered last step finds it planned and stops)."""
    if state.planned():
        return StepResult(job.id, step, "done", epoch, cur)
    removed = 0
    if job.kind == "reindex":
        target_settings = settings.with_overrides(collection=job.collection)
        store = ImageStore(target_settings)
        for gone in removed_pages(store, job.source, tuple(job.include),
                                  state.listed_ids()):
            removed += remove_images(target_settings, gone)
            state.renew()
        if removed:
            store.flush()
    state.finish(epoch, cur, removed)
    return StepResult(job.id, step, "done", epoch, cur, None, removed)


def run_local(job: Job, settings: Settings,
              on_slice: Callable[[list[BatchSpec], Cursor], None]) -> tuple[Cursor, int]:
    """Every step of ``job`` in this process (embedded mode); ``on_slice`` gets each
    slice's batches (and the checkpoint after it) before the next slice is listed.
    Returns (cursor, removed)."""
    state = LocalPlanState(settings)
    step = 0
    while True:
        specs: list[BatchSpec] = []
        result = plan_step(job, step, settings, state, specs.append)
        on_slice(specs, result.cursor)
        if result.next_step is None:
            return result.cursor, result.removed
        step = result.next_step


def local_job(kind: str, source: str, collection: str, include: tuple[str, ...] = (),
              options: dict | None = None) -> Job:
    """An in-memory job for :func:`run_local` (embedded runs keep no job in Redis)."""
    return Job(id="local-" + uuid.uuid4().hex[:8], source=source, collection=collection, status="running",
               created_at=time.time(), include=list(include), kind=kind, options=options or {})
