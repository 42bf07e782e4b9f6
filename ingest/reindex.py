"""Re-index a source: index new and changed objects, remove rows of deleted ones, report.

Built on the ingest stages: the plan steps of :mod:`ingest.planning` list and diff the
source (:mod:`ingest.listing`: URI -> ETag and model tag) slice by slice and sweep the
index for deletions in bounded memory; indexing is the embed stage, deletion goes through
:func:`ingest.removal.remove_images`. Embedded mode runs the same steps here in-process;
distributed mode submits a ``reindex`` job whose ``plan`` steps run on workers, holding
the source's run lock (:mod:`ingest.runlock`) so two runs never overlap.

Counts: ``new + changed + unchanged == listed`` (what the diff found); ``failed`` counts
the new or changed objects that could not be indexed (dead letters, with reasons);
``removed`` the rows deleted because their objects are gone. A run with no changes
loads no model and encodes nothing (``encoded == 0``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from common.settings import Settings
from common.sources import SourceObject, open_source
from ingest.listing import CHANGED, NEW, UNCHANGED, classify, index_model_tag

__all__ = ["CHANGED", "NEW", "UNCHANGED", "ReindexReport", "classify", "index_model_tag", "report_from_job",
           "run_reindex"]


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
    """Embedded re-index of ``location`` into the configured collection: the plan steps of a
    distributed re-index, run here; each slice's new and changed objects are indexed before
    the next slice is listed, so memory stays bounded."""
    from ingest.planning import local_job, run_local
    from ingest.runner import run_ingest

    started = time.perf_counter()
    source = open_source(location, settings, include)
    report = ReindexReport(source.root, settings.collection)

    def index(specs: list[dict], _cursor=None) -> None:  # only now is a model loaded: no changes, no model work
        objects = [SourceObject(m["uri"], m["etag"], int(m["size"])) for spec in specs for m in spec["manifest"]]
        if not objects:
            return
        summary = run_ingest(location, settings, include, progress=progress, objects=objects)
        report.encoded += summary.indexed
        report.failed += summary.failed
        report.failures += [f.to_dict() for f in summary.failures]

    cursor, report.removed = run_local(local_job("reindex", source.root, settings.collection, include),
                                       settings, index)
    report.listed, report.new, report.changed, report.unchanged = (cursor.listed, cursor.new, cursor.changed,
                                                                   cursor.unchanged)
    report.seconds = time.perf_counter() - started
    return report


def report_from_job(job, dead: list[dict]) -> ReindexReport:
    """The same report for a distributed ``reindex`` job."""
    end = job.finished_at or time.time()
    return ReindexReport(job.source, job.collection, listed=job.listed, new=job.new, changed=job.changed,
                         unchanged=job.unchanged, removed=job.removed, failed=job.failed, encoded=job.encoded,
                         seconds=max(end - job.created_at, 0.0), job=job.id, status=job.status, error=job.error,
                         failures=[{k: e[k] for k in ("uri", "reason", "message")} for e in dead])
