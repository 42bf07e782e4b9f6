"""Structured filters: allow-listed fields, typed values, escaping proven against real Milvus Lite."""

from __future__ import annotations

import numpy as np
import pytest

from common.models.clip import ModelSpec
from common.store import ImageStore
from query.filters import FilterError, compile_filters

DIM = 8


def f(field, op, value) -> dict:
    return {"field": field, "op": op, "value": value}


def test_compiles_each_operator():
    assert compile_filters([]) == ""
    assert compile_filters([f("width", ">=", 28), f("mime", "==", "image/png")]) == \
        '(width >= 28) and (mime == "image/png")'
    assert compile_filters([f("id", "in", [1, 2])]) == "(id in [1, 2])"
    assert compile_filters([f("mime", "not_in", ["a", "b"])]) == '(mime not in ["a", "b"])'
    assert compile_filters([f("uri", "prefix", "s3://b/a")]) == '(uri >= "s3://b/a" and uri < "s3://b/b")'


@pytest.mark.parametrize("filt, fragment", [
    (f("model", "==", "x"), "unknown filter field 'model'"),
    (f("clip", "==", 1), "unknown filter field"),
    (f("uri", "<", "a"), "operator '<' is not allowed on uri"),
    (f("width", "prefix", 1), "operator 'prefix' is not allowed"),
    (f("width", ">", "1 or 1==1"), "width takes 64-bit integers"),
    (f("width", ">", True), "64-bit integers"),
    (f("width", ">", 2**63), "64-bit integers"),
    (f("mime", "==", 5), "mime takes strings"),
    (f("mime", "==", 'a"\n or id > 0'), "control characters"),
    (f("id", "in", []), "list of 1 to"),
    (f("id", "in", [1, "2"]), "64-bit integers"),
    (f("uri", "prefix", ""), "non-empty"),
    ({"field": "uri", "op": "==", "value": "x", "raw": "id > 0"}, "exactly the keys"),
    ("id > 0", "exactly the keys"),
])
def test_bad_filters_are_refused(filt, fragment):
    with pytest.raises(FilterError, match=fragment):
        compile_filters([filt])


@pytest.fixture
def store(make_settings):
    """A real Milvus Lite collection with a handful of rows (no model needed: random vectors)."""
    settings = make_settings()
    store = ImageStore(settings)
    store.ensure(ModelSpec("test-model", "none", "digest", DIM))
    rng = np.random.default_rng(0)
    uris = ['s3://b/a_1.png', 's3://b/a%2.png', 's3://b/ab.png', 's3://b/b.png', 's3://c/a.png',
            's3://b/quote".png', 's3://b/back\\slash.png']
    rows = []
    for i, uri in enumerate(uris):
        vec = rng.normal(size=DIM)
        rows.append({"id": i + 1, "uri": uri, "etag": "e", "source": "s3://b/", "width": 10 * (i + 1),
                     "height": 28, "bytes": 100, "mime": "image/png", "indexed_at": 0, "model": "test-model",
                     "clip": (vec / np.linalg.norm(vec)).tolist(), "phash": [1.0] * 64})
    store.upsert(rows)
    return store


def ids(store, filters) -> set[int]:
    hits = store.search([[1.0] + [0.0] * (DIM - 1)], 100, filter_expr=compile_filters(filters))[0]
    return {h.id for h in hits}


def test_filters_select_the_right_rows_in_milvus(store):
    assert ids(store, [f("width", ">", 40)]) == {5, 6, 7}
    assert ids(store, [f("width", ">=", 20), f("width", "<", 40)]) == {2, 3}
    assert ids(store, [f("uri", "prefix", "s3://b/a")]) == {1, 2, 3}
    assert ids(store, [f("uri", "prefix", "s3://b/a_")]) == {1}  # _ and % are not wildcards
    assert ids(store, [f("uri", "prefix", "s3://b/a%")]) == {2}
    assert ids(store, [f("uri", "==", 's3://b/quote".png')]) == {6}
    assert ids(store, [f("uri", "==", "s3://b/back\\slash.png")]) == {7}
    assert ids(store, [f("id", "not_in", [1, 2, 3])]) == {4, 5, 6, 7}


@pytest.mark.parametrize("crafted", [
    '" or id > 0 or uri == "',
    '\\" or id > 0 or uri == \\"',
    "' or id > 0 or uri == '",
    's3://b/a_1.png" || id >= 0 || uri == "x',
])
def test_crafted_values_match_literally_and_never_widen_the_search(store, crafted):
    assert ids(store, [f("uri", "==", crafted)]) == set()
    assert ids(store, [f("uri", "prefix", crafted)]) == set()
    assert ids(store, [f("mime", "in", [crafted])]) == set()
