"""Listing and diffing: the ONE place objects are listed and compared with the index.

Ingest, re-index, the Celery planner and migration planning all list through here and
diff with :func:`diff_page`, so "new, changed or unchanged" means the same everywhere:

- a source (folder or S3 prefix) is listed page by page in a stable order, resumable
  after any URI it returned (:func:`source_pages`; S3 uses ``StartAfter``);
- a migration lists the live collection's rows in primary-key order, resumable after any
  id (:func:`collection_pages`);
- objects that were listed are remembered per job in a :class:`ListedIds` set kept OUT of
  the planner's memory (Redis for a distributed job, a SQLite file for an embedded run),
  and deletions are found by sweeping the index's ids under the source page by page
  against it (:func:`removed_pages`).

Why a per-job set and not a sorted merge: S3 lists in key order, but Milvus cannot return
rows ordered by URI (a query iterator walks primary keys, which are hashes of the URI), so
a merge would need an external sort of the index first. The set costs Redis memory
(~70 bytes per id) for the job's lifetime, survives a killed planner (adds are
idempotent, so a slice listed twice changes nothing), and the planner process holds one
page of ids at a time whatever the source's size.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from common.ids import image_id
from common.sources import Source, SourceObject, listed_uri_prefix, uri_included
from common.store import QUERY_IDS, ImageStore, prefix_filter

NEW, CHANGED, UNCHANGED = "new", "changed", "unchanged"
LIST_CHUNK = 1000  # objects diffed against the index per query while planning
ROW_FIELDS = ["id", "uri", "etag", "bytes", "source"]  # what a migration lists of the live rows


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


def chunks(items: Iterable, size: int) -> Iterator[list]:
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


@dataclass(frozen=True)
class Listed:
    """One listed object, where it is read from (its source root) and its diff state."""

    obj: SourceObject
    id: int
    root: str
    state: str = NEW

    @property
    def position(self) -> str:
        return self.obj.uri


def diff_page(store: ImageStore, tag: str | None, page: Sequence[Listed]) -> list[Listed]:
    """The page with each object's state against the index (one query per page)."""
    existing = store.existing([x.id for x in page]) if tag else {}
    return [Listed(x.obj, x.id, x.root, classify(existing.get(x.id), x.obj, tag)) for x in page]


def source_pages(source: Source, start_after: str = "", size: int = LIST_CHUNK) -> Iterator[list[Listed]]:
    """The source's objects after ``start_after`` (a listed URI), a page at a time."""
    for page in chunks(source.list(start_after), size):
        yield [Listed(o, image_id(o.uri), source.root) for o in page]


def collection_pages(store: ImageStore, after_id: str = "", size: int = LIST_CHUNK) -> Iterator[list[Listed]]:
    """The rows of a collection in primary-key order after ``after_id``, as listed objects
    (each keeps the source root it was indexed from). Position = the id, as text."""
    expr = f"id > {int(after_id)}" if after_id else ""
    for page in store.scan(ROW_FIELDS, size, expr):
        yield [_RowListed(SourceObject(r["uri"], r["etag"], int(r["bytes"])), int(r["id"]), r["source"])
               for r in page]


@dataclass(frozen=True)
class _RowListed(Listed):
    @property
    def position(self) -> str:
        return str(self.id)


# -- deletions -----------------------------------------------------------------------------------
class ListedIds:
    """The ids a job listed, kept outside the planner's memory. Adding is idempotent."""

    def add(self, ids: Sequence[int]) -> None:
        raise NotImplementedError

    def missing(self, ids: Sequence[int]) -> list[int]:
        """Those of ``ids`` that were not listed."""
        raise NotImplementedError

    def drop(self) -> None:
        raise NotImplementedError


class RedisListedIds(ListedIds):
    """A Redis set per job (``job:<id>:listed``), expiring after ``ttl`` seconds."""

    def __init__(self, client, key: str, ttl: int = 7 * 86_400):
        self.r, self.key, self.ttl = client, key, ttl

    def add(self, ids: Sequence[int]) -> None:
        for part in chunks(ids, 10_000):
            pipe = self.r.pipeline()
            pipe.sadd(self.key, *part)
            pipe.expire(self.key, self.ttl)
            pipe.execute()

    def missing(self, ids: Sequence[int]) -> list[int]:
        out: list[int] = []
        for part in chunks(ids, 10_000):
            out += [i for i, hit in zip(part, self.r.smismember(self.key, part)) if not hit]
        return out

    def drop(self) -> None:
        self.r.delete(self.key)


class DiskListedIds(ListedIds):
    """A SQLite file (embedded runs have no Redis); removed by :meth:`drop`."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(path)
        self.db.execute("CREATE TABLE IF NOT EXISTS ids (id INTEGER PRIMARY KEY) WITHOUT ROWID")

    def add(self, ids: Sequence[int]) -> None:
        self.db.executemany("INSERT OR IGNORE INTO ids VALUES (?)", ((int(i),) for i in ids))
        self.db.commit()

    def missing(self, ids: Sequence[int]) -> list[int]:
        out: list[int] = []
        for part in chunks(ids, 900):
            marks = ",".join("?" * len(part))
            found = {r[0] for r in self.db.execute(f"SELECT id FROM ids WHERE id IN ({marks})", part)}
            out += [i for i in part if i not in found]
        return out

    def drop(self) -> None:
        self.db.close()
        self.path.unlink(missing_ok=True)


def indexed_pages(store: ImageStore, root: str, include: tuple[str, ...] = ()) -> Iterator[list[int]]:
    """Ids of indexed rows whose URI lies under ``root`` (and matches ``include``), by page."""
    if not store.exists():
        return
    for page in store.scan(["id", "uri"], QUERY_IDS, prefix_filter("uri", listed_uri_prefix(root))):
        yield [int(r["id"]) for r in page if uri_included(r["uri"], include)]


def removed_pages(store: ImageStore, root: str, include: tuple[str, ...], listed: ListedIds) -> Iterator[list[int]]:
    """Pages of indexed ids under ``root`` that were not listed: the source no longer has them."""
    for ids in indexed_pages(store, root, include):
        if gone := listed.missing(ids):
            yield gone
