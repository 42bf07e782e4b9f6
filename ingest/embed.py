"""The ``embed`` stage: fetch, decode, CLIP-encode (one forward pass) and upsert a batch.

Split in two halves so a runner can overlap them: :func:`prepare_batch` (I/O and CPU:
manifest diff, concurrent fetch, decode, preprocess, phash) and :func:`write_batch`
(the forward pass and the upsert). :func:`embed_batch` runs both for one batch.
One bad image never fails a batch: it becomes a :class:`Failure` with a reason.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from common.errors import ImageError
from common.ids import image_id
from common.images import DecodedImage, decode_image
from common.models.clip import ClipModel
from common.models.phash import phash_vector
from common.settings import Settings
from common.sources import Source, SourceObject
from common.store import ImageStore, now_ms

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Failure:
    """One object that could not be indexed, and why (a dead-letter entry)."""

    uri: str
    reason: str
    message: str

    def to_dict(self) -> dict:
        return {"uri": self.uri, "reason": self.reason, "message": self.message}


@dataclass
class BatchResult:
    """What happened to every object of a batch: each lands in exactly one list."""

    indexed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    failed: list[Failure] = field(default_factory=list)
    # Seconds spent in the forward pass and in the upsert: the stage logs them so an
    # operator (and bench/ingest.py) can see whether the encoder is kept busy.
    encode_s: float = 0.0
    upsert_s: float = 0.0

    @property
    def total(self) -> int:
        return len(self.indexed) + len(self.unchanged) + len(self.failed)


@dataclass
class PreparedBatch:
    """A batch after the CPU/I-O half: ready for one forward pass."""

    objects: list[SourceObject]
    decoded: list[DecodedImage]
    tensors: Any  # torch.Tensor (N, 3, H, W) or None when nothing is left to encode
    phashes: list[list[float]]
    result: BatchResult
    vectors: Any = None  # (N, d) CLIP vectors once write_batch ran (the caption stage reuses them)


@dataclass
class EmbedContext:
    """Everything the stage needs, built once per process (models load once)."""

    settings: Settings
    source: Source
    model: ClipModel
    store: ImageStore
    pool: ThreadPoolExecutor

    @property
    def model_tag(self) -> str:
        return f"{self.model.spec.name}@{self.model.spec.digest}"


def as_objects(manifest: Sequence[dict | SourceObject]) -> list[SourceObject]:
    return [m if isinstance(m, SourceObject) else SourceObject(m["uri"], m["etag"], int(m["size"]))
            for m in manifest]


def prepare_batch(manifest: Sequence[dict | SourceObject], ctx: EmbedContext) -> PreparedBatch:
    """Diff against the index, fetch the rest concurrently, decode and preprocess."""
    objects = as_objects(manifest)
    result = BatchResult()
    existing = ctx.store.existing(image_id(o.uri) for o in objects)
    todo = []
    for obj in objects:
        row = existing.get(image_id(obj.uri))
        if row is not None and row.get("etag") == obj.etag and row.get("model") == ctx.model_tag:
            result.unchanged.append(obj.uri)
        else:
            todo.append(obj)
    outcomes = list(ctx.pool.map(lambda o: _load_one(o, ctx), todo))
    kept: list[SourceObject] = []
    decoded: list[DecodedImage] = []
    for obj, outcome in zip(todo, outcomes):
        if isinstance(outcome, Failure):
            result.failed.append(outcome)
        else:
            kept.append(obj)
            decoded.append(outcome)
    tensors = ctx.model.preprocess_images([d.image for d in decoded]) if decoded else None
    phashes = [phash_vector(d.image) for d in decoded]
    return PreparedBatch(kept, decoded, tensors, phashes, result)


def _load_one(obj: SourceObject, ctx: EmbedContext) -> DecodedImage | Failure:
    return load_object(obj, ctx.source, ctx.settings)


def load_object(obj: SourceObject, source: Source, limits: Settings) -> DecodedImage | Failure:
    """Fetch and decode one object within the size/pixel limits, or say why not (a Failure)."""
    try:
        if obj.size == 0:
            raise ImageError("empty", "zero-byte file")
        if obj.size > limits.max_image_bytes:
            raise ImageError("too_large", f"{obj.size} bytes exceeds the limit of "
                                          f"{limits.max_image_bytes} bytes")
        try:
            data = source.fetch(obj.uri, limits.max_image_bytes)
        except Exception as exc:  # OSError, botocore errors: all mean "could not read it"
            raise ImageError("fetch_error", f"{type(exc).__name__}: {exc}") from None
        return decode_image(data, limits.max_image_bytes, limits.max_image_pixels)
    except ImageError as exc:
        return Failure(obj.uri, exc.reason, exc.message)


def write_batch(prepared: PreparedBatch, ctx: EmbedContext) -> BatchResult:
    """One forward pass for the whole batch, then one (chunked) upsert."""
    result = prepared.result
    if not prepared.objects:
        return result
    started = time.perf_counter()
    vectors = ctx.model.encode_image_tensors(prepared.tensors)
    encoded = time.perf_counter()
    result.encode_s += encoded - started
    prepared.vectors = vectors
    stamp = now_ms()
    rows = []
    finite = np.isfinite(vectors).all(axis=1)
    for obj, dec, vec, ph, ok in zip(prepared.objects, prepared.decoded, vectors, prepared.phashes, finite):
        if not ok:  # a broken checkpoint or an input it cannot handle: never index garbage
            result.failed.append(Failure(obj.uri, "non_finite_vector", f"{ctx.model_tag} gave this image a "
                                         "vector with NaN or infinite values; not indexed"))
            continue
        rows.append({
            "id": image_id(obj.uri), "uri": obj.uri, "etag": obj.etag,
            "source": ctx.source.root, "width": dec.width, "height": dec.height,
            "bytes": dec.nbytes, "mime": dec.mime, "indexed_at": stamp,
            "model": ctx.model_tag, "clip": vec.tolist(), "phash": ph,
        })
    ctx.store.upsert(rows)
    result.upsert_s += time.perf_counter() - encoded
    result.indexed.extend(row["uri"] for row in rows)
    return result


def embed_batch(manifest: Sequence[dict | SourceObject], ctx: EmbedContext) -> BatchResult:
    """The whole stage for one batch (what a Celery task will call)."""
    return write_batch(prepare_batch(manifest, ctx), ctx)
