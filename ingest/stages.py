"""Distributed ingest stages as plain functions: embed, ocr, caption, finish (plan steps:
:mod:`ingest.planning`).

Celery tasks (``ingest/tasks.py``) are thin wrappers over these, so each stage is testable
without Celery and the embedded runner and the workers share the same work code
(:mod:`ingest.embed`). Stages pass *batch specs* — job id, epoch, batch number, source root,
collection and a manifest of ``{uri, etag, size}`` — never pixels or vectors.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from common.jobs import JobStore
from common.models.clip import ClipModel, load_clip
from common.settings import Settings
from common.sources import Source, open_source
from common.store import ImageStore
from ingest.embed import BatchResult, EmbedContext, prepare_batch, write_batch
from ingest.planning import BatchSpec
from ingest.retry import RetryingSource

log = logging.getLogger(__name__)

# -- plan: see ingest/planning.py (resumable steps over ingest/listing.py) ----------------------


# -- embed -----------------------------------------------------------------------------------
@dataclass
class WorkerContext:
    """Per-process state of an embed worker, built once after fork (models load once)."""

    settings: Settings
    model: ClipModel
    fetch_pool: ThreadPoolExecutor
    ahead_pool: ThreadPoolExecutor
    stores: dict[str, ImageStore] = field(default_factory=dict)
    sources: dict[str, Source] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def build(cls, settings: Settings) -> "WorkerContext":
        model = load_clip(settings.clip_model, settings.clip_pretrained, settings)
        return cls(settings, model, ThreadPoolExecutor(settings.fetch_workers, thread_name_prefix="fetch"),
                   ThreadPoolExecutor(1, thread_name_prefix="prepare"))

    def embed_context(self, source_root: str, collection: str, model: ClipModel | None = None) -> EmbedContext:
        """The stage context for one (source, collection); the collection is checked once.

        ``model`` (default: this worker's configured model) is another one only for a
        migration, whose batches name the new collection's model."""
        model = model or self.model
        with self.lock:
            if collection not in self.stores:
                store = ImageStore(self.settings.with_overrides(collection=collection))
                _ensure(store, model)
                self.stores[collection] = store
            if source_root not in self.sources:
                self.sources[source_root] = RetryingSource(open_source(source_root, self.settings))
        return EmbedContext(self.settings, self.sources[source_root], model, self.stores[collection],
                            self.fetch_pool)

    def model_for(self, spec: BatchSpec) -> ClipModel | None:
        """The model a batch names (a migration's ``[name, weights]``), loaded once per process."""
        if not spec.get("model"):
            return None
        name, weights = spec["model"]
        return load_clip(name, weights, self.settings)


def _ensure(store: ImageStore, model: ClipModel) -> None:
    """Create the collection if needed; a concurrent creator elsewhere is fine."""
    try:
        store.ensure(model.spec)
    except Exception:
        if not store.exists():
            raise
        store.ensure(model.spec)  # someone else created it meanwhile: check it matches


def embed_stage(spec: BatchSpec, ctx: WorkerContext, jobs: JobStore) -> dict:
    """Fetch, decode, encode and upsert one task's manifest, batch_size images per forward pass.

    Fetch/decode of the next encoder batch runs in a helper thread while the current one is
    encoded. Rows that are already indexed with the same etag and model (a redelivered
    batch) are not encoded again; they count as indexed because the plan found them to do.
    """
    ectx = ctx.embed_context(spec["source"], spec["collection"], ctx.model_for(spec))

    size = ctx.settings.batch_size
    manifest = spec["manifest"]
    chunks = [manifest[i:i + size] for i in range(0, len(manifest), size)]
    total = BatchResult()
    encoded = 0
    started = time.perf_counter()
    waited = 0.0
    pending = ctx.ahead_pool.submit(prepare_batch, chunks[0], ectx) if chunks else None
    for n in range(len(chunks)):
        wait_from = time.perf_counter()
        prepared = pending.result()
        waited += time.perf_counter() - wait_from
        if n + 1 < len(chunks):
            pending = ctx.ahead_pool.submit(prepare_batch, chunks[n + 1], ectx)
        encoded += len(prepared.objects)
        result = write_batch(prepared, ectx)
        total.indexed += result.indexed
        total.unchanged += result.unchanged
        total.failed += result.failed
        total.encode_s += result.encode_s
        total.upsert_s += result.upsert_s
    jobs.add_encoded(spec["job"], encoded)
    log.info("embed timing", extra={
        "job": spec["job"], "batch": spec["batch"], "images": encoded,
        "task_s": round(time.perf_counter() - started, 4), "prepare_wait_s": round(waited, 4),
        "encode_s": round(total.encode_s, 4), "upsert_s": round(total.upsert_s, 4)})
    by_uri = {m["uri"]: m for m in manifest}
    failures = [{**f.to_dict(), "etag": by_uri[f.uri]["etag"], "size": by_uri[f.uri]["size"],
                 "batch": spec["batch"]} for f in total.failed]
    done = total.indexed + total.unchanged
    done_set = set(done)
    return {**{k: v for k, v in spec.items() if k != "manifest"},
            "indexed": len(done), "recovered": done if spec.get("retry") else [],
            "failures": failures, "encoded": encoded, "stages": ["embed"],
            # what the text stages work on: the objects now in the index (ids, never pixels)
            "manifest": [m for m in manifest if m["uri"] in done_set]}


def failed_batch_result(spec: BatchSpec, reason: str, message: str) -> dict:
    """Every object of a batch dead-lettered at once (the batch itself failed for good)."""
    failures = [{"uri": m["uri"], "reason": reason, "message": message, "etag": m["etag"], "size": m["size"],
                 "batch": spec["batch"]} for m in spec["manifest"]]
    return {**{k: v for k, v in spec.items() if k != "manifest"}, "indexed": 0, "recovered": [],
            "failures": failures, "encoded": 0, "stages": ["embed"], "manifest": []}


# -- ocr, caption: see ingest/text_stages.py ----------------------------------------------------


# -- finish ----------------------------------------------------------------------------------
def finish_stage(result: dict, jobs: JobStore) -> dict:
    """Count the batch in its job exactly once and write its dead letters."""
    counted = jobs.finish_batch(result["job"], result["epoch"], result["batch"], indexed=result["indexed"],
                                failures=result["failures"], retry=bool(result.get("retry")),
                                recovered=result.get("recovered", []))
    return {"job": result["job"], "batch": result["batch"], "counted": counted,
            "stages": [*result.get("stages", []), "finish"]}
