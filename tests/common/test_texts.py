"""The texts collection on Milvus Lite: BM25 for exact codes, dense vectors for paraphrases,
replacement without stale rows, deletion by image id, TEXT_MATCH for must-words."""

from __future__ import annotations

import pytest

from common.errors import ModelMismatchError
from common.models.text import load_text_encoder
from common.texts import TextItem, TextStore, text_id


@pytest.fixture
def texts(make_settings):
    settings = make_settings()
    encoder = load_text_encoder(settings)
    store = TextStore(settings)
    store.ensure(encoder.label, encoder.dim)

    def put(image_id: int, items: list[TextItem]) -> None:
        store.replace(image_id, items, encoder.encode([i.text for i in items]))

    return store, encoder, put


DOCS = {
    1: [TextItem("ocr", "SERIAL XK-4471-B", 0.99, (0, 0, 10, 0, 10, 5, 0, 5)),
        TextItem("ocr", "made in Germany", 0.97)],
    2: [TextItem("ocr", "Fresh coffee beans roasted daily", 0.98), TextItem("tag", "cup", 0.4)],
    3: [TextItem("caption", "a dog running on a sunny beach"), TextItem("tag", "dog", 0.8)],
    4: [TextItem("ocr", "INVOICE 2026-0088 total due 431 EUR", 0.95)],
}


def test_exact_codes_by_bm25_and_paraphrases_by_dense_vectors(texts):
    store, encoder, put = texts
    for image_id, items in DOCS.items():
        put(image_id, items)
    assert store.search_bm25(["XK-4471-B"], 3)[0][0].image_id == 1
    assert store.search_bm25(["2026-0088"], 3)[0][0].image_id == 4
    top = store.search_bm25(["coffee"], 3)[0][0]
    assert (top.image_id, top.kind, top.text) == (2, "ocr", "Fresh coffee beans roasted daily")
    paraphrases = {"a bill that has to be paid": 4, "a puppy at the seaside": 3, "espresso": 2}
    for query, expected in paraphrases.items():
        assert store.search_dense(encoder.encode([query]), 1)[0][0].image_id == expected, query
    rows = store.rows_of(1)
    assert [(r["kind"], r["position"], r["text"]) for r in rows] == [("ocr", 0, "SERIAL XK-4471-B"),
                                                                   ("ocr", 1, "made in Germany")]
    assert rows[0]["box"] == pytest.approx([0, 0, 10, 0, 10, 5, 0, 5])


def test_replacing_leaves_no_stale_rows_and_ids_are_stable(texts):
    store, _, put = texts
    put(1, DOCS[1])
    put(1, [TextItem("ocr", "SERIAL ZZ-9")])  # the image changed: one line now
    assert [r["text"] for r in store.rows_of(1)] == ["SERIAL ZZ-9"]
    assert store.search_bm25(["Germany"], 5)[0] == []
    assert text_id(1, "ocr", 0) == text_id(1, "ocr", 0) != text_id(1, "caption", 0)
    put(1, [TextItem("ocr", "SERIAL ZZ-9")])  # same again: idempotent
    assert len(store.rows_of(1)) == 1


def test_replace_of_one_kind_keeps_the_others_and_delete_removes_all(texts):
    store, encoder, put = texts
    put(2, DOCS[2])
    store.replace_many({2: ([TextItem("tag", "mug", 0.5)], list(encoder.encode(["mug"])))}, kinds=("tag",))
    assert [(r["kind"], r["text"]) for r in store.rows_of(2)] == [("ocr", "Fresh coffee beans roasted daily"),
                                                                 ("tag", "mug")]
    put(3, DOCS[3])
    from common.texts import delete_texts

    delete_texts(store.settings, [2, 999])
    assert store.rows_of(2) == [] and len(store.rows_of(3)) == 2


def test_must_words_match_whole_tokens_case_insensitively(texts):
    store, _, put = texts
    for image_id, items in DOCS.items():
        put(image_id, items)
    assert store.images_containing([1, 2, 3, 4], ["xk-4471"]) == {1}
    assert store.images_containing([1, 2, 3, 4], ["COFFEE", "daily"]) == {2}
    assert store.images_containing([1, 2, 3, 4], ["coffee", "dog"]) == set()
    assert store.images_containing([1, 2, 3, 4], ["coff"]) == set()  # tokens, not substrings
    assert store.images_containing([3, 4], ["dog"]) == {3}


def test_another_text_model_is_refused(texts):
    store, encoder, _ = texts
    with pytest.raises(ModelMismatchError, match="text model"):
        store.ensure("some-other-model", encoder.dim)
