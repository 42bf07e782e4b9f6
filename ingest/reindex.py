"""Re-index a source: index new and changed objects, remove rows of deleted ones, report.

Built on the ingest stages: the diff (URI -> ETag and model tag) is the one ``plan`` uses,
indexing is the embed stage, deletion goes through :func:`ingest.removal.remove_images`.
Embedded mode runs it here in-process; distributed mode submits a ``reindex`` job whose
``plan`` task does the diff and the deletion on a worker (:func:`ingest.stages.plan_job`),
holding the source's run lock (:mod:`ingest.runlock`) so two runs never overlap.

Counts: ``new + changed + unchanged == listed`` (what the diff found); ``failed`` counts
the new or changed objects that could not be indexed (dead letters, with reasons);
``removed`` the rows deleted because their objects are gone. A run with no changes
loads no model and encodes nothing (``encoded == 0``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from common.ids import image_id
from common.settings import Settings
from common.sources import SourceObject, open_source
from common.store import ImageStore

NEW, CHANGED, UNCHANGED = "new", "changed", "unchanged"


def classify(row: dict | None, obj: SourceObject, tag: str | None) -> str:
    """new (not indexed), changed (other ETag, or indexed by another model) or unchanged."""
    if row is None:
        return NEW
    if row.get("etag") == obj.etag and row.get("model") == tag:
        return UNCHANGED
    return CHANGED


def index_model_tag(store: ImageStore) -> str | None:
    """The model tag rows of this collection carry, or None when nothing is indexed yet."""
    if not store.exists():
        return None
    spec = store.model_spec()
    return f"{spec.name}@{spec.digest}"


@dataclass
class ReindexReport:
    """What one re-index found and did."""

    source: str
    collection: str
    listed: int = 0
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    removed: int = 0
    failed: int = 0
    encoded: int = 0
    seconds: float = 0.0
    job: str | None = None
    status: str = "done"
    error: str = ""
    failures: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"source": self.source, "collection": self.collection, "job": self.job, "status": self.status,
                "listed": self.listed, "new": self.new, "changed": self.changed, "unchanged": self.unchanged,
                "removed": self.removed, "failed": self.failed, "encoded": self.encoded,
                "seconds": round(self.seconds, 3), "error": self.error or None, "failures": self.failures}

    def render(self, max_failures: int = 20) -> str:
        head = f"job {self.job} [{self.status}] " if self.job else ""
        lines = [f"{head}reindex {self.source} -> collection {self.collection!r}: {self.listed} listed: "
                 f"{self.new} new, {self.changed} changed, {self.unchanged} unchanged; {self.removed} removed, "
                 f"{self.failed} failed  [{self.seconds:.1f}s, {self.encoded} images encoded]"]
        if self.error:
            lines.append(f"error: {self.error}")
        for f in self.failures[:max_failures]:
            lines.append(f"  {f['reason']:<16} {f['uri']}  ({f['message']})")
        if len(self.failures) > max_failures:
            lines.append(f"  ... {len(self.failures) - max_failures} more")
        return "\n".join(lines)


def run_reindex(location: str, settings: Settings, include: tuple[str, ...] = (),
                progress: bool = True) -> ReindexReport:
    """Embedded re-index of ``location`` into the configured collection."""
    from ingest.removal import remove_images, removed_ids
    from ingest.runner import run_ingest
    from ingest.stages import LIST_CHUNK, chunks

    started = time.perf_counter()
    source = open_source(location, settings, include)
    store = ImageStore(settings)
    tag = index_model_tag(store)
    report = ReindexReport(source.root, settings.collection)
    todo: list[SourceObject] = []
    listed_ids: set[int] = set()
    for page in chunks(source.list(), LIST_CHUNK):
        ids = [image_id(o.uri) for o in page]
        listed_ids.update(ids)
        existing = store.existing(ids) if tag else {}
        for obj, oid in zip(page, ids):
            state = classify(existing.get(oid), obj, tag)
            setattr(report, state, getattr(report, state) + 1)
            if state != UNCHANGED:
                todo.append(obj)
        report.listed += len(page)
    if todo:  # only now is a model loaded: a run without changes does no model work
        summary = run_ingest(location, settings, include, progress=progress, objects=todo)
        report.encoded = summary.indexed
        report.failed = summary.failed
        report.failures = [f.to_dict() for f in summary.failures]
    report.removed = remove_images(settings, removed_ids(store, source.root, include, listed_ids))
    if report.removed:
        store.flush()
    report.seconds = time.perf_counter() - started
    return report


def report_from_job(job, dead: list[dict]) -> ReindexReport:
    """The same report for a distributed ``reindex`` job."""
    end = job.finished_at or time.time()
    return ReindexReport(job.source, job.collection, listed=job.listed, new=job.new, changed=job.changed,
                         unchanged=job.unchanged, removed=job.removed, failed=job.failed, encoded=job.encoded,
                         seconds=max(end - job.created_at, 0.0), job=job.id, status=job.status, error=job.error,
                         failures=[{k: e[k] for k in ("uri", "reason", "message")} for e in dead])
