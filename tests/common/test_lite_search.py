"""The vectorised Milvus Lite search executor (common.lite_search), against real Milvus Lite:
after inserts, upserts, deletes, flushes and compaction its answers are those of an exact
scan over what the collection should hold, and those of Milvus Lite's own executor."""

from __future__ import annotations

import numpy as np
import pytest

from common import lite_search
from common.models.clip import ModelSpec
from common.store import ImageStore

DIM = 16
SPEC = ModelSpec("toy-model", "toy-weights", "abc123", DIM)


def _row(i: int, vec: np.ndarray, tag: str = "a") -> dict:
    return {"id": i, "uri": f"file:///x/{i}-{tag}.png", "etag": tag, "source": "file:///x", "width": 1,
            "height": 1, "bytes": 1, "mime": "image/png", "indexed_at": 0, "model": "toy-model@abc123",
            "clip": list(map(float, vec)), "phash": [1.0] * 64}


def _unit(a: np.ndarray) -> np.ndarray:
    return (a / np.linalg.norm(a, axis=-1, keepdims=True)).astype(np.float32)


def _exact(truth: dict[int, np.ndarray], query: np.ndarray, k: int, skip: set[int] = frozenset()) -> list[int]:
    ids = [i for i in truth if i not in skip]
    mat = np.stack([truth[i] for i in ids])
    scores = mat @ query
    order = np.argsort(-scores, kind="stable")[:k]
    return [ids[j] for j in order]


def _check(store: ImageStore, truth: dict[int, np.ndarray], queries: np.ndarray, k: int = 12) -> None:
    found = store.search(queries, k)
    for q, hits in zip(queries, found):
        assert [h.id for h in hits] == _exact(truth, q, k)
        for h in hits:  # the entity is the row's newest version
            assert h.uri.startswith(f"file:///x/{h.id}-")
    # with a filter (exclusion) too
    skip = set(list(truth)[:5])
    for q, hits in zip(queries, store.search(queries, k, exclude_ids=sorted(skip))):
        assert [h.id for h in hits] == _exact(truth, q, k, skip)


def test_fast_executor_is_installed_for_a_local_file(make_settings):
    ImageStore(make_settings())
    assert lite_search.install() is True
    from milvus_lite.engine import collection

    assert collection.execute_search_with_index is lite_search.execute_search_fast
    assert collection.assemble_candidates is lite_search.assemble_candidates_fast
    assert collection.Collection._search_sparse is lite_search.search_sparse_fast


@pytest.mark.parametrize("index", ["FLAT", "HNSW"])
def test_answers_follow_upserts_and_deletes_across_segments_and_memtable(make_settings, index):
    rng = np.random.default_rng(3)
    store = ImageStore(make_settings(vector_index=index))
    store.ensure(SPEC)
    truth: dict[int, np.ndarray] = {}
    queries = _unit(rng.normal(size=(6, DIM)))

    def put(ids, tag):
        vecs = _unit(rng.normal(size=(len(ids), DIM)))
        store.upsert([_row(i, v, tag) for i, v in zip(ids, vecs)])
        truth.update({i: v for i, v in zip(ids, vecs)})

    def drop(ids):
        store.delete(ids)
        for i in ids:
            truth.pop(i, None)

    put(range(1, 301), "a")
    _check(store, truth, queries)             # memtable only
    store.flush()
    _check(store, truth, queries)             # one sealed segment
    put(range(250, 351), "b")                 # newer versions in the memtable shadow the segment
    drop([5, 6, 7, 260, 340])                 # pending deletes of sealed and unsealed rows
    _check(store, truth, queries)
    store.flush()                             # two segments, the same key in both; tombstones
    _check(store, truth, queries)
    put(range(1, 40), "c")
    drop(range(100, 160))
    store.flush()
    _check(store, truth, queries)
    put(range(500, 520), "d")                 # unflushed rows and deletes again, for the scalar reads
    drop([501, 8, 30])
    _check(store, truth, queries)

    def reads():
        probe = [1, 5, 8, 30, 39, 40, 120, 200, 255, 300, 345, 350, 501, 502, 519, 9999]
        return (store.search(queries, 20), store.count(), store.uris(probe), store.uris(probe, 'etag == "c"'),
                sorted(r["id"] for page in store.scan(["id"], batch_size=64) for r in page),
                store.get(255), store.get(501))

    fast = reads()
    lite_search.uninstall()
    try:
        own = reads()
    finally:
        lite_search.install()
    # the fast paths and Milvus Lite's own agree, entities included, and both match the truth
    assert [[(h.id, h.uri, round(h.score, 5)) for h in hits] for hits in fast[0]] == \
        [[(h.id, h.uri, round(h.score, 5)) for h in hits] for hits in own[0]]
    assert fast[1:] == own[1:]
    assert fast[1] == len(truth) and fast[4] == sorted(truth)
    assert set(fast[2]) == {i for i in [1, 5, 8, 30, 39, 40, 120, 200, 255, 300, 345, 350, 501, 502, 519] if i in truth}
    assert fast[5]["etag"] == "b" and fast[6] is None


def test_bm25_and_dense_text_search_agree_with_milvus_lites_own(make_settings):
    from common.texts import TextItem, TextStore

    rng = np.random.default_rng(4)
    store = TextStore(make_settings())
    store.ensure("toy-text-model", 8)
    words = ["red", "shoe", "bag", "coat", "blue", "code", "sale", "new"]

    def put(image_ids, salt):
        per_image = {}
        for i in image_ids:
            items = [TextItem("ocr", f"{words[i % 8]} {words[(i * 3 + salt) % 8]} item{i}"),
                     TextItem("tag", words[i % 5])]
            per_image[i] = (items, _unit(rng.normal(size=(2, 8))).tolist())
        store.replace_many(per_image)

    queries = ["red shoe", "bag sale", "item7", "item130", "coat", "blue code new"]
    vq = _unit(rng.normal(size=(4, 8)))

    def answers():
        return ([[(h.image_id, h.kind, h.text, round(h.score, 4)) for h in hits]
                 for hits in store.search_bm25(queries, 15)],
                [[(h.image_id, h.text, round(h.score, 4)) for h in hits] for hits in store.search_dense(vq, 15)])

    def compare():
        fast = answers()
        lite_search.uninstall()
        try:
            own = answers()
        finally:
            lite_search.install()
        assert fast == own
        return fast

    put(range(1, 200), 0)
    compare()
    store.flush()
    put(range(100, 150), 1)              # replaced texts: the old rows are deleted, new ones unflushed
    store.delete_images([7, 8, 9])
    bm25, _ = compare()
    assert bm25[2] == []                 # item7's image is gone
    store.flush()
    put(range(120, 140), 2)
    store.flush()
    bm25, _ = compare()
    assert {h[0] for h in bm25[3]} == {130} and all("item130" in h[2] or h[1] == "tag" for h in bm25[3][:1])


def test_vectorised_bm25_scores_and_orders_as_milvus_lites_own():
    """bm25_search_fast against SparseInvertedIndex.search itself (Milvus Lite's code), on an
    index with long shared posting lists, ties, a query weight, deleted rows and a term that
    no document has: the same local ids in the same order, the same distances."""
    from milvus_lite.index.sparse_inverted import SparseInvertedIndex

    rng = np.random.default_rng(7)
    docs = []
    for i in range(3000):
        terms = {int(t): float(rng.integers(1, 4)) for t in rng.choice(40, size=rng.integers(1, 6), replace=False)}
        if i % 7 == 0:
            terms = {1: 1.0, 2: 1.0}  # many identical documents: exact ties
        docs.append(terms)
    index = SparseInvertedIndex()
    index.build(docs, valid_mask=np.array([i % 11 != 0 for i in range(3000)]))
    queries = [{1: 1.0, 2: 1.0}, {3: 1.0}, {5: 2.0, 7: 1.0, 9: 1.0}, {999: 1.0}, {}, {1: 1.0, 999: 1.0}]
    mask = np.array([i % 5 != 0 for i in range(3000)])
    for valid in (None, mask):
        fast = lite_search.bm25_search_fast(index, queries, 25, valid_mask=valid)
        own = lite_search._original_bm25(index, queries, 25, valid_mask=valid)
        assert np.array_equal(fast[0], own[0])
        assert np.allclose(fast[1], own[1], rtol=1e-5, equal_nan=True)
    assert (lite_search.bm25_search_fast(index, queries, 25)[0][0] >= 0).sum() == 25


def test_rows_read_column_wise_are_the_engines_query_rows(make_settings):
    """direct_rows (texts' dense lookups) returns the rows Milvus Lite's own query returns,
    over sealed segments, replaced and deleted rows and the memtable."""
    from common.texts import TextItem, TextStore

    settings = make_settings()
    store = TextStore(settings)
    store.ensure("toy-text-model", 4)
    rng = np.random.default_rng(3)
    shared = ["sale", "new", "red shoe"]

    def put(ids, salt):
        store.replace_many({i: ([TextItem("tag", shared[(i + salt) % 3]), TextItem("ocr", f"line {i} {salt}")],
                                _unit(rng.normal(size=(2, 4))).tolist()) for i in ids})

    put(range(1, 120), 0)
    store.flush()
    put(range(50, 80), 1)
    store.delete_images([3, 4])
    db = settings.effective_milvus_uri()
    fields = ["id", "image_id", "kind", "text", "text_key"]
    keys = sorted({int(r["text_key"]) for r in store.client.query(store.alias, filter="kind == 'tag'",
                                                                      output_fields=["text_key"], limit=1000)})
    row_ids = sorted(int(r["id"]) for r in store.client.query(store.alias, filter="image_id in [3, 5, 60, 119]",
                                                              output_fields=["id"], limit=1000))
    # "field in [ints]" is answered from the sealed segments' sorted columns (and the
    # memtable by Milvus Lite's own filter); any other expression by Milvus Lite's filter
    for expr in (f"text_key in {keys[:2]}", f"text_key in {keys}", "image_id in [3, 50, 51, 119]",
                 f"id in {row_ids + [7, 10 ** 15]}", f"text_key in {keys[:1]} and image_id in [50, 60]",
                 "kind == 'tag'"):
        fast = lite_search.direct_rows(db, store.alias, expr, fields)
        own = store.client.query(store.alias, filter=expr, output_fields=fields, limit=16384)
        assert sorted(map(sorted, (r.items() for r in fast))) == sorted(map(sorted, (r.items() for r in own)))
        assert fast
    sealed = [s for s in lite_search.local_collection(db, store.physical_name())._read_snapshot()[0] if s.num_rows]
    assert sealed and all(m.any() for m in lite_search._sealed_in_list_masks(sealed, f"text_key in {keys}"))
    assert lite_search._sealed_in_list_masks(sealed, "kind == 'tag'") is None
    assert lite_search.direct_rows(db, store.alias, "image_id in [3, 4]", fields) == []
    assert lite_search.direct_rows(db, store.alias, "image_id in []", fields) == []
    columns = lite_search.direct_columns(db, store.alias, "image_id in [50, 119]", ["id", "image_id"])
    assert sorted(columns["image_id"]) == [50, 50, 119, 119] and len(columns["id"]) == 4


def _flushed_store(settings, rng: np.random.Generator, n: int) -> ImageStore:
    """An images collection of ``n`` random rows, flushed into a sealed segment."""
    store = ImageStore(settings)
    store.ensure(SPEC)
    store.upsert([_row(i, v) for i, v in enumerate(_unit(rng.normal(size=(n, DIM))), 1)])
    store.flush()
    return store


def test_searching_collections_in_turn_keeps_each_ones_segment_keys(make_settings, monkeypatch):
    """A hybrid search reads three collections in turn; the keys of one's segments must stay
    cached while another is searched (they were rebuilt on every query)."""
    from common.texts import TextItem, TextStore

    settings = make_settings()
    rng = np.random.default_rng(5)
    images = _flushed_store(settings, rng, 300)
    texts = TextStore(settings)
    texts.ensure("toy-text-model", 4)
    texts.replace_many({i: ([TextItem("tag", f"word{i % 9}")], _unit(rng.normal(size=(1, 4))).tolist())
                        for i in range(1, 300)})
    texts.flush()
    q = _unit(rng.normal(size=(1, DIM)))
    images.search(q, 5), texts.search_bm25(["word3"], 5), texts.search_dense(_unit(rng.normal(size=(1, 4))), 5)
    built = []
    original = lite_search._SegmentKeys.__init__

    def counting(self, segment):
        built.append(segment)
        original(self, segment)

    monkeypatch.setattr(lite_search._SegmentKeys, "__init__", counting)
    for _ in range(3):
        images.search(q, 5), texts.search_bm25(["word3"], 5), texts.search_dense(_unit(rng.normal(size=(1, 4))), 5)
    assert built == []


def test_the_key_cache_holds_no_segment(make_settings):
    """The key cache must not hold segments: once Milvus Lite lets a collection go (dropped,
    a retired version), its vectors, tables and indexes must be freeable (they were kept by
    the cache: a 1M-row benchmark grew past 19 GB)."""
    import gc

    from milvus_lite.storage.segment import Segment

    settings = make_settings()
    rng = np.random.default_rng(9)
    store = _flushed_store(settings, rng, 200)
    store.search(_unit(rng.normal(size=(1, DIM))), 5)
    assert lite_search._cache.keys  # the search cached its segments' keys
    root = str(settings.data_dir)
    ours = [o for o in gc.get_objects() if isinstance(o, Segment) and str(o.file_path).startswith(root)]
    assert ours
    cache = {id(lite_search._cache.keys), *(id(e) for e in lite_search._cache.keys.values())}
    for seg in ours:
        assert not [r for r in gc.get_referrers(seg) if id(r) in cache]
