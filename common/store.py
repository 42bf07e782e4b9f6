"""The Milvus store: the ``images`` collection of DESIGN.md behind a small API.

Physical collections are versioned (``images_v1``) and reached through an alias
(``images``), so a later model migration can build ``images_v2`` and swap the alias with
no downtime. The collection records the model that built it (name, weights, digest,
dimension) in its properties, and refuses vectors from any other model.

Works against Milvus Lite (a file) and Milvus server (a URI) alike.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from common import lite_search
from common.errors import CollectionNotFoundError, ModelMismatchError
from common.models.clip import ModelSpec
from common.settings import Settings
from common.vector_index import IndexTypes, add_vector_index, index_type_for, search_params

log = logging.getLogger(__name__)

PHASH_DIM = 64
URI_MAX = 4096
# Milvus rejects requests over 64 MB; 512 rows of a 1024-d vector plus strings stay far below.
UPSERT_ROWS = 512
QUERY_IDS = 1000

SCALAR_FIELDS = ["id", "uri", "etag", "source", "width", "height", "bytes", "mime",
                 "indexed_at", "model"]
PROP_PREFIX = "imgsearch."


@dataclass(frozen=True)
class Hit:
    """One search result, best first."""

    id: int
    uri: str
    score: float

    def to_dict(self) -> dict:
        return {"id": self.id, "uri": self.uri, "score": round(float(self.score), 6)}


class _LiteUnimplementedFilter(logging.Filter):
    """Milvus Lite's in-process gRPC server logs a traceback for RPCs it does not implement
    (pymilvus probes ``AllocTimestamp`` after creating an index and copes with the answer).
    Those records are noise to an operator; every other server record passes through."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Method not implemented" not in record.getMessage()


class _IteratorTimestampFilter(logging.Filter):
    """Milvus Lite (file or ``milvus-lite server``) returns no MVCC timestamp to a query
    iterator; pymilvus then reads at the client's current time, which is what our full-scan
    readers (re-index, migration) want. Its WARNING per scan is dropped; nothing else is."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "failed to get mvccTs" not in record.getMessage()


# pymilvus pings every 10 s even on an idle channel; a gRPC server with default policy
# (``milvus-lite server``) answers that with GOAWAY "too_many_pings" and the next call on the
# channel fails. Ping only while calls are in flight, and rarely: a dead server still shows
# as a failed call, so nothing is hidden. Our clients are *dedicated* connections: pymilvus
# otherwise shares one connection per address among all MilvusClients of a process, and the
# first one created (say by a library or a readiness probe, with the default options) decides
# the options of all the rest, ours silently ignored.
GRPC_OPTIONS = {"grpc.keepalive_time_ms": 300_000, "grpc.keepalive_permit_without_calls": False}

_clients: dict[str, object] = {}
_clients_lock = threading.Lock()


def milvus_client(settings: Settings):
    """One MilvusClient per URI per process (Milvus Lite allows one process per file)."""
    from pymilvus import MilvusClient

    uri = settings.effective_milvus_uri()
    with _clients_lock:
        if uri not in _clients:
            if not settings.milvus_uri:
                Path(uri).parent.mkdir(parents=True, exist_ok=True)
                # Milvus Lite in this process: vector searches without its per-row loops.
                lite_search.install()
                grpc_log = logging.getLogger("grpc._server")
                if not any(isinstance(f, _LiteUnimplementedFilter) for f in grpc_log.filters):
                    grpc_log.addFilter(_LiteUnimplementedFilter())
            it_log = logging.getLogger("pymilvus.client.iterator.query_iterator")
            if not any(isinstance(f, _IteratorTimestampFilter) for f in it_log.filters):
                it_log.addFilter(_IteratorTimestampFilter())
            kwargs = {"token": settings.milvus_token} if settings.milvus_token else {}
            _clients[uri] = _connect(MilvusClient, uri, kwargs)
        return _clients[uri]


def _connect(client_class, uri: str, kwargs: dict, attempts: int = 4):
    """A new dedicated client, retried a few times when connecting fails (a server still
    starting, a connection refused for a moment); each attempt opens a new connection. The
    last failure is raised as is."""
    for attempt in range(attempts):
        try:
            return client_class(uri, grpc_options=GRPC_OPTIONS, dedicated=True, **kwargs)
        except Exception as exc:
            if attempt == attempts - 1 or "connect" not in str(exc).lower():
                raise
            log.warning("milvus connection failed; retrying", extra={"uri": uri, "error": str(exc)})
            time.sleep(0.2 * (attempt + 1))


def close_clients() -> None:
    """Close every cached client (tests and CLI exit: releases the Lite file lock)."""
    with _clients_lock:
        for client in _clients.values():
            try:
                client.close()
            except Exception:  # closing is best effort
                pass
        _clients.clear()


class ImageStore:
    """The ``images`` collection reached through ``alias``."""

    def __init__(self, settings: Settings, alias: str | None = None):
        self.settings = settings
        self.alias = alias or settings.collection
        self.client = milvus_client(settings)
        self._index_types = IndexTypes(self.client, self.alias)
        self._loaded: set[str] = set()

    # -- collection lifecycle -------------------------------------------------------------
    def physical_name(self) -> str | None:
        """The versioned collection behind the alias, or None when nothing exists yet."""
        # Ask the alias list first: describe_alias of a missing alias logs an RPC ERROR line.
        if self.alias not in (self.client.list_aliases().get("aliases") or []):
            # A store may also be opened on a physical version (``images_v2``): a migration
            # writes there before the alias moves, and a query worker pins one version.
            name = self.alias if self.alias in self.client.list_collections() else None
        else:
            name = resolve_alias(self.client, self.alias)
        if name and name not in self._loaded:
            self._load(name)
        return name

    def _load(self, name: str) -> None:
        """Load ``name`` into memory once per store: a collection written by another process
        (or before a restart) is 'released' and refuses search and query until loaded."""
        from pymilvus.client.types import LoadState

        state = self.client.get_load_state(name).get("state")
        if state != LoadState.Loaded:
            self.client.load_collection(name)
        self._loaded.add(name)

    def exists(self) -> bool:
        return self.physical_name() is not None

    def model_spec(self) -> ModelSpec:
        """The model this collection was built with (raises if nothing is indexed yet)."""
        name = self.physical_name()
        if name is None:
            raise CollectionNotFoundError(
                f"collection {self.alias!r} does not exist in {self.settings.effective_milvus_uri()}: "
                "run `imgsearch ingest SOURCE` (or `imgsearch demo`) first")
        props = self.client.describe_collection(name).get("properties", {})
        try:
            return ModelSpec(props[PROP_PREFIX + "model"], props[PROP_PREFIX + "weights"],
                             props[PROP_PREFIX + "digest"], int(props[PROP_PREFIX + "dim"]))
        except KeyError as exc:
            raise ModelMismatchError(f"collection {name} records no model ({exc} missing)") from None

    def ensure(self, spec: ModelSpec) -> str:
        """Create ``<alias>_v1`` + alias for ``spec``, or check the existing one matches."""
        name = self.physical_name()
        if name is not None:
            recorded = self.model_spec()
            if (recorded.name, recorded.digest, recorded.dim) != (spec.name, spec.digest, spec.dim):
                raise ModelMismatchError(
                    f"collection {self.alias!r} ({name}) was built with {recorded.label()}, "
                    f"not {spec.label()}. Use that model (IMGSEARCH_CLIP_MODEL / "
                    "IMGSEARCH_CLIP_PRETRAINED) or another IMGSEARCH_COLLECTION.")
            return name
        name = self._next_version_name()
        self._create(name, spec)
        self.client.create_alias(name, self.alias)
        return name

    def _next_version_name(self) -> str:
        """One above the highest version ever seen, so a dropped version's name is not reused."""
        versions = [version_of(self.alias, name) for name in self.client.list_collections()]
        return f"{self.alias}_v{max([v for v in versions if v is not None], default=0) + 1}"

    def create_version(self, spec: ModelSpec) -> str:
        """A new empty physical collection ``<alias>_v<N+1>`` for ``spec``; the alias stays put
        (a migration fills it, then :meth:`point_alias` makes it live)."""
        name = self._next_version_name()
        self._create(name, spec)
        return name

    def point_alias(self, name: str) -> str | None:
        """Make the alias point to ``name`` in one atomic step (``alter_alias``): every search
        runs wholly on the old or wholly on the new collection. Returns the previous target."""
        previous = self.physical_name()
        if previous is None:
            self.client.create_alias(name, self.alias)
        elif previous != name:
            self.client.alter_alias(name, self.alias)
        return previous

    def _create(self, name: str, spec: ModelSpec) -> None:
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("uri", DataType.VARCHAR, max_length=URI_MAX)
        schema.add_field("etag", DataType.VARCHAR, max_length=256)
        schema.add_field("source", DataType.VARCHAR, max_length=URI_MAX)
        schema.add_field("width", DataType.INT32)
        schema.add_field("height", DataType.INT32)
        schema.add_field("bytes", DataType.INT64)
        schema.add_field("mime", DataType.VARCHAR, max_length=64)
        schema.add_field("indexed_at", DataType.INT64)
        schema.add_field("model", DataType.VARCHAR, max_length=512)
        schema.add_field("clip", DataType.FLOAT_VECTOR, dim=spec.dim)
        schema.add_field("phash", DataType.FLOAT_VECTOR, dim=PHASH_DIM)
        index = self.client.prepare_index_params()
        index_type = index_type_for(self.settings, self.client)
        add_vector_index(index, "clip", index_type)
        add_vector_index(index, "phash", index_type)
        self.client.create_collection(name, schema=schema, index_params=index)
        self.client.alter_collection_properties(name, properties={
            PROP_PREFIX + "model": spec.name, PROP_PREFIX + "weights": spec.weights,
            PROP_PREFIX + "digest": spec.digest, PROP_PREFIX + "dim": str(spec.dim)})

    # -- rows ---------------------------------------------------------------------------
    def upsert(self, rows: Sequence[dict]) -> int:
        """Insert-or-replace rows by id, in chunks that stay under Milvus' request limit."""
        for start in range(0, len(rows), UPSERT_ROWS):
            self.client.upsert(self.alias, list(rows[start:start + UPSERT_ROWS]))
        return len(rows)

    def existing(self, ids: Iterable[int]) -> dict[int, dict]:
        """id -> {etag, model} for the given ids that are already indexed."""
        ids = list(ids)
        found: dict[int, dict] = {}
        for start in range(0, len(ids), QUERY_IDS):
            chunk = ids[start:start + QUERY_IDS]
            rows = self.client.query(self.alias, filter=f"id in {chunk}",
                                     output_fields=["id", "etag", "model"])
            found.update({int(r["id"]): r for r in rows})
        return found

    def flush(self) -> None:
        """Seal what was written so searches use the index: on Milvus Lite a search over
        unflushed rows is a slow scan (~1 s for 20k vectors against ~0.1 s after a flush).
        Called once at the end of an ingest, never per batch (many tiny segments are slow too)."""
        name = self.physical_name()
        if name is not None:
            self.client.flush(name)

    def delete(self, ids: Iterable[int]) -> int:
        """Delete rows by id (chunked); returns how many ids were asked for.

        Callers remove images through :func:`ingest.removal.remove_images`, which also removes
        their text rows; this only touches this collection."""
        ids = [int(i) for i in ids]
        for start in range(0, len(ids), QUERY_IDS):
            self.client.delete(self.alias, filter=f"id in {ids[start:start + QUERY_IDS]}")
        return len(ids)

    def iter_rows(self, fields: Sequence[str], filter_expr: str = "", batch: int = QUERY_IDS) -> Iterator[dict]:
        """Every row matching ``filter_expr`` (our own expressions only), one at a time."""
        for page in self.scan(fields, batch, filter_expr):
            yield from page

    def count(self) -> int:
        rows = self.client.query(self.alias, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    def scan(self, fields: Sequence[str], batch_size: int = QUERY_IDS, filter_expr: str = "") -> Iterator[list[dict]]:
        """Every row's ``fields``, a page at a time (a query iterator: a whole collection may
        hold millions of rows, more than one query may return)."""
        iterator = self.client.query_iterator(self.alias, batch_size=batch_size, filter=filter_expr,
                                              output_fields=list(fields))
        try:
            while page := iterator.next():
                yield [dict(row) for row in page]
        finally:
            iterator.close()

    def get(self, image_id: int, with_vector: bool = False) -> dict | None:
        fields = SCALAR_FIELDS + (["clip"] if with_vector else [])
        rows = self.client.query(self.alias, filter=f"id == {int(image_id)}", output_fields=fields)
        return dict(rows[0]) if rows else None

    def vectors(self, ids: Iterable[int]) -> dict[int, list[float]]:
        """id -> CLIP vector for those of ``ids`` that are indexed (the caption stage reuses them)."""
        ids = [int(i) for i in ids]
        found: dict[int, list[float]] = {}
        for start in range(0, len(ids), QUERY_IDS):
            rows = self.client.query(self.alias, filter=f"id in {ids[start:start + QUERY_IDS]}",
                                     output_fields=["id", "clip"])
            found.update({int(r["id"]): r["clip"] for r in rows})
        return found

    def uris(self, ids: Iterable[int], filter_expr: str = "") -> dict[int, str]:
        """id -> uri for those of ``ids`` that are indexed (and pass ``filter_expr``, our own)."""
        ids = [int(i) for i in ids]
        found: dict[int, str] = {}
        for start in range(0, len(ids), QUERY_IDS):
            expr = f"id in {ids[start:start + QUERY_IDS]}"
            if filter_expr:
                expr = f"({expr}) and ({filter_expr})"
            # through the client even when embedded: its Query answers ``id in [...]`` by key
            # (~2 ms), where the engine's own query() evaluates the filter over every row
            rows = self.client.query(self.alias, filter=expr, output_fields=["id", "uri"])
            found.update({int(r["id"]): r["uri"] for r in rows})
        return found

    def get_by_uri(self, uri: str, with_vector: bool = False) -> dict | None:
        fields = SCALAR_FIELDS + (["clip"] if with_vector else [])
        rows = self.client.query(self.alias, filter=f"uri == {quote_string(uri)}",
                                 output_fields=fields, limit=1)
        return dict(rows[0]) if rows else None

    def rows(self, ids: Sequence[int], with_vector: bool = False) -> list[dict]:
        """Rows (scalar fields, optionally the CLIP vector) of the given ids that exist, any order."""
        fields = SCALAR_FIELDS + (["clip"] if with_vector else [])
        found: list[dict] = []
        ids = [int(i) for i in ids]
        for start in range(0, len(ids), QUERY_IDS):
            chunk = ids[start:start + QUERY_IDS]
            found.extend(dict(r) for r in self.client.query(self.alias, filter=f"id in {chunk}",
                                                            output_fields=fields))
        return found

    def sample(self, n: int, with_vector: bool = False) -> tuple[int, list[dict]]:
        """(collection count, at most ``n`` rows spread over the collection).

        Ids are hashes of URIs, uniform over [1, 2^63), so ``id < bound`` with
        bound = 2^63 * 1.2n / count is an unbiased sample that Milvus evaluates itself (no
        listing of millions of ids to pick from; Milvus Lite has no ``%`` in expressions), and
        it stays mostly the same sample as the collection grows."""
        count = self.count()
        fields = SCALAR_FIELDS + (["clip"] if with_vector else [])
        n = max(1, n)
        bound = min((1 << 63) - 1, int(2.0 ** 63 * 1.2 * n / max(count, 1)))
        expr = f"id < {bound}" if count > n else ""
        rows = self.client.query(self.alias, filter=expr, output_fields=fields, limit=n)
        return count, [dict(r) for r in rows]

    def search(self, vectors: Sequence[Sequence[float]], k: int, field: str = "clip",
               exclude_ids: Sequence[int] = (), filter_expr: str = "") -> list[list[Hit]]:
        """Top-k by inner product for each query vector, best first.

        ``filter_expr`` must come from our own compiler (``query.filters``), never from a caller.
        """
        expr = f"id not in {[int(i) for i in exclude_ids]}" if exclude_ids else ""
        if filter_expr:
            expr = f"({expr}) and ({filter_expr})" if expr else filter_expr
        data = [list(map(float, v)) for v in vectors]
        params = search_params(self._index_types[field], self.settings, k)
        results = None
        if not self.settings.milvus_uri:  # embedded: the engine in this process, no gRPC hop
            results = lite_search.direct_search(self.settings.effective_milvus_uri(), self.alias, data, field, k,
                                                expr, ["uri"], params)
        if results is None:
            results = self.client.search(self.alias, data=data, anns_field=field, limit=k, filter=expr,
                                         output_fields=["uri"], search_params=params)
        return [[Hit(int(r["id"]), r["entity"]["uri"], float(r["distance"])) for r in hits]
                for hits in results]


def version_of(alias: str, name: str) -> int | None:
    """``images_v3`` -> 3 for alias ``images``; None for a name that is not a version of it."""
    head, _, tail = name.rpartition("_v")
    return int(tail) if head == alias and tail.isdigit() else None


def describe_collections(settings: Settings) -> list[dict]:
    """Every physical collection: name, aliases on it, recorded model and row count.

    Counts come from ``count(*)`` on loaded collections (exact) and from the collection
    statistics otherwise (``exact: False``; deleted rows count until compaction), so listing
    never loads a retired version into memory."""
    from pymilvus.client.types import LoadState

    client = milvus_client(settings)
    out = []
    for name in sorted(client.list_collections()):
        props = client.describe_collection(name).get("properties", {})
        aliases = sorted(client.list_aliases(collection_name=name).get("aliases") or [])
        loaded = client.get_load_state(name).get("state") == LoadState.Loaded
        if loaded:
            rows = int(client.query(name, filter="", output_fields=["count(*)"])[0]["count(*)"])
        else:
            rows = int(client.get_collection_stats(name).get("row_count", 0))
        out.append({"name": name, "aliases": aliases, "model": props.get(PROP_PREFIX + "model", ""),
                    "weights": props.get(PROP_PREFIX + "weights", ""),
                    "digest": props.get(PROP_PREFIX + "digest", ""), "dim": props.get(PROP_PREFIX + "dim", ""),
                    "rows": rows, "exact": loaded})
    return out


def resolve_alias(client, alias: str) -> str | None:
    """The physical collection an existing alias points to right now (None when unknown)."""
    try:
        info = client.describe_alias(alias)
    except Exception:
        return None
    return info.get("collection_name") if info else None


def prefix_filter(field: str, prefix: str) -> str:
    """``field`` starts with ``prefix``, as a range on the string instead of LIKE: no wildcard
    escaping to get wrong. Milvus compares VARCHARs bytewise (UTF-8), ordered like code points."""
    upper = _prefix_upper_bound(prefix)
    low = f"{field} >= {quote_string(prefix)}"
    return f"{low} and {field} < {quote_string(upper)}" if upper is not None else low


def _prefix_upper_bound(prefix: str) -> str | None:
    """The smallest string greater than every string starting with ``prefix`` (None: none)."""
    chars = list(prefix)
    while chars:
        code = ord(chars[-1]) + 1
        if 0xD800 <= code <= 0xDFFF:  # surrogates are not characters; skip past them
            code = 0xE000
        if code <= 0x10FFFF:
            chars[-1] = chr(code)
            return "".join(chars)
        chars.pop()
    return None


def quote_string(value: str) -> str:
    """A Milvus string literal: backslashes and double quotes escaped, control chars refused."""
    if any(ord(ch) < 32 for ch in value):
        raise ValueError("control characters are not allowed in filter values")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def now_ms() -> int:
    return int(time.time() * 1000)
