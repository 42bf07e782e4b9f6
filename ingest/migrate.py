"""Zero-downtime model migration: build ``<alias>_v<N+1>`` with a new model, then swap.

1. The new model is loaded once where the command runs (a bad name or checkpoint fails
   here, before anything is created) and an empty collection ``<alias>_v<N+1>`` recording
   it is created next to the live one. The alias does not move: searches keep using the
   old collection and its own model.
2. Every row of the live collection is re-encoded from its source object into the new
   collection. The rows are listed and diffed by the same resumable plan steps as a
   source (:mod:`ingest.planning`, rows in primary-key order): in-process (embedded), or
   as a ``migrate`` job whose batches run on the
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
from dataclasses import dataclass, field

from common.errors import CollectionNotFoundError, ImgsearchError
from common.jobs import JobStore
from common.models.clip import load_clip
from common.settings import Settings
from common.sources import SourceObject
from common.store import ImageStore, milvus_client, version_of
from ingest.runlock import RunLock, migrate_lock_key

log = logging.getLogger(__name__)



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


# -- embedded ------------------------------------------------------------------------------------
def run_migration(settings: Settings, model_name: str, pretrained: str, drop_old: bool = False,
                  progress: bool = True) -> MigrationReport:
    """The whole migration in this process (embedded mode): the plan steps of a distributed
    migration, run here; each slice's batches are re-encoded before the next is listed."""
    from ingest.planning import local_job, run_local
    from ingest.runner import run_ingest

    started = time.perf_counter()
    m = prepare(settings, model_name, pretrained, drop_old)
    target_settings = settings.with_overrides(collection=m.new, clip_model=model_name, clip_pretrained=pretrained)
    report = MigrationReport(m.alias, m.old, m.new, m.label)

    def index(specs: list[dict], _cursor=None) -> None:
        by_root: dict[str, list[SourceObject]] = {}
        for spec in specs:
            by_root.setdefault(spec["source"], []).extend(
                SourceObject(x["uri"], x["etag"], x["size"]) for x in spec["manifest"])
        for root, objects in by_root.items():
            summary = run_ingest(root, target_settings, progress=progress, objects=objects)
            report.indexed += summary.indexed
            report.failed += summary.failed
            report.failures += [f.to_dict() for f in summary.failures]

    job = local_job("migrate", f"collection:{m.old}", m.new, options={"from": m.old, "model": [m.model, m.weights]})
    cursor, _ = run_local(job, settings, index)
    report.rows = cursor.listed
    ImageStore(target_settings).flush()
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
    from ingest.dispatch import send_plan

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
    send_plan(job_id, settings)
    return job_id


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
