"""Zero-downtime model migration: build ``<alias>_v<N+1>`` with a new model, then swap.

1. The new model is loaded once where the command runs (a bad name or checkpoint fails
   here, before anything is created) and an empty collection ``<alias>_v<N+1>`` recording
   it is created next to the live one. The alias does not move: searches keep using the
   old collection and its own model.
2. Every row of the live collection is re-encoded from its source object into the new
   collection: in-process (embedded), or as a ``migrate`` job whose batches run on the
   embed workers with the new model (each batch names it), tracked like any job
   (``imgsearch jobs status``; failures are dead letters, retryable).
3. When the job is done with no failures, the alias is moved in ONE ``alter_alias`` call:
   every search runs wholly on the old or wholly on the new collection. A job with failures
   does not swap (the new collection would miss images); ``imgsearch dead-letters retry``
   re-runs them and the swap happens when the job completes cleanly.
4. The old collection stays (roll back by pointing the alias back) until ``--drop-old``.

Objects added to the source while a migration runs are indexed into the old collection by
concurrent ingests; run ``imgsearch reindex SOURCE`` after the swap to catch up.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from common.errors import CollectionNotFoundError, ImgsearchError
from common.jobs import JobStore
from common.models.clip import load_clip
from common.settings import Settings
from common.sources import SourceObject
from common.store import ImageStore, milvus_client, version_of
from ingest.runlock import RunLock, lock_of, migrate_lock_key

log = logging.getLogger(__name__)

ROW_FIELDS = ["id", "uri", "etag", "bytes", "source"]
EMBEDDED_CHUNK = 4096  # objects per in-process indexing call (memory stays bounded)


@dataclass
class Migration:
    """What a migration is about: the alias, the live and the new collection, the model."""

    alias: str
    old: str
    new: str
    model: str
    weights: str
    label: str
    drop_old: bool = False


@dataclass
class MigrationReport:
    alias: str
    old: str
    new: str
    model: str
    rows: int = 0
    indexed: int = 0
    failed: int = 0
    swapped: bool = False
    dropped: bool = False
    note: str = ""
    seconds: float = 0.0
    job: str | None = None
    failures: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    def render(self) -> str:
        head = f"job {self.job}: " if self.job else ""
        state = (f"alias {self.alias!r} now -> {self.new}" if self.swapped
                 else f"alias {self.alias!r} still -> {self.old} (not swapped)")
        lines = [f"{head}migrate {self.old} -> {self.new} with {self.model}: {self.rows} rows, {self.indexed} "
                 f"indexed, {self.failed} failed [{self.seconds:.1f}s]; {state}"
                 + (f"; {self.old} dropped" if self.dropped else f"; {self.old} kept (drop it with --drop-old)"
                    if self.swapped else "")]
        if self.note:
            lines.append(self.note)
        for f in self.failures[:20]:
            lines.append(f"  {f['reason']:<16} {f['uri']}  ({f['message']})")
        return "\n".join(lines)


def prepare(settings: Settings, model_name: str, pretrained: str, drop_old: bool = False) -> Migration:
    """Load the new model, create the next version of the alias for it (alias untouched)."""
    store = ImageStore(settings)
    old = store.physical_name()
    if old is None:
        raise CollectionNotFoundError(f"nothing to migrate: collection {store.alias!r} does not exist yet "
                                      "(ingest first, or just set IMGSEARCH_CLIP_MODEL for a new index)")
    model = load_clip(model_name, pretrained, settings)
    recorded = store.model_spec()
    if (recorded.name, recorded.digest) == (model.spec.name, model.spec.digest):
        raise ImgsearchError(f"collection {store.alias!r} ({old}) is already built with {recorded.label()}")
    new = store.create_version(model.spec)
    log.info("migration target created", extra={"alias": store.alias, "old": old, "new": new,
                                                 "model": model.spec.label()})
    return Migration(store.alias, old, new, model_name, pretrained, model.spec.label(), drop_old)


def manifests(settings: Settings, migration_old: str, target: ImageStore, task_size: int, tag: str,
              counts: dict[str, int]) -> Iterator[tuple[str, list[dict]]]:
    """(source root, manifest) batches of the live collection's rows, streamed page by page
    (a collection may hold millions). ``counts`` gets ``rows`` and ``done``: rows already in
    the target with the same etag and model (a restarted plan) are skipped and counted."""
    from ingest.stages import LIST_CHUNK, chunks

    old = ImageStore(settings, alias=migration_old)
    pending: dict[str, list[dict]] = defaultdict(list)
    counts.update(rows=0, done=0)
    for page in chunks(old.iter_rows(ROW_FIELDS), LIST_CHUNK):
        existing = target.existing(int(r["id"]) for r in page)
        counts["rows"] += len(page)
        for r in page:
            got = existing.get(int(r["id"]))
            if got is not None and got.get("etag") == r["etag"] and got.get("model") == tag:
                counts["done"] += 1
                continue
            items = pending[r["source"]]
            items.append({"uri": r["uri"], "etag": r["etag"], "size": int(r["bytes"])})
            if len(items) >= task_size:
                yield r["source"], pending.pop(r["source"])
    for root, items in sorted(pending.items()):
        yield root, items


# -- embedded ------------------------------------------------------------------------------------
def run_migration(settings: Settings, model_name: str, pretrained: str, drop_old: bool = False,
                  progress: bool = True) -> MigrationReport:
    """The whole migration in this process (embedded mode)."""
    from ingest.runner import run_ingest

    started = time.perf_counter()
    m = prepare(settings, model_name, pretrained, drop_old)
    target_settings = settings.with_overrides(collection=m.new, clip_model=model_name, clip_pretrained=pretrained)
    target = ImageStore(target_settings)
    spec = target.model_spec()
    counts: dict[str, int] = {}
    report = MigrationReport(m.alias, m.old, m.new, m.label)
    for root, manifest in manifests(settings, m.old, target, EMBEDDED_CHUNK, f"{spec.name}@{spec.digest}", counts):
        summary = run_ingest(root, target_settings, progress=progress,
                             objects=[SourceObject(x["uri"], x["etag"], x["size"]) for x in manifest])
        report.indexed += summary.indexed
        report.failed += summary.failed
        report.failures += [f.to_dict() for f in summary.failures]
    report.rows = counts["rows"]
    target.flush()
    if report.failed:
        report.note = (f"not swapped: {report.failed} image(s) could not be re-encoded; {m.new} is kept. "
                       f"Fix them and re-run, or point the alias yourself.")
    else:
        swap(settings, m)
        report.swapped = True
        if drop_old:
            report.dropped = drop_retired(settings, m.old)
    report.seconds = time.perf_counter() - started
    return report


# -- distributed ---------------------------------------------------------------------------------
def submit_migration(settings: Settings, model_name: str, pretrained: str, drop_old: bool = False) -> str:
    """Take the alias' migration lock, prepare, record a ``migrate`` job, enqueue its plan."""
    from common.jobs import new_job_id
    from ingest.tasks import plan

    jobs = JobStore.from_url(settings.redis_url)
    job_id = new_job_id()
    lock = RunLock(jobs, migrate_lock_key(settings.collection), settings.schedule_lock_ttl)
    lock.acquire(job_id)
    try:
        m = prepare(settings, model_name, pretrained, drop_old)
    except BaseException:
        lock.release(job_id)
        raise
    jobs.create(f"collection:{m.old}", m.new, kind="migrate", job_id=job_id,
                options={"alias": m.alias, "from": m.old, "model": [m.model, m.weights], "label": m.label,
                         "drop_old": drop_old, "lock": lock.key})
    plan.apply_async(args=[job_id])
    return job_id


def plan_migration(job_id: str, settings: Settings, jobs: JobStore, enqueue: Callable[[dict], None]) -> dict:
    """The ``plan`` of a migrate job: shard the live collection's rows into batches that
    name the new model; counters as for an ingest (listed = rows of the old collection)."""
    from ingest.stages import batch_spec

    job = jobs.get(job_id)
    epoch = jobs.begin_plan(job_id)
    target = ImageStore(settings.with_overrides(collection=job.collection))
    spec = target.model_spec()
    task_size = settings.batch_size * settings.batches_per_task
    lock = lock_of(job, jobs, settings.schedule_lock_ttl)
    counts: dict[str, int] = {}
    batches = 0
    for root, manifest in manifests(settings, job.options["from"], target, task_size,
                                    f"{spec.name}@{spec.digest}", counts):
        if jobs.status(job_id) == "cancelled":
            return {"job": job_id, "cancelled": True}
        spec_n = batch_spec(job_id, epoch, batches, root, job.collection, manifest)
        spec_n["model"] = job.options["model"]
        enqueue(spec_n)
        batches += 1
        jobs.plan_progress(job_id, epoch, counts["rows"], counts["done"], batches)
        if lock is not None:
            lock.renew(job_id)
    jobs.planned(job_id, epoch, counts["rows"], counts["done"], batches)
    return {"job": job_id, "epoch": epoch, "listed": counts["rows"], "unchanged": counts["done"], "batches": batches}


def finish_migration(job, settings: Settings, jobs: JobStore) -> None:
    """Swap the alias once the job is done without failures (idempotent: runs per finish)."""
    if job.kind != "migrate" or job.status != "done" or job.options.get("swapped"):
        return
    m = Migration(job.options["alias"], job.options["from"], job.collection, *job.options["model"],
                  job.options.get("label", ""), bool(job.options.get("drop_old")))
    if job.failed:
        jobs.set_options(job.id, swap_blocked=f"{job.failed} image(s) failed: alias not swapped; "
                                              f"`imgsearch dead-letters retry {job.id}` re-runs them")
        return
    ImageStore(settings.with_overrides(collection=m.new)).flush()
    swap(settings, m)
    jobs.set_options(job.id, swapped=time.time(), swap_blocked="")
    if m.drop_old:
        jobs.set_options(job.id, dropped=drop_retired(settings, m.old))


def swap(settings: Settings, m: Migration) -> None:
    """Load the new collection, then move the alias to it atomically."""
    target = ImageStore(settings.with_overrides(collection=m.new))
    target.physical_name()  # loads it, so the first search after the swap does not wait
    previous = ImageStore(settings.with_overrides(collection=m.alias)).point_alias(m.new)
    log.warning("alias swapped", extra={"alias": m.alias, "from": previous, "to": m.new})


def drop_retired(settings: Settings, name: str) -> bool:
    """Drop the collection a swap just retired, once query workers have moved off it: they
    look at the alias every ``query_alias_check_ms``, and a batch begun before may still be
    searching it."""
    time.sleep(settings.query_alias_check_ms / 1000 + 1.0)
    return drop_collection(settings, name)


def drop_collection(settings: Settings, name: str) -> bool:
    """Drop a retired version (never one an alias points to)."""
    client = milvus_client(settings)
    if name not in client.list_collections():
        return False
    if client.list_aliases(collection_name=name).get("aliases"):
        raise ImgsearchError(f"refusing to drop {name}: an alias still points to it")
    client.drop_collection(name)
    log.warning("dropped collection", extra={"collection": name})
    return True


def drop_old_versions(settings: Settings) -> list[str]:
    """Drop every version of the alias except the live one (``migrate --drop-old`` alone)."""
    if not settings.embedded:
        jobs = JobStore.from_url(settings.redis_url)
        holder = RunLock(jobs, migrate_lock_key(settings.collection), settings.schedule_lock_ttl).holder()
        if holder and not jobs.get(holder).finished:
            raise ImgsearchError(f"migration job {holder} is still running for {settings.collection!r}; "
                                 "drop old versions after it ends")
    live = ImageStore(settings).physical_name()
    client = milvus_client(settings)
    names = [n for n in client.list_collections() if version_of(settings.collection, n) is not None and n != live]
    return [n for n in sorted(names) if drop_collection(settings, n)]
