"""The embedded runner: list a source, run the embed stage batch by batch, report.

Fetch/decode of batch N+1 overlaps the forward pass of batch N (one batch of lookahead,
so memory stays bounded). A progress bar shows count, rate and ETA; the summary says
how many objects were indexed, skipped as unchanged, or failed (with reasons), and
failures are appended to a dead-letter file so nothing is lost silently.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np

from common.models.clip import load_clip
from common.settings import Settings
from common.sources import Source, SourceObject, open_source
from common.store import ImageStore
from ingest.embed import EmbedContext, Failure, prepare_batch, write_batch
from ingest.text_stages import TextContext, run_text_stages


@dataclass
class IngestSummary:
    """Totals of one ingest run. indexed + unchanged + failed == listed."""

    source: str
    collection: str
    listed: int = 0
    indexed: int = 0
    unchanged: int = 0
    failures: list[Failure] = field(default_factory=list)
    seconds: float = 0.0
    dead_letter_file: str | None = None

    @property
    def failed(self) -> int:
        return len(self.failures)

    def reasons(self) -> dict[str, int]:
        return dict(Counter(f.reason for f in self.failures).most_common())

    def to_dict(self) -> dict:
        return {"source": self.source, "collection": self.collection, "listed": self.listed,
                "indexed": self.indexed, "unchanged": self.unchanged, "failed": self.failed,
                "failure_reasons": self.reasons(), "seconds": round(self.seconds, 3),
                "images_per_second": round(self.indexed / self.seconds, 2) if self.seconds else None,
                "dead_letter_file": self.dead_letter_file,
                "failures": [f.to_dict() for f in self.failures]}

    def render(self, max_failures: int = 20) -> str:
        rate = f"{self.indexed / self.seconds:.1f} images/s" if self.seconds and self.indexed else "-"
        lines = [f"{self.source} -> collection {self.collection!r}: {self.listed} listed, "
                 f"{self.indexed} indexed, {self.unchanged} unchanged (skipped), "
                 f"{self.failed} failed  [{self.seconds:.1f}s, {rate}]"]
        if self.failures:
            lines.append("failures by reason: " + ", ".join(f"{r}={n}" for r, n in self.reasons().items()))
            for f in self.failures[:max_failures]:
                lines.append(f"  {f.reason:<16} {f.uri}  ({f.message})")
            if self.failed > max_failures:
                lines.append(f"  ... {self.failed - max_failures} more")
            lines.append(f"all failures: {self.dead_letter_file}")
        return "\n".join(lines)


def batched(items: Iterable[SourceObject], size: int) -> Iterator[list[SourceObject]]:
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


def build_context(settings: Settings, source: Source, pool: ThreadPoolExecutor) -> EmbedContext:
    """Load the model once and make sure the collection exists and matches it."""
    model = load_clip(settings.clip_model, settings.clip_pretrained, settings)
    store = ImageStore(settings)
    store.ensure(model.spec)
    return EmbedContext(settings, source, model, store, pool)


def dead_letter_path(settings: Settings) -> Path:
    return settings.data_dir / "dead-letters" / f"{settings.collection}.jsonl"


def run_ingest(location: str, settings: Settings, include: tuple[str, ...] = (),
               progress: bool = True, objects: list[SourceObject] | None = None) -> IngestSummary:
    """Index every object under ``location`` into the configured collection (only
    ``objects`` when given: a re-index passes the new and changed ones it listed).

    Without ``objects`` the source is listed and diffed by the plan steps of a distributed
    job (:func:`ingest.planning.run_local`), one bounded slice at a time: unchanged objects
    are counted there and never fetched, and memory does not grow with the source."""
    from ingest.planning import local_job, run_local

    started = time.perf_counter()
    source = open_source(location, settings, include)
    summary = IngestSummary(source.root, settings.collection)
    with ThreadPoolExecutor(settings.fetch_workers, thread_name_prefix="fetch") as pool, \
            ThreadPoolExecutor(1, thread_name_prefix="prepare") as ahead:
        ctx = build_context(settings, source, pool)
        text_ctx = TextContext(settings) if settings.ocr_enabled or settings.caption_backend != "off" else None
        bar = _bar(None if objects is None else len(objects), progress)
        try:
            if objects is not None:
                summary.listed = len(objects)
                _index(objects, ctx, ahead, text_ctx, summary, bar, settings)
            else:
                planned_unchanged = [0]  # counted by the plan steps so far

                def on_slice(specs: list[dict], cursor) -> None:
                    delta = cursor.unchanged - planned_unchanged[0]
                    planned_unchanged[0] = cursor.unchanged
                    summary.listed, summary.unchanged = cursor.listed, summary.unchanged + delta
                    if bar is not None:
                        bar.total = cursor.listed
                        bar.update(delta)
                    todo = [SourceObject(m["uri"], m["etag"], int(m["size"])) for s in specs for m in s["manifest"]]
                    _index(todo, ctx, ahead, text_ctx, summary, bar, settings)

                cursor, _ = run_local(local_job("ingest", source.root, settings.collection, include), settings,
                                      on_slice)
                summary.listed = cursor.listed
            if summary.indexed:
                ctx.store.flush()
                if text_ctx is not None:
                    text_ctx.texts(settings.collection).flush()
        finally:
            if bar is not None:
                bar.close()
    summary.seconds = time.perf_counter() - started
    if summary.failures:
        summary.dead_letter_file = str(_write_dead_letters(settings, summary))
    return summary


def _index(objects: list[SourceObject], ctx: EmbedContext, ahead: ThreadPoolExecutor,
           text_ctx: TextContext | None, summary: IngestSummary, bar, settings: Settings) -> None:
    """The embed stage (and the text stages) over ``objects``, one encoder batch at a time;
    fetch/decode of batch N+1 overlaps the forward pass of batch N."""
    if not objects:
        return
    batches = batched(objects, settings.batch_size)
    pending = ahead.submit(prepare_batch, next(batches, []), ctx)
    while True:
        prepared = pending.result()
        nxt = next(batches, None)
        if nxt is not None:
            pending = ahead.submit(prepare_batch, nxt, ctx)
        result = write_batch(prepared, ctx)
        if text_ctx is not None and prepared.objects:
            _text_stages(prepared, result, text_ctx, settings.collection)
        summary.indexed += len(result.indexed)
        summary.unchanged += len(result.unchanged)
        summary.failures.extend(result.failed)
        if bar is not None:
            bar.update(result.total)
            bar.set_postfix(indexed=summary.indexed, unchanged=summary.unchanged,
                            failed=summary.failed, refresh=False)
        if nxt is None:
            break


def _text_stages(prepared, result, text_ctx: TextContext, collection: str) -> None:
    """OCR and captions on the pixels already decoded; a failed image moves to the failures."""
    indexed = set(result.indexed)  # not those the embed step refused (a non-finite vector)
    keep = [i for i, o in enumerate(prepared.objects) if o.uri in indexed]
    if not keep:
        return
    uris = [prepared.objects[i].uri for i in keep]
    vectors = None if prepared.vectors is None else np.asarray(prepared.vectors)[keep]
    failed = run_text_stages(uris, [prepared.decoded[i] for i in keep], vectors, collection, text_ctx)
    bad = {f.uri for f in failed}
    if bad:
        result.indexed[:] = [u for u in result.indexed if u not in bad]
        result.failed.extend(failed)


def _bar(total: int | None, progress: bool):
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="indexing", unit="img", file=sys.stderr, dynamic_ncols=True)


def _write_dead_letters(settings: Settings, summary: IngestSummary) -> Path:
    path = dead_letter_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with open(path, "a", encoding="utf-8") as fh:
        for f in summary.failures:
            fh.write(json.dumps({"time": stamp, "source": summary.source, **f.to_dict()}) + "\n")
    return path
