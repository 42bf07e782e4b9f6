"""The ``ocr`` and ``caption`` stages: text found in and said about images, into ``texts``.

Both are plain functions over decoded images (:func:`ocr_images`, :func:`caption_images`)
that the embedded runner calls with the pixels it already holds, plus batch-spec wrappers
(:func:`ocr_stage`, :func:`caption_stage`) for the distributed chain, which re-fetch the
batch's objects (stages pass manifests, never pixels). Writes replace an image's texts of
that stage's kinds (delete, then upsert by position-derived ids), so re-running a stage
changes nothing that is already right.

One bad image never fails the batch: it is moved from ``indexed`` to the dead letters
with reason ``ocr_error`` / ``caption_error`` (or the fetch/decode reason). Its CLIP vector
stays searchable; ``dead-letters retry`` runs the chain for it again. Faults of Milvus or
the caption endpoint propagate, so the Celery task retries the stage with backoff.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from common.ids import image_id
from common.images import DecodedImage
from common.models.caption import CaptionError, Describer, load_captioner
from common.models.ocr import OcrReader, load_ocr
from common.models.text import TextEncoder, load_text_encoder
from common.settings import Settings
from common.sources import Source, open_source
from common.store import ImageStore
from common.texts import TextItem, TextStore
from ingest.embed import Failure, as_objects, load_object
from ingest.retry import RetryingSource

log = logging.getLogger(__name__)

OCR_KINDS = ("ocr",)
CAPTION_KINDS = ("caption", "tag")


@dataclass
class TextContext:
    """Models and stores of the text stages, loaded lazily once per process."""

    settings: Settings
    pool: ThreadPoolExecutor | None = None
    _encoder: TextEncoder | None = None
    _stores: dict[str, TextStore] = field(default_factory=dict)
    _images: dict[str, ImageStore] = field(default_factory=dict)
    _sources: dict[str, Source] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock)

    @property
    def encoder(self) -> TextEncoder:
        with self.lock:
            if self._encoder is None:
                self._encoder = load_text_encoder(self.settings)
            return self._encoder

    def ocr(self) -> OcrReader:
        return load_ocr(self.settings)

    def captioner(self, collection: str) -> Describer | None:
        clip = None
        if self.settings.caption_backend == "clip":
            from common.models.clip import load_clip

            spec = self.images(collection).model_spec()  # tags use the collection's own model
            clip = load_clip(spec.name, spec.weights, self.settings)
        return load_captioner(self.settings, clip)

    def texts(self, collection: str) -> TextStore:
        with self.lock:
            if collection not in self._stores:
                store = TextStore(self.settings, collection)
                store.ensure(self.encoder.label, self.encoder.dim)
                self._stores[collection] = store
            return self._stores[collection]

    def images(self, collection: str) -> ImageStore:
        with self.lock:
            if collection not in self._images:
                self._images[collection] = ImageStore(self.settings.with_overrides(collection=collection))
            return self._images[collection]

    def source(self, root: str) -> Source:
        with self.lock:
            if root not in self._sources:
                self._sources[root] = RetryingSource(open_source(root, self.settings))
            return self._sources[root]

    def reset(self) -> None:
        """Forget Milvus-backed stores (after a connection fault, the retry reconnects)."""
        with self.lock:
            self._stores.clear()
            self._images.clear()


@dataclass
class StageOutcome:
    """URIs whose texts were written, and those dead-lettered (with reasons)."""

    done: list[str] = field(default_factory=list)
    failed: list[Failure] = field(default_factory=list)
    texts: int = 0


# -- the work, on decoded images ----------------------------------------------------------------
def ocr_images(items: Sequence[tuple[str, Image.Image]], collection: str, ctx: TextContext) -> StageOutcome:
    """OCR the batch in one call (lines recognised together), embed all lines in one call,
    replace the images' ``ocr`` rows. Should the batch call fail, each image is read alone,
    so only the image at fault is dead-lettered."""
    outcome = StageOutcome()
    if not items:
        return outcome
    model = ctx.ocr()
    per_image: dict[int, tuple[list[TextItem], list]] = {}
    try:
        found: list = model.predict([img for _, img in items])
    except Exception as exc:
        log.warning("ocr failed for a batch; reading its images one by one", extra={"error": str(exc)})
        found = []
        for uri, img in items:
            try:
                found.append(model.predict([img])[0])
            except Exception as one:  # a model fault on one image must not fail the batch
                log.warning("ocr failed", extra={"uri": uri, "error": str(one)})
                found.append(Failure(uri, "ocr_error", f"{type(one).__name__}: {one}"))
    for (uri, _), lines in zip(items, found):
        if isinstance(lines, Failure):
            outcome.failed.append(lines)
            continue
        per_image[image_id(uri)] = ([TextItem("ocr", ln.text, ln.confidence, ln.box) for ln in lines], [])
        outcome.done.append(uri)
    outcome.texts = _write(per_image, collection, OCR_KINDS, ctx)
    return outcome


def caption_images(items: Sequence[tuple[str, Image.Image | None]], collection: str, ctx: TextContext,
                   vectors: np.ndarray | None = None) -> StageOutcome:
    """Captions and tags for each image; replaces the images' ``caption`` and ``tag`` rows."""
    outcome = StageOutcome()
    captioner = ctx.captioner(collection)
    if not items or captioner is None:
        outcome.done = [uri for uri, _ in items]
        return outcome
    descriptions: list = []
    if not captioner.needs_pixels:
        descriptions = captioner.describe([img for _, img in items], vectors)
        kept = list(items)
    else:
        kept = []
        for (uri, img), desc in zip(items, captioner.describe_each([img for _, img in items])):
            if isinstance(desc, CaptionError):
                outcome.failed.append(Failure(uri, "caption_error", str(desc)))
            else:
                descriptions.append(desc)
                kept.append((uri, img))
    per_image = {}
    for (uri, _), desc in zip(kept, descriptions):
        texts = [TextItem("caption", c) for c in desc.captions] + [TextItem("tag", t, s) for t, s in desc.tags]
        per_image[image_id(uri)] = (texts, [])
        outcome.done.append(uri)
    outcome.texts = _write(per_image, collection, CAPTION_KINDS, ctx)
    return outcome


def _write(per_image: dict[int, tuple[list[TextItem], list]], collection: str, kinds: Sequence[str],
           ctx: TextContext) -> int:
    """Embed every text of the batch in one encoder call, then replace the rows."""
    if not per_image:
        return 0
    flat = [item.text for items, _ in per_image.values() for item in items]
    vectors = ctx.encoder.encode(flat)
    n = 0
    for items, vecs in per_image.values():
        vecs.extend(vectors[n:n + len(items)])
        n += len(items)
    return ctx.texts(collection).replace_many(per_image, kinds)


# -- embedded runner: pixels already in memory -----------------------------------------------
def run_text_stages(uris: Sequence[str], decoded: Sequence[DecodedImage], vectors, collection: str,
                    ctx: TextContext) -> list[Failure]:
    """OCR and captions for a freshly embedded batch (embedded mode); returns dead letters."""
    items = [(u, d.image) for u, d in zip(uris, decoded)]
    failed: list[Failure] = []
    if ctx.settings.ocr_enabled:
        failed += _whole_batch("ocr", items, lambda: ocr_images(items, collection, ctx).failed)
    if ctx.settings.caption_backend != "off":
        bad = {f.uri for f in failed}
        keep = [i for i, (u, _) in enumerate(items) if u not in bad]
        vecs = np.asarray(vectors)[keep] if vectors is not None and len(keep) else None
        kept = [items[i] for i in keep]
        failed += _whole_batch("caption", kept, lambda: caption_images(kept, collection, ctx, vecs).failed)
    return failed


def _whole_batch(stage: str, items, run) -> list[Failure]:
    """Embedded mode has no task retry: a stage fault (endpoint down) dead-letters the batch's
    images with the reason instead of aborting the whole ingest (their CLIP rows stay)."""
    try:
        return run()
    except Exception as exc:
        log.warning("text stage failed for a batch", extra={"stage": stage, "error": str(exc)})
        return [Failure(uri, f"{stage}_error", f"{type(exc).__name__}: {exc}") for uri, _ in items]


# -- distributed chain: batch specs --------------------------------------------------------------
def _fetch(result: dict, ctx: TextContext) -> tuple[list[tuple[str, Image.Image]], list[Failure]]:
    source = ctx.source(result["source"])
    objects = as_objects(result.get("manifest") or [])
    if ctx.pool is not None:
        loaded = list(ctx.pool.map(lambda o: load_object(o, source, ctx.settings), objects))
    else:
        loaded = [load_object(o, source, ctx.settings) for o in objects]
    items, failed = [], []
    for obj, got in zip(objects, loaded):
        if isinstance(got, Failure):
            failed.append(got)
        else:
            items.append((obj.uri, got.image))
    return items, failed


def ocr_stage(result: dict, ctx: TextContext) -> dict:
    """The ``ocr`` task's work: re-fetch the batch's indexed objects, OCR, write texts."""
    if ctx.settings.ocr_enabled and result.get("manifest"):
        items, failed = _fetch(result, ctx)
        failed += ocr_images(items, result["collection"], ctx).failed
        result = move_to_failed(result, failed)
    return {**result, "stages": [*result.get("stages", []), "ocr"]}


def caption_stage(result: dict, ctx: TextContext) -> dict:
    """The ``caption`` task's work: tags from stored CLIP vectors (clip backend, no re-fetch)
    or captions from re-fetched pixels (endpoint / local model)."""
    if ctx.settings.caption_backend != "off" and result.get("manifest"):
        collection = result["collection"]
        captioner = ctx.captioner(collection)
        if captioner is not None and not captioner.needs_pixels:
            uris = [m["uri"] for m in result["manifest"]]
            stored = ctx.images(collection).vectors(image_id(u) for u in uris)
            present = [u for u in uris if image_id(u) in stored]
            vectors = np.asarray([stored[image_id(u)] for u in present], dtype=np.float32)
            failed = caption_images([(u, None) for u in present], collection, ctx,
                                    vectors if present else None).failed
            failed += [Failure(u, "caption_error", "image row missing from the index") for u in uris
                       if image_id(u) not in stored]
        else:
            items, failed = _fetch(result, ctx)
            failed += caption_images(items, collection, ctx).failed
        result = move_to_failed(result, failed)
    return {**result, "stages": [*result.get("stages", []), "caption"]}


def move_to_failed(result: dict, failed: Sequence[Failure]) -> dict:
    """Objects a text stage could not handle leave ``indexed`` and become dead letters."""
    if not failed:
        return result
    by_uri = {m["uri"]: m for m in result.get("manifest") or []}
    bad = {f.uri: f for f in failed if f.uri in by_uri}
    entries = [{**f.to_dict(), "etag": by_uri[u]["etag"], "size": by_uri[u]["size"], "batch": result["batch"]}
               for u, f in bad.items()]
    return {**result, "indexed": result["indexed"] - len(bad),
            "manifest": [m for m in result["manifest"] if m["uri"] not in bad],
            "recovered": [u for u in result.get("recovered", []) if u not in bad],
            "failures": [*result.get("failures", []), *entries]}


def stage_failed(result: dict, reason: str, message: str) -> dict:
    """A text stage that failed for good (retries exhausted): its whole batch is dead-lettered."""
    failed = [Failure(m["uri"], reason, message) for m in result.get("manifest") or []]
    return move_to_failed(result, failed)
