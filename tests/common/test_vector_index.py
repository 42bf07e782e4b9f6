"""Vector indexes of new collections (real Milvus Lite): every row stays findable among
exact-duplicate vectors, which HNSW (Milvus' AUTOINDEX) does not guarantee."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from common.errors import ConfigError
from common.models.clip import ModelSpec
from common.settings import Settings
from common.store import ImageStore

DIM = 32
SPEC = ModelSpec("toy-model", "toy-weights", "abc123", DIM)


def _rows(vectors: np.ndarray) -> list[dict]:
    return [{"id": i + 1, "uri": f"file:///x/{i}.png", "etag": "e", "source": "file:///x", "width": 1,
             "height": 1, "bytes": 1, "mime": "image/png", "indexed_at": 0, "model": "toy-model@abc123",
             "clip": list(map(float, v)), "phash": [1.0] * 64} for i, v in enumerate(vectors)]


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


@pytest.mark.parametrize("index", ["auto", "IVF_FLAT"])
def test_unique_rows_are_found_among_many_exact_duplicates(make_settings, index):
    """600 rows share 4 vectors (a tag vocabulary, copies of one image); 40 rows are unique.
    Each unique row, searched with its own vector, must come back first."""
    rng = np.random.default_rng(7)
    common = _unit(rng.normal(size=(4, DIM)))
    unique = _unit(rng.normal(size=(40, DIM)))
    vectors = np.vstack([common[np.arange(600) % 4], unique]).astype(np.float32)
    settings = make_settings(vector_index=index)
    store = ImageStore(settings)
    store.ensure(SPEC)
    store.upsert(_rows(vectors))
    store.flush()
    expected = "FLAT" if index == "auto" else index  # Milvus Lite: exact search by default
    assert store.client.describe_index(store.alias, "clip")["index_type"] == expected
    hits = store.search(unique, 1)
    assert [h[0].id for h in hits] == list(range(601, 641))
    assert all(h[0].score == pytest.approx(1.0, abs=1e-4) for h in hits)


def test_vector_index_setting_is_checked():
    with pytest.raises(ConfigError, match="VECTOR_INDEX"):
        Settings.from_env({"IMGSEARCH_VECTOR_INDEX": "AUTOINDEX"})
    with pytest.raises(ConfigError, match="VECTOR_NPROBE"):
        Settings.from_env({"IMGSEARCH_VECTOR_NPROBE": "0"})


ROWS_FILE = Path(__file__).parent / "data" / "mixed_text_rows.json"


@pytest.mark.parametrize("index", ["auto", "IVF_FLAT"])
def test_every_ocr_line_of_the_mixed_set_finds_itself(make_settings, index):
    """The mixed evaluation set's text rows (3 tags shared by ~175 images each, 110 distinct
    OCR lines), embedded by the real text model: every OCR line is found by its own vector.
    (In the collection the evaluation built, Milvus Lite's AUTOINDEX (HNSW) did not find
    "marmalade" for the query "marmalade" at any ``ef``; written afresh here, HNSW happens to
    find them all, so this guards the default index rather than reproducing HNSW's failure.)"""
    from common.models.text import load_text_encoder
    from common.texts import TextItem, TextStore

    images = json.loads(ROWS_FILE.read_text())["images"]
    settings = make_settings(vector_index=index)
    encoder = load_text_encoder(settings)
    distinct = sorted({text for rows in images for _, text in rows})
    vector_of = dict(zip(distinct, encoder.encode(distinct)))
    store = TextStore(settings, "mixed")
    store.ensure(encoder.label, encoder.dim)
    store.replace_many({n + 1: ([TextItem(kind, text) for kind, text in rows], [vector_of[t] for _, t in rows])
                        for n, rows in enumerate(images)})
    store.client.flush(store.alias)
    lines = sorted({text for rows in images for kind, text in rows if kind == "ocr"})
    hits = store.search_dense([vector_of[t] for t in lines], 1)
    missed = [line for line, h in zip(lines, hits) if not h or h[0].text != line]
    assert not missed, f"{len(missed)} of {len(lines)} OCR lines not found by their own vector: {missed[:5]}"
