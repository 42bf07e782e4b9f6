"""Vector search for Milvus Lite without its per-row Python loops.

Milvus Lite (the pure-Python engine behind a local ``.db`` file) already keeps one faiss
index per sealed segment, but before it asks them it decides which rows are *live* (the
newest version of their primary key, not deleted) with two Python loops over every row of
every segment (``milvus_lite.search.executor_indexed``: ``_update_max_seqs`` and
``_build_local_mask``). That is O(N) interpreted work per query whatever the index: ~1 s
at 100k rows on a busy 2-core machine, seconds at 1M.

:func:`install` replaces that executor with one that computes the same liveness with
numpy and caches what does not change between queries:

- per sealed segment (immutable once loaded): its primary keys as an int64 array, sorted,
  with their row order;
- per set of sealed segments: which row of each is the newest version of its key among
  the segments (an ``lexsort`` once, redone only when flush or compaction changes the set).

Per query only what can change is applied on top, by *key lookup* (binary search into the
sorted keys), never by a scan: rows of the memtable (unsealed writes), tombstones of the
delete index and the memtable's pending deletes. The rest (per-segment faiss search with
the caller's ``ef``/``nprobe``, scalar filter masks, merging, materialising the entities)
is Milvus Lite's own code path, unchanged. So Milvus Lite stays the only source of truth:
there is no second copy of the vectors to keep in step with upserts and deletes.

Only integer primary keys take the fast path (ours are INT64); anything else, or a Milvus
Lite version this was not written against, falls back to the original executor.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import re
import threading
from importlib import metadata
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

# The milvus-lite releases whose executor signature and storage classes this was written
# against (and tested with): another version keeps Milvus Lite's own executor.
SUPPORTED_VERSIONS = ("3.2.2",)

_lock = threading.Lock()
_installed = False
_original = None
_original_assemble = None
_original_mask = None
_original_sparse = None
_original_bm25 = None


class _SegmentKeys:
    """Primary keys of one immutable segment: as an array, sorted, and the sort order; and,
    once a lookup asked for them, its integer columns sorted the same way (``columns``:
    16 bytes a row per column, e.g. ``text_key`` and ``id`` of the texts)."""

    __slots__ = ("key", "collection", "num_rows", "pks", "seqs", "order", "sorted", "columns")

    def __init__(self, segment) -> None:
        # The segment itself is not held: a cache entry must not keep a dropped collection's
        # segments (their vectors, tables and indexes: gigabytes at 1M rows) alive.
        self.key = _segment_key(segment)
        self.collection = _collection_of(segment)
        self.num_rows = segment.num_rows
        pks = _int_keys(segment.pks)
        self.pks = pks if pks is not None else np.empty(0, dtype=object)  # object: not ours
        self.seqs = np.array(segment.seqs, dtype=np.int64)  # a copy: no view into the segment
        self.order = np.argsort(self.pks, kind="stable") if pks is not None else self.pks
        self.sorted = self.pks[self.order] if pks is not None else self.pks
        self.columns: dict[str, tuple[np.ndarray, np.ndarray] | None] = {}  # see column_mask

    def rows_of(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row indexes in this segment, index into ``keys``) of the keys present here."""
        if not len(keys) or not len(self.sorted):
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
        pos = np.searchsorted(self.sorted, keys)
        pos_clipped = np.minimum(pos, len(self.sorted) - 1)
        hit = self.sorted[pos_clipped] == keys
        which = np.nonzero(hit)[0]
        return self.order[pos_clipped[which]], which

    def column_mask(self, segment, field: str, values: np.ndarray) -> np.ndarray | None:
        """True on this segment's rows whose integer column ``field`` holds one of ``values``,
        by binary search into the column sorted once (cached here: the segment is immutable);
        None when the column is not a plain integer column without nulls."""
        if field not in self.columns:
            index = None
            if field in segment.table.schema.names:
                column = segment.table.column(field)
                if column.null_count == 0:
                    arr = column.to_numpy()
                    if arr.dtype.kind in "iu" and len(arr) == self.num_rows:
                        order = np.argsort(arr, kind="stable")
                        index = (arr[order].astype(np.int64, copy=False), order)
            self.columns[field] = index
        index = self.columns[field]
        if index is None:
            return None
        ordered, order = index
        mask = np.zeros(self.num_rows, dtype=bool)
        lo = np.searchsorted(ordered, values, side="left")
        hi = np.searchsorted(ordered, values, side="right")
        for a, b in zip(lo.tolist(), hi.tolist()):
            if b > a:
                mask[order[a:b]] = True
        return mask


MAX_COLLECTIONS = 16  # collections whose segment keys stay cached (a hybrid search reads 3)


def _segment_key(segment) -> tuple:
    """What identifies a segment's rows while it is cached: its object, its immutable data
    file and its size (an id alone may be reused by a later segment once one is freed)."""
    return id(segment), str(getattr(segment, "file_path", "") or ""), int(segment.num_rows)


def _collection_of(segment) -> str:
    """The collection folder a segment's data file lies in (``<collection>/partitions/...``)."""
    path = str(getattr(segment, "file_path", "") or "")
    head, sep, _ = path.rpartition(os.sep + "partitions" + os.sep)
    return head if sep else os.path.dirname(path)


class _Cache:
    """Per-segment keys and the newest-version mask of one set of segments."""

    def __init__(self) -> None:
        self.keys: dict[tuple, _SegmentKeys] = {}
        self.recent: dict[str, None] = {}  # collections, least recently searched first
        self.winners: dict[tuple[int, ...], list[np.ndarray]] = {}
        self.after_delta: dict[tuple, list[np.ndarray]] = {}
        self.lock = threading.Lock()

    def segment_keys(self, segments) -> list[_SegmentKeys]:
        """The keys of ``segments`` (one collection's), cached; entries of that collection's
        segments that are gone (compacted, dropped) are let go here. Only that collection's:
        one process searches several (images, texts, distinct-text vectors) in turn, and
        evicting the others' keys on every call rebuilt them on every query."""
        with self.lock:
            wanted = [_segment_key(s) for s in segments]
            live = set(wanted)
            groups = {_collection_of(s) for s in segments}
            for key in [k for k, e in self.keys.items() if k not in live and e.collection in groups]:
                del self.keys[key]
            out = []
            for seg, key in zip(segments, wanted):
                entry = self.keys.get(key)
                if entry is None:
                    entry = self.keys[key] = _SegmentKeys(seg)
                out.append(entry)
            # collections no longer searched (dropped, retired versions) keep at most their
            # keys, and only for the MAX_COLLECTIONS most recently searched collections
            for group in groups:
                self.recent.pop(group, None)
                self.recent[group] = None
            while len(self.recent) > MAX_COLLECTIONS:
                old = next(iter(self.recent))
                del self.recent[old]
                for key in [k for k, e in self.keys.items() if e.collection == old]:
                    del self.keys[key]
            return out

    def newest(self, keys: list[_SegmentKeys]) -> list[np.ndarray]:
        """Per segment, True where the row is its key's newest version among ``keys``."""
        sig = tuple(k.key for k in keys)
        with self.lock:
            cached = self.winners.get(sig)
            if cached is not None:
                return cached
        masks = _newest_masks([k.pks for k in keys], [k.seqs for k in keys])
        with self.lock:
            if len(self.winners) > 8:  # old generations of segments
                self.winners.clear()
            self.winners[sig] = masks
        return masks


_cache = _Cache()


def _newest_masks(pks: list[np.ndarray], seqs: list[np.ndarray]) -> list[np.ndarray]:
    """For rows spread over several arrays: True where (pk, seq) is the pk's highest seq."""
    sizes = [len(p) for p in pks]
    total = sum(sizes)
    if total == 0:
        return [np.zeros(0, dtype=bool) for _ in pks]
    all_pks = np.concatenate(pks) if len(pks) > 1 else pks[0]
    all_seqs = np.concatenate(seqs) if len(seqs) > 1 else seqs[0]
    order = np.lexsort((all_seqs, all_pks))  # by pk, then seq: the last of each pk wins
    sorted_pks = all_pks[order]
    last = np.ones(total, dtype=bool)
    last[:-1] = sorted_pks[:-1] != sorted_pks[1:]
    winner = np.zeros(total, dtype=bool)
    winner[order[last]] = True
    return np.split(winner, np.cumsum(sizes)[:-1])


def _int_keys(values) -> np.ndarray | None:
    """``values`` as an int64 array, or None when they are not all integers."""
    try:
        arr = np.asarray(list(values) if not isinstance(values, (list, np.ndarray)) else values)
    except (TypeError, ValueError):
        return None
    if arr.size == 0:
        return np.empty(0, dtype=np.int64)
    if arr.dtype.kind not in "iu":
        return None
    return arr.astype(np.int64, copy=False)


def _kill_older(keys: _SegmentKeys, mask: np.ndarray, pks: np.ndarray, seqs: np.ndarray) -> None:
    """Clear ``mask`` rows of ``keys`` whose key is in ``pks`` with a larger seq there."""
    rows, which = keys.rows_of(pks)
    if len(rows):
        older = seqs[which] > keys.seqs[rows]
        mask[rows[older]] = False


def live_masks(segments, mt_pks, mt_seqs, delta_map: dict, mt_deletes: dict, delta_key=None
               ) -> tuple[list[np.ndarray], np.ndarray] | None:
    """Liveness of every sealed-segment row and memtable row, Milvus Lite's rules vectorised:
    a row is live when its seq is its key's highest over segments and memtable, and no
    tombstone (delete index, memtable pending delete) with a higher seq exists for its key.
    None when the keys are not integers (the caller falls back)."""
    seg_keys = _cache.segment_keys(segments)
    if any(k.pks.dtype.kind not in "iu" or len(k.pks) != k.num_rows for k in seg_keys):
        return None
    mt_keys = _int_keys(mt_pks)
    if mt_keys is None:
        return None
    mt_seq_arr = np.asarray(mt_seqs, dtype=np.int64)
    # Sealed rows after the delete index: cached per (segments, delete-index version), since
    # upserts leave a tombstone per replaced key and re-reading them per query is O(deletes).
    sig = (tuple(k.key for k in seg_keys), delta_key)
    masks = _cache.after_delta.get(sig) if delta_key is not None else None
    if masks is None:
        masks = [m.copy() for m in _cache.newest(seg_keys)]
        del_pks = _int_keys(list(delta_map.keys())) if delta_map else np.empty(0, dtype=np.int64)
        if del_pks is None:
            return None
        del_seqs = np.fromiter(delta_map.values(), dtype=np.int64, count=len(delta_map)) if delta_map \
            else np.empty(0, dtype=np.int64)
        for keys, mask in zip(seg_keys, masks):
            _kill_older(keys, mask, del_pks, del_seqs)
        if delta_key is not None:
            with _cache.lock:
                if len(_cache.after_delta) > 8:
                    _cache.after_delta.clear()
                _cache.after_delta[sig] = masks
    masks = [m.copy() for m in masks]
    # Per query: the memtable's pending deletes and its rows shadow older sealed versions.
    md_pks, md_seqs = np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    if mt_deletes:
        md_pks = _int_keys(list(mt_deletes.keys()))
        if md_pks is None:
            return None
        md_seqs = np.fromiter((v[0] for v in mt_deletes.values()), dtype=np.int64, count=len(mt_deletes))
    shadow_pks = np.concatenate([md_pks, mt_keys])
    shadow_seqs = np.concatenate([md_seqs, mt_seq_arr])
    if len(shadow_pks):
        for keys, mask in zip(seg_keys, masks):
            _kill_older(keys, mask, shadow_pks, shadow_seqs)
    # Memtable rows: newest among themselves, not older than a segment version, not deleted.
    mt_mask = _newest_masks([mt_keys], [mt_seq_arr])[0] if len(mt_keys) else np.zeros(0, dtype=bool)
    if len(mt_keys):
        for keys in seg_keys:
            rows, which = keys.rows_of(mt_keys)
            if len(rows):
                mt_mask[which[keys.seqs[rows] > mt_seq_arr[which]]] = False
        # tombstones of the memtable's own keys, looked up key by key (O(memtable), not O(deletes))
        mt_list = mt_keys.tolist()
        deleted_at = np.fromiter((max(delta_map.get(pk, -1), mt_deletes[pk][0] if pk in mt_deletes else -1)
                                  for pk in mt_list), dtype=np.int64, count=len(mt_list))
        mt_mask[deleted_at > mt_seq_arr] = False
    return masks, mt_mask


def _exact_ip(vectors: np.ndarray, queries: np.ndarray, top_k: int, mask: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product over the rows of ``mask``, as Milvus Lite's brute force
    returns it (row ids, distance = -score, ascending; -1/inf padding) but without copying
    the live rows out first (its ``vectors[valid]`` copies the whole segment per query)."""
    nq = len(queries)
    ids = np.full((nq, top_k), -1, dtype=np.int64)
    dists = np.full((nq, top_k), np.inf, dtype=np.float32)
    scores = queries @ vectors.T  # (nq, n)
    if not mask.all():
        scores[:, ~mask] = -np.inf
    k = min(top_k, int(mask.sum()))
    if k == 0:
        return ids, dists
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < scores.shape[1] else \
        np.tile(np.arange(scores.shape[1]), (nq, 1))
    for q in range(nq):
        cand = part[q]
        order = cand[np.lexsort((cand, -scores[q, cand]))][:k]  # best first, ties by row
        ids[q, :k] = order
        dists[q, :k] = -scores[q, order]
    return ids, dists


def execute_search_fast(query_vectors, segments, memtable, delta_index, top_k, metric_type, pk_field,
                        vector_field, partition_names=None, compiled_filter=None, output_fields=None,
                        indexed_filter_plan=None, project_record_fn=None, search_params=None):
    """Drop-in for ``milvus_lite.search.executor_indexed.execute_search_with_index``: the same
    arguments and results, the liveness computed by :func:`live_masks`."""
    from milvus_lite.index.brute_force import BruteForceIndex

    args = (query_vectors, segments, memtable, delta_index, top_k, metric_type, pk_field, vector_field)
    kwargs = {"partition_names": partition_names, "compiled_filter": compiled_filter,
              "output_fields": output_fields, "indexed_filter_plan": indexed_filter_plan,
              "project_record_fn": project_record_fn, "search_params": search_params}
    if query_vectors.ndim == 1:
        query_vectors = query_vectors.reshape(1, -1)
    if query_vectors.dtype != np.float32:
        query_vectors = query_vectors.astype(np.float32, copy=False)
    nq = int(query_vectors.shape[0])
    if nq == 0 or top_k <= 0:
        return [[] for _ in range(nq)]
    segments = tuple(segments)
    # Versions are resolved over the whole collection (as Milvus Lite does), partitions after.
    all_segments = [s for s in segments if s.num_rows > 0]
    mt_pks, mt_seqs, mt_vecs, mt_row_refs, mt_table = memtable.to_search_snapshot(
        vector_field=vector_field, partition_names=partition_names, include_table=compiled_filter is not None)
    delta_map = getattr(delta_index, "_map", None)
    if not isinstance(delta_map, dict):
        return _original(*args, **kwargs)
    live = live_masks(all_segments, mt_pks, mt_seqs, delta_map, memtable.delete_index_snapshot(),
                      getattr(delta_index, "_imgsearch_key", None))
    if live is None:
        return _original(*args, **kwargs)
    seg_masks, mt_mask = live
    partition_filter = set(partition_names) if partition_names else None
    in_scope = [(s, m) for s, m in zip(all_segments, seg_masks)
                if partition_filter is None or s.partition in partition_filter]
    if not in_scope and not mt_pks:
        return [[] for _ in range(nq)]

    candidates: list[list[tuple[float, int, int]]] = [[] for _ in range(nq)]
    sources: list[Any] = []

    def recall(source_idx: int, vectors, mask: np.ndarray, index) -> None:
        if not mask.any():
            return
        if metric_type == "IP" and (index is None or isinstance(index, BruteForceIndex)):
            local_ids, dists = _exact_ip(vectors, query_vectors, top_k, mask)
        else:
            if index is None:
                index = BruteForceIndex.build(vectors, metric_type)
            local_ids, dists = index.search(query_vectors, top_k, valid_mask=None if mask.all() else mask,
                                            params=search_params)
        for q in range(nq):
            row_ids, row_d = local_ids[q], dists[q]
            for j in range(min(top_k, len(row_ids))):
                lid = int(row_ids[j])
                if lid < 0:
                    break
                candidates[q].append((float(row_d[j]), source_idx, lid))

    if compiled_filter is not None:
        from milvus_lite.search.filter import evaluate_mask
        from milvus_lite.search.indexed_filter import evaluate_segment_filter
    for seg, mask in in_scope:
        vectors, null_mask = seg.vector_data(vector_field)
        if compiled_filter is not None:
            mask &= np.asarray(evaluate_segment_filter(seg, compiled_filter, indexed_filter_plan), dtype=bool)
        if null_mask is not None:
            mask &= null_mask
        sources.append(seg)
        recall(len(sources) - 1, vectors, mask, seg.indexes.get(vector_field))
    n_segments = len(sources)
    if mt_pks:
        if compiled_filter is not None and mt_table is not None:
            mt_mask &= np.asarray(evaluate_mask(compiled_filter, mt_table), dtype=bool)
        sources.append(None)
        recall(len(sources) - 1, mt_vecs, mt_mask, None)

    if project_record_fn is not None:
        project = project_record_fn
    elif output_fields is None:
        def project(record: dict) -> dict:
            return {k: v for k, v in record.items() if k != pk_field and k != vector_field}
    else:
        keep = set(output_fields) - {pk_field}

        def project(record: dict) -> dict:
            return {k: record[k] for k in keep if k in record}

    wanted = None if output_fields is None else [pk_field, *(f for f in output_fields if f != pk_field)]
    results = []
    for q in range(nq):
        best = sorted(candidates[q])[:top_k]  # (distance, source, row): deterministic on ties
        out = []
        for dist, source_idx, local_id in best:
            if source_idx < n_segments:
                seg = sources[source_idx]
                record = _segment_record(seg, local_id, wanted)
                pk = record.get(pk_field, seg.pks[local_id])
            else:
                batch_idx, row_idx = mt_row_refs[local_id]
                record = memtable.materialize_row(batch_idx, row_idx)
                pk = record.get(pk_field, mt_pks[local_id])
            out.append({"id": pk, "distance": dist, "entity": project(record)})
        results.append(out)
    return results


def _has_columns(seg, fields) -> bool:
    """Whether every one of ``fields`` is a plain column of the segment's table."""
    columns = seg.table.schema.names
    return all(name in columns for name in fields)


def _segment_record(seg, row: int, wanted: list[str] | None) -> dict:
    """The fields of one sealed-segment row that a search hit shows: only ``wanted`` (the
    primary key and the requested fields) when each is a column of the segment (what our
    searches ask: ``["uri"]``), else the whole row as Milvus Lite builds it (``*``, dynamic
    fields). ``row_to_dict`` converts every column, the 512 floats of each vector field
    included: ~40 us per hit, more than a faiss HNSW search of the segment."""
    if wanted is not None and _has_columns(seg, wanted):
        return {name: seg.table.column(name)[row].as_py() for name in wanted}
    return seg.row_to_dict(row)


class _Rows:
    """The candidate rows of one scalar query, without a Python object per row: sealed
    segments (in order) then the memtable, addressed by one global row number. Stands in for
    the lists ``assemble_candidates`` returns (its pks and its record sources)."""

    def __init__(self, segments: list, memtable, mt_pks: list, mt_refs: list) -> None:
        self.segments, self.memtable, self.mt_pks, self.mt_refs = segments, memtable, mt_pks, mt_refs
        sizes = [s.num_rows for s in segments] + [len(mt_pks)]
        self.starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def _locate(self, i: int) -> tuple[int, int]:
        src = int(np.searchsorted(self.starts, i, side="right")) - 1
        return src, i - int(self.starts[src])

    def pk(self, i: int):
        src, local = self._locate(int(i))
        return self.segments[src].pks[local] if src < len(self.segments) else self.mt_pks[local]

    def source(self, i: int):
        src, local = self._locate(int(i))
        if src < len(self.segments):
            return self.segments[src], local
        return self.memtable, self.mt_refs[local]


class _RowPks:
    def __init__(self, rows: _Rows) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows.pk(i)


class _RowSources(_RowPks):
    def __getitem__(self, i):
        return self.rows.source(i)


def assemble_candidates_fast(segments, memtable, vector_field, partition_names=None, filter_compiled=None,
                             indexed_filter_plan=None, sealed_masks=None):
    """Drop-in for ``milvus_lite.search.assembler.assemble_candidates`` as ``Collection.query``
    uses it: the same rows in the same order, as lazy sequences (no per-row tuples, no copy
    of the vectors, which a scalar query never reads). ``sealed_masks`` (ours): a callable
    that gives the filter of the sealed segments kept here (a mask per segment) or None;
    the memtable's rows are then filtered by ``filter_compiled`` from the same snapshot."""
    from milvus_lite.search.filter import evaluate_mask
    from milvus_lite.search.indexed_filter import evaluate_segment_filter

    partition_filter = set(partition_names) if partition_names else None
    segs = [s for s in segments
            if s.num_rows > 0 and (partition_filter is None or s.partition in partition_filter)]
    mt_pks, mt_seqs, _vecs, mt_refs, mt_table = memtable.to_search_snapshot(
        vector_field=None, partition_names=partition_names, include_table=filter_compiled is not None)
    rows = _Rows(segs, memtable, list(mt_pks), list(mt_refs))
    seqs = [np.asarray(s.seqs, dtype=np.uint64) for s in segs] + [np.asarray(mt_seqs, dtype=np.uint64)]
    all_seqs = np.concatenate(seqs) if seqs else np.zeros(0, dtype=np.uint64)
    filter_mask = None
    if filter_compiled is not None:
        given = sealed_masks(segs) if sealed_masks is not None else None
        parts = given if given is not None else [
            np.asarray(evaluate_segment_filter(s, filter_compiled, indexed_filter_plan), dtype=bool) for s in segs]
        if mt_pks and mt_table is not None:
            parts.append(np.asarray(evaluate_mask(filter_compiled, mt_table), dtype=bool))
        elif mt_pks:
            parts.append(np.zeros(len(mt_pks), dtype=bool))
        filter_mask = np.concatenate(parts) if parts else np.zeros(0, dtype=bool)
    return _RowPks(rows), all_seqs, np.zeros((len(rows), 0), dtype=np.float32), _RowSources(rows), filter_mask


def build_valid_mask_fast(all_pks, all_seqs, delta_index, filter_mask=None, memtable=None):
    """Drop-in for ``milvus_lite.search.bitmap.build_valid_mask``: vectorised for the lazy rows
    of :func:`assemble_candidates_fast`, Milvus Lite's own for anything else."""
    delta_map = getattr(delta_index, "_map", None)
    if not isinstance(all_pks, _RowPks) or not isinstance(delta_map, dict):
        return _original_mask(all_pks, all_seqs, delta_index, filter_mask=filter_mask, memtable=memtable)
    rows = all_pks.rows
    mt_seqs = np.asarray(all_seqs[int(rows.starts[-2]):], dtype=np.int64)
    mt_deletes = memtable.delete_index_snapshot() if memtable is not None else {}
    live = live_masks(rows.segments, rows.mt_pks, mt_seqs, delta_map, mt_deletes,
                      getattr(delta_index, "_imgsearch_key", None))
    if live is None:
        return _original_mask(list(all_pks[i] for i in range(len(all_pks))), all_seqs, delta_index,
                              filter_mask=filter_mask, memtable=memtable)
    seg_masks, mt_mask = live
    mask = np.concatenate(seg_masks + [mt_mask]) if seg_masks or len(mt_mask) else np.zeros(0, dtype=bool)
    if filter_mask is not None:
        mask &= np.asarray(filter_mask, dtype=bool)
    return mask


# -- sparse (BM25) search -------------------------------------------------------------------
# ``search_sparse_fast`` is Milvus Lite 3.2.2's ``Collection._search_sparse`` (Apache-2.0,
# engine/collection.py) with its two per-row loops (the collection-wide key -> newest seq map,
# and each segment's liveness mask) replaced by :func:`_sparse_liveness`; everything else
# (per-segment BM25 scorers, filters, memtable, merge, projection) is its code unchanged.

def _sparse_liveness(segments, memtable, delta_snap, mt_deletes):
    """(id(segment) -> live mask, {memtable key: newest seq over the collection}) or None."""
    segs = [s for s in segments if s.num_rows > 0]
    if len({s.partition for s in segs}) > 1:  # pending deletes are per partition: not ours
        return None
    delta_map = getattr(delta_snap, "_map", None)
    if not isinstance(delta_map, dict):
        return None
    mt_items = list(memtable.pk_index_snapshot())
    mt_pks = [pk for pk, _ in mt_items]
    mt_seqs = np.asarray([v[2] for _, v in mt_items], dtype=np.int64)
    live = live_masks(segs, mt_pks, mt_seqs, delta_map, mt_deletes, getattr(delta_snap, "_imgsearch_key", None))
    if live is None:
        return None
    seg_masks, _ = live
    masks = {id(s): m for s, m in zip(segs, seg_masks)}
    for s in segments:
        masks.setdefault(id(s), np.zeros(s.num_rows, dtype=bool))
    newest = {pk: int(seq) for pk, seq in zip(mt_pks, mt_seqs.tolist())}
    if mt_pks:
        keys = np.asarray(mt_pks, dtype=np.int64)
        for entry in _cache.segment_keys(segs):
            rows, which = entry.rows_of(keys)
            for r, w in zip(rows.tolist(), which.tolist()):
                pk = mt_pks[w]
                newest[pk] = max(newest[pk], int(entry.seqs[r]))
    return masks, newest


def _add_candidates(per_query: list[list], local_ids, dists, top_k: int, pks, ref_of) -> None:
    """Append each query's hits of one index (``local_ids``/``dists`` rows, ``-1`` ends a row)
    as ``(distance, pk, ref)`` candidates: the segment and memtable searches share this."""
    for qi in range(len(per_query)):
        for j in range(top_k):
            lid = int(local_ids[qi, j])
            if lid < 0:
                break
            per_query[qi].append((float(dists[qi, j]), pks[lid], ref_of(lid)))


def search_sparse_fast(
    self,
    query_vectors: list,
    vector_field: str,
    top_k: int,
    metric_type: str,
    partition_names: list[str] | None,
    expr: str | None,
    output_fields: list[str] | None,
    timezone: str | None = None,
) -> list[list[dict]]:
    """Sparse search using independent IP or BM25 per-segment indexes.

    Architecture (Perf-3):
    - Each immutable segment gets a cached sparse scorer
      (built once, reused across searches).
    - The mutable memtable's index is rebuilt each search (small).
    - Per-source top-k results are merged globally.

    TODO: BM25 IDF accuracy — each segment currently uses its own IDF
    statistics, so BM25 scores from different segments have different
    baselines. Fix: aggregate global statistics (doc_count/avgdl/df
    summed across segments) at search time and use global IDF for
    scoring. Similar to Elasticsearch's DFS_QUERY_THEN_FETCH strategy.
    """
    from milvus_lite.analyzer.sparse import bytes_to_sparse
    from milvus_lite.engine.projection import build_projection_plan, project_record
    from milvus_lite.index.sparse_factory import (
        _search_prepared_sparse_index,
        create_sparse_index,
        sparse_index_matches,
    )

    partition_filter = set(partition_names) if partition_names else None
    projection_plan = build_projection_plan(
        output_fields, self._schema, api_kind="search"
    )

    sparse_spec = self._index_specs.get(vector_field)
    index_params = sparse_spec.build_params if sparse_spec else {}

    # Convert query vectors upfront
    query_sparse = self._prepare_sparse_queries(query_vectors, vector_field)
    nq = len(query_sparse)
    compiled_filter = self._compile_filter(expr, timezone=timezone) if expr else None
    indexed_filter_plan = self._indexed_filter_plan(compiled_filter)

    # Per-source candidates: (distance, global_pk, source_ref)
    Candidate = tuple[float, Any, Any]  # (dist, pk, (tbl, row_idx))
    per_query_candidates: list[list[Candidate]] = [[] for _ in range(nq)]

    # Read snapshot — keeps segment cache and tombstones from crossing
    # compaction / tombstone-GC generations.
    seg_snapshot, delta_snap = self._read_snapshot()
    mt_deletes = self._memtable.delete_index_snapshot()

    # ── Liveness, vectorised (imgsearch): per segment row, and the newest seq of each
    # memtable key over the whole collection (what the memtable loop below asks). ──
    live = _sparse_liveness(seg_snapshot, self._memtable, delta_snap, mt_deletes)
    if live is None:
        return _original_sparse(self, query_vectors, vector_field, top_k, metric_type, partition_names,
                                expr, output_fields, timezone)
    seg_live, global_pk_seq = live

    # ── Per-segment search (cached indexes) ──────────────────
    for seg in seg_snapshot:
        if partition_filter is not None:
            if seg.partition not in partition_filter:
                continue
        table = seg.table
        if table is None or len(table) == 0:
            continue

        # Build or reuse cached sparse index for this segment
        cached_idx = seg.sparse_indexes.get(vector_field)
        if not sparse_index_matches(cached_idx, metric_type, index_params):
            sparse_batch = table.column(vector_field).to_pylist()
            sparse_vecs = [
                bytes_to_sparse(r) if isinstance(r, bytes) else (r or {})
                for r in sparse_batch
            ]
            cached_idx = create_sparse_index(metric_type, index_params)
            cached_idx.build(sparse_vecs)  # no valid_mask — full segment
            seg.sparse_indexes[vector_field] = cached_idx

        # valid_mask for this segment (dedup + tombstone), then the filter
        pks = seg.pks
        valid_mask = seg_live[id(seg)].copy()

        # Apply scalar filter
        if compiled_filter is not None:
            from milvus_lite.search.indexed_filter import evaluate_segment_filter
            valid_mask = valid_mask & evaluate_segment_filter(
                seg, compiled_filter, indexed_filter_plan,
            )

        if not valid_mask.any():
            continue

        # Search this segment's cached index
        local_ids, dists = _search_prepared_sparse_index(
            cached_idx, query_sparse, top_k, valid_mask=valid_mask,
        )
        _add_candidates(per_query_candidates, local_ids, dists, top_k, pks, lambda lid, table=table: (table, lid))

    # ── Memtable search (rebuilt each time — small + mutable) ─
    mt = self._memtable
    mt_pks: list = []
    mt_sparse: list = []
    mt_refs: list = []
    for pk, seq, record in mt.active_record_snapshots(
        partition_names=partition_names
    ):
        if delta_snap.is_deleted(pk, seq) or global_pk_seq.get(pk, -1) > seq:
            continue
        raw = record.get(vector_field)
        mt_pks.append(pk)
        mt_sparse.append(
            bytes_to_sparse(raw) if isinstance(raw, bytes) else (raw or {})
        )
        mt_refs.append((record, seq))

    if mt_pks:
        mt_valid = np.ones(len(mt_pks), dtype=bool)

        if compiled_filter is not None:
            from milvus_lite.search.filter.eval.python_backend import _eval_row
            for i in range(len(mt_pks)):
                if mt_valid[i]:
                    record, _seq = mt_refs[i]
                    if not _eval_row(compiled_filter.ast, record):
                        mt_valid[i] = False

        mt_idx = create_sparse_index(metric_type, index_params)
        mt_idx.build(mt_sparse, valid_mask=mt_valid)
        local_ids, dists = _search_prepared_sparse_index(mt_idx, query_sparse, top_k)
        _add_candidates(per_query_candidates, local_ids, dists, top_k, mt_pks, mt_refs.__getitem__)

    # ── Global merge + dedup + materialize ────────────────────
    # Dedup: if same pk appears from segment + memtable, keep
    # the one with the highest seq (latest version).
    def _is_memtable_sparse_ref(source: Any) -> bool:
        return isinstance(source, tuple) and bool(source) and isinstance(source[0], dict)

    results: list[list[dict]] = []
    for qi in range(nq):
        candidates = per_query_candidates[qi]
        # First, deduplicate by pk keeping the latest version (highest seq).
        pk_best: dict = {}  # pk → (dist, pk, (tbl, row_i))
        for cand in candidates:
            dist, pk, source = cand
            if _is_memtable_sparse_ref(source):
                _record, seq = source
                seq = int(seq)
            else:
                tbl, row_i = source
                seq = int(tbl.column("_seq")[row_i].as_py())
            if pk not in pk_best or seq > pk_best[pk][0]:
                pk_best[pk] = (seq, cand)
        deduped = [v[1] for v in pk_best.values()]
        # Sort by distance ascending (smaller = better)
        deduped.sort(key=lambda c: c[0])
        hits: list = []
        for dist, pk, source in deduped:
            # Deferred materialization
            entity = {}
            if _is_memtable_sparse_ref(source):
                source, _seq = source
                entity = project_record(
                    source, self._schema, projection_plan
                )
            else:
                tbl, row_i = source
                record = {
                    name: tbl.column(name)[row_i].as_py()
                    for name in tbl.column_names
                    if name not in ("_seq", "_partition")
                }
                entity = project_record(
                    record, self._schema, projection_plan
                )
            hits.append({"id": pk, "distance": dist, "entity": entity})
            if len(hits) >= top_k:
                break
        results.append(hits)

    return results


# -- direct calls ----------------------------------------------------------------------------
# pymilvus reaches an embedded Milvus Lite through a gRPC server it starts on a thread of this
# very process: every search is serialised to protobuf, handed to a server thread and back.
# On a small busy machine those two thread hand-offs cost more than the search itself (a
# faiss HNSW query at 100k is ~0.2 ms). A search of a collection of *this* process's Milvus
# Lite is therefore called on the engine's Collection directly: the same code the gRPC
# servicer calls, with the same arguments, so the same answers.

def local_db(db_path: str):
    """The MilvusLite database this process opened for ``db_path`` through pymilvus, or None."""
    if not _installed:
        return None
    try:
        from milvus_lite.server_manager import server_manager_instance
    except ImportError:
        return None
    entry = getattr(server_manager_instance, "_servers", {}).get(os.path.abspath(db_path))
    return entry[1] if entry else None


def local_alias_target(db_path: str, alias: str) -> tuple[bool, str | None]:
    """(answered, the collection ``alias`` names) from this process's Milvus Lite without
    gRPC; (False, None) when the database is not local (ask through the client)."""
    db = local_db(db_path)
    if db is None:
        return False, None
    try:
        target = db.resolve_collection_name(alias)
    except Exception:
        return False, None
    return True, (target if target != alias else None)


def local_collection(db_path: str, name: str):
    """The Milvus Lite Collection behind ``name`` (a collection or alias) of the ``.db`` file
    this process opened through pymilvus, or None (a server, or not opened here)."""
    db = local_db(db_path)
    if db is None:
        return None
    try:
        return db.get_collection(name)
    except Exception:  # missing, dropped meanwhile: let the gRPC path raise its own error
        return None


def direct_search(db_path: str, name: str, data: list, anns_field: str, limit: int, expr: str,
                  output_fields: list[str], search_params: dict) -> list[list[dict]] | None:
    """``MilvusClient.search`` on a collection of this process's Milvus Lite, without gRPC:
    hits as ``{"id", "distance", "entity"}``; None when the collection is not local."""
    coll = local_collection(db_path, name)
    if coll is None:
        return None
    return coll.search(query_vectors=data, top_k=limit, metric_type=search_params.get("metric_type"),
                       expr=expr or None, output_fields=list(output_fields), anns_field=anns_field,
                       search_params=search_params.get("params") or None)


_IN_LIST = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s+in\s+\[([-0-9,\s]*)\]\s*")


def _in_list(expr: str) -> tuple[str, np.ndarray] | None:
    """(field, values) of an expression ``field in [int, ...]`` and nothing else, or None."""
    m = _IN_LIST.fullmatch(expr)
    if m is None:
        return None
    body = [v for v in m.group(2).replace(" ", "").split(",") if v]
    try:
        return m.group(1), np.unique(np.array([int(v) for v in body], dtype=np.int64))
    except ValueError:
        return None


def _sealed_in_list_masks(segments, expr: str) -> list[np.ndarray] | None:
    """Per sealed segment, the rows matching ``field in [ints]`` by binary search into that
    segment's cached sorted column, or None (another expression; not an integer column).
    Milvus Lite evaluates such a filter with pyarrow over every row of every segment on
    every call: ~9 ms at 1.1M text rows, where the lookup takes microseconds."""
    parsed = _in_list(expr)
    if parsed is None:
        return None
    field, values = parsed
    keys = _cache.segment_keys(segments)
    masks = []
    for seg, entry in zip(segments, keys):
        mask = entry.column_mask(seg, field, values)
        if mask is None:
            return None
        masks.append(mask)
    return masks


def _take(column, rows: np.ndarray) -> list:
    """``column.take(rows).to_pylist()`` chunk by chunk: pyarrow's take on a chunked column
    joins its chunks first (a copy of the whole column: 7 ms for 150 texts of a segment of
    1.1M rows), a take per chunk copies only what is taken."""
    if column.num_chunks <= 1:
        return column.take(rows).to_pylist()
    bounds = np.cumsum([0] + [len(c) for c in column.chunks])
    which = np.searchsorted(bounds, rows, side="right") - 1
    out: list = [None] * len(rows)
    for chunk in np.unique(which).tolist():
        picked = np.flatnonzero(which == chunk)
        values = column.chunk(chunk).take(rows[picked] - bounds[chunk]).to_pylist()
        for i, v in zip(picked.tolist(), values):
            out[i] = v
    return out


def direct_columns(db_path: str, name: str, expr: str, fields: list[str]) -> dict[str, list] | None:
    """Every live row of ``name`` matching ``expr`` as one list per field of ``fields`` (scalar
    columns of the schema), read column-wise; None when the collection is not local or a field
    is not a plain column (ask the client). ``Collection.query`` builds each row as
    a whole dict first (``row_to_dict``: every column, sparse vectors included, ~25 us a row):
    a text shared by a thousand images is a thousand such rows per query. An expression
    ``field in [ints]`` (the texts' key and id lookups) is answered from per-segment sorted
    columns instead of a filter over every row (:meth:`_SegmentKeys.column_mask`)."""
    coll = local_collection(db_path, name)  # None too when the fast path is not installed
    if coll is None:
        return None
    coll._require_loaded()
    compiled = coll._compile_filter(expr) if expr else None
    plan = coll._indexed_filter_plan(compiled) if compiled is not None else None
    seg_snap, delta_snap = coll._read_snapshot()
    pks, seqs, _vecs, _sources, filter_mask = assemble_candidates_fast(
        seg_snap, coll._memtable, coll._vector_name, None, compiled, plan,
        sealed_masks=lambda segs: _sealed_in_list_masks(segs, expr))
    rows = pks.rows
    if not all(_has_columns(s, fields) for s in rows.segments):
        return None
    mask = build_valid_mask_fast(pks, seqs, delta_snap, filter_mask=filter_mask, memtable=coll._memtable)
    live = np.flatnonzero(mask)
    out: dict[str, list] = {f: [] for f in fields}
    n_seg = len(rows.segments)
    owner = np.searchsorted(rows.starts, live, side="right") - 1
    for src in np.unique(owner):
        local = live[owner == src] - int(rows.starts[src])
        if src < n_seg:
            table = rows.segments[src].table
            for f in fields:
                out[f].extend(_take(table.column(f), local))
        else:
            for r in local:
                batch_idx, row_idx = rows.mt_refs[int(r)]
                record = rows.memtable.materialize_row(batch_idx, row_idx)
                for f in fields:
                    out[f].append(record.get(f))
    return out


def direct_rows(db_path: str, name: str, expr: str, fields: list[str]) -> list[dict] | None:
    """:func:`direct_columns` as one ``{field: value}`` per row."""
    columns = direct_columns(db_path, name, expr, fields)
    if columns is None:
        return None
    return [dict(zip(fields, values)) for values in zip(*(columns[f] for f in fields))]


def indexes_ready(db_path: str, name: str, field: str) -> bool | None:
    """Whether every sealed segment of ``name`` has its ``field`` index attached (Milvus Lite
    builds them on a background thread after a flush; until then that segment is scanned).
    None when the collection is not local."""
    coll = local_collection(db_path, name)
    if coll is None:
        return None
    segments = coll._segments_snapshot()
    return all(field in s.indexes for s in segments if s.num_rows > 0)


# -- the delete index, versioned ---------------------------------------------------------------
# Every read takes a frozen copy of the delete index (a dict copy per query, O(deletes)). With
# a version bumped around each change, an unchanged index hands out the same frozen copy,
# tagged with (index, version) so the liveness caches above know when to recompute.
_DELTA_MUTATORS = ("add_batch", "add_table", "gc_below")  # rebuild_from builds a new index
_tokens = itertools.count(1)


def _versioned(method):
    def wrapper(self, *args, **kwargs):
        self._imgsearch_version = getattr(self, "_imgsearch_version", 0) + 1  # readers copy afresh meanwhile
        try:
            return method(self, *args, **kwargs)
        finally:
            self._imgsearch_version += 1
    wrapper._imgsearch_original = method
    return wrapper


def _frozen_copy(self):
    version = getattr(self, "_imgsearch_version", 0)
    cached = getattr(self, "_imgsearch_frozen", None)
    if cached is not None and cached[0] == version:
        return cached[1]
    token = self.__dict__.get("_imgsearch_token")
    if token is None:
        token = self._imgsearch_token = next(_tokens)  # unlike id(), never reused
    copy = _frozen_copy._imgsearch_original(self)
    copy._imgsearch_key = (token, version)
    if getattr(self, "_imgsearch_version", 0) == version:  # nothing changed while copying
        self._imgsearch_frozen = (version, copy)
    return copy


def _patch_delta_index(on: bool) -> None:
    from milvus_lite.storage.delta_index import DeltaIndex

    for name in _DELTA_MUTATORS + ("frozen_copy",):
        current = getattr(DeltaIndex, name)
        original = getattr(current, "_imgsearch_original", None)
        if on and original is None:
            if name == "frozen_copy":
                _frozen_copy._imgsearch_original = current
                setattr(DeltaIndex, name, _frozen_copy)
            else:
                setattr(DeltaIndex, name, _versioned(current))
        elif not on and original is not None:
            setattr(DeltaIndex, name, original)


# -- BM25 scoring, vectorised ---------------------------------------------------------------
# Milvus Lite's SparseInvertedIndex.search scores every posting of every query term in a
# Python loop (~1.7 us per posting). A tag shared by a tenth of a million images is 100k
# postings: ~0.2 s per query term. The same formula over numpy arrays of each posting list
# (built once per index, on first use of the term) gives the same scores and the same order.

def _posting_arrays(index, term) -> tuple[np.ndarray, np.ndarray] | None:
    """(local ids, term frequencies) of one term's posting list, cached on the index; the
    cache is dropped when the index is rebuilt (``build`` replaces its posting-list dict)."""
    postings = index._posting_lists
    cache = getattr(index, "_imgsearch_postings", None)
    if cache is None or cache[0] is not postings:
        cache = (postings, {})
        index._imgsearch_postings = cache
    arrays = cache[1].get(term)
    if arrays is None:
        posting = postings.get(term)
        if not posting:
            return None
        ids = np.fromiter((p[0] for p in posting), dtype=np.int64, count=len(posting))
        tfs = np.fromiter((p[1] for p in posting), dtype=np.float64, count=len(posting))
        arrays = cache[1][term] = (ids, tfs)
    return arrays


def bm25_search_fast(self, query_sparse_vectors, top_k, valid_mask=None):
    """Drop-in for ``SparseInvertedIndex.search``: the same BM25 formula, arguments and
    results ((nq, top_k) local ids and -score distances, -1/inf padded; ties in the order the
    original meets the documents: query term by query term, posting by posting)."""
    from milvus_lite.index.sparse_common import empty_results, validate_mask

    valid_mask = validate_mask(valid_mask, len(self._doc_lengths))
    nq = len(query_sparse_vectors)
    all_ids, all_dists = empty_results(nq, top_k)
    if self.doc_count == 0:
        return all_ids, all_dists
    n_docs, k1, b = self.doc_count, self.k1, self.b
    avgdl = self.avgdl if self.avgdl > 0 else 1.0
    for qi in range(nq):
        touched: list[np.ndarray] = []
        parts: list[np.ndarray] = []
        for term, weight in (query_sparse_vectors[qi] or {}).items():
            arrays = _posting_arrays(self, term)
            if arrays is None:
                continue
            ids, tfs = arrays
            if valid_mask is not None:
                keep = valid_mask[ids]
                ids, tfs = ids[keep], tfs[keep]
                if not len(ids):
                    continue
            df = self._df[term]
            idf = math.log((n_docs - df + 0.5) / (df + 0.5) + 1.0)
            lengths = self._doc_lengths[ids].astype(np.float64)  # only the documents of this term
            norm = (tfs * (k1 + 1.0)) / (tfs + k1 * (1.0 - b + b * lengths / avgdl))
            touched.append(ids)
            parts.append(idf * norm * float(weight))
        if not touched:
            continue
        ids = np.concatenate(touched)
        docs, first = np.unique(ids, return_index=True)
        scores = np.zeros(len(docs), dtype=np.float64)
        np.add.at(scores, np.searchsorted(docs, ids), np.concatenate(parts))
        k = min(top_k, len(docs))
        order = np.lexsort((first, -scores))[:k]  # best first; ties: first met first
        all_ids[qi, :k] = docs[order]
        all_dists[qi, :k] = -scores[order]
    return all_ids, all_dists


def milvus_lite_version() -> str | None:
    try:
        return metadata.version("milvus-lite")
    except metadata.PackageNotFoundError:
        return None


def install() -> bool:
    """Use :func:`execute_search_fast` for dense searches of Milvus Lite in this process.
    Idempotent; returns whether the fast path is active (False: an untested Milvus Lite
    version, which keeps its own executor)."""
    global _installed, _original, _original_assemble, _original_mask, _original_sparse, _original_bm25
    with _lock:
        if _installed:
            return True
        version = milvus_lite_version()
        if version not in SUPPORTED_VERSIONS:
            log.info("milvus-lite %s: keeping its own search executor", version)
            return False
        from milvus_lite.engine import collection
        from milvus_lite.search import assembler, bitmap, executor_indexed

        _original = executor_indexed.execute_search_with_index
        _original_assemble = assembler.assemble_candidates
        _original_mask = bitmap.build_valid_mask
        collection.execute_search_with_index = execute_search_fast
        collection.assemble_candidates = assemble_candidates_fast
        bitmap.build_valid_mask = build_valid_mask_fast
        _original_sparse = collection.Collection._search_sparse
        collection.Collection._search_sparse = search_sparse_fast
        from milvus_lite.index.sparse_inverted import SparseInvertedIndex

        _original_bm25 = SparseInvertedIndex.search
        SparseInvertedIndex.search = bm25_search_fast
        _patch_delta_index(True)
        _installed = True
        return True


def uninstall() -> None:
    """Back to Milvus Lite's own executor (benchmarks compare the two)."""
    global _installed
    with _lock:
        if _installed:
            from milvus_lite.engine import collection
            from milvus_lite.search import bitmap

            collection.execute_search_with_index = _original
            collection.assemble_candidates = _original_assemble
            bitmap.build_valid_mask = _original_mask
            collection.Collection._search_sparse = _original_sparse
            from milvus_lite.index.sparse_inverted import SparseInvertedIndex

            SparseInvertedIndex.search = _original_bm25
            _patch_delta_index(False)
            _installed = False
