"""The texts collection on Milvus Lite: BM25 for exact codes, dense vectors for paraphrases,
replacement without stale rows, deletion by image id, TEXT_MATCH for must-words."""

from __future__ import annotations

import pytest

from common.errors import ModelMismatchError
from common.models.text import load_text_encoder
from common.texts import (
    ENGLISH_STOP_WORDS,
    TextItem,
    TextStore,
    bm25_query,
    query_words,
    text_id,
    text_key,
    words_coverage,
)


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


def test_bm25_query_drops_lucene_english_stop_words_only():
    assert len(ENGLISH_STOP_WORDS) == 33 and {"no", "not", "the", "with"} <= ENGLISH_STOP_WORDS
    assert bm25_query("Complimentary hot drinks FOR guests On Saturday").split() == [
        "Complimentary", "hot", "drinks", "guests", "Saturday"]
    assert bm25_query("SERIAL XK-4471-B, made in Germany") == "SERIAL XK-4471-B, made   Germany"
    assert bm25_query("it's open") == "it's open"  # one token to the analyser: kept
    assert bm25_query("To be, or not to be") == "To be, or not to be"  # only stop words: unchanged
    assert bm25_query("") == ""
    assert bm25_query("for the guests", frozenset()) == "for the guests"


def test_coverage_is_the_share_of_the_bm25_querys_words_a_text_holds():
    def query_coverage(query, text, stop_words=ENGLISH_STOP_WORDS):
        return words_coverage(query_words(query, stop_words), text)

    query = "no charge for an espresso for everyone who comes by in the next two days"
    assert query_words(query) == {"charge", "espresso", "everyone", "who", "comes", "next", "two", "days"}
    assert query_coverage(query, "Our shop is moving to a bigger building next month.") == 1 / 8
    assert query_coverage("SERIAL xk-4471-b", "serial XK-4471-B made in Germany") == 1.0
    assert query_coverage("XK-4471-B", "XK-4471") == 2 / 3  # tokens xk, 4471, b
    assert query_coverage("free coffee", "FREE coffee, free tea") == 1.0  # a word counts once
    assert query_coverage("to be or not to be", "to be") == 0.5  # only stop words: the query as it is
    assert query_coverage("the guests", "The guests") == 1.0 and query_coverage("guests", "") == 0.0
    assert query_coverage("for the guests", "for", frozenset()) == 1 / 3  # stop words kept: they count
    assert query_coverage("", "anything") == 0.0 and query_coverage("...", "anything") == 0.0


def test_bm25_ignores_query_stop_words_unless_the_query_has_nothing_else(texts, make_settings):
    store, _, put = texts
    put(10, [TextItem("ocr", "parking for staff on weekdays")])  # shares only "for", "on" with the query
    put(11, [TextItem("ocr", "visitors welcome")])  # shares a content word
    put(12, [TextItem("ocr", "to be or not to be")])
    query = "guided tours for visitors on request"
    assert [h.image_id for h in store.search_bm25([query], 5)[0]] == [11]
    assert store.search_bm25(["To be, or not to be?"], 5)[0][0].image_id == 12
    assert store.search_bm25(["SERIAL for"], 5)[0] == []  # "for" alone would have found row 10
    unfiltered = TextStore(make_settings(bm25_stopwords="none"))
    assert {h.image_id for h in unfiltered.search_bm25([query], 5)[0]} == {10, 11}


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


def test_shared_texts_get_one_vector_and_every_row_stays_findable(make_settings):
    """100k text rows, 10k of them one shared tag: the vectors hold one vector per distinct
    text, every row is found by BM25 and by dense search as an exact scan over rows finds it,
    and vectors no row carries any more are removed."""
    import numpy as np

    dim, n_images, shared = 8, 50_000, "handbag"
    rng = np.random.default_rng(5)
    store = TextStore(make_settings())
    store.ensure("toy-text-model", dim)
    unique_vecs = rng.normal(size=(90_000, dim)).astype(np.float32)
    unique_vecs /= np.linalg.norm(unique_vecs, axis=1, keepdims=True)
    shared_vec = np.ones(dim, dtype=np.float32) / np.sqrt(dim)
    per_image, rows, u = {}, [], 0  # rows: (image_id, text, vector) as an exact scan sees them
    for image_id in range(1, n_images + 1):
        items, vecs = [], []
        for _ in range(2):
            if image_id % 5 == 0 and not any(i.text == shared for i in items):
                text, vec = shared, shared_vec
            else:
                text, vec = f"code XK{u}", unique_vecs[u]
                u += 1
            items.append(TextItem("tag" if text == shared else "ocr", text))
            vecs.append(vec)
            rows.append((image_id, text, vec))
        per_image[image_id] = (items, vecs)
    assert len(rows) == 100_000 and sum(r[1] == shared for r in rows) == 10_000
    store.replace_many(per_image)
    store.flush()
    client, vectors = store.client, store.vectors_collection()
    assert client.query(vectors, filter="", output_fields=["count(*)"])[0]["count(*)"] == 90_001

    mat = np.stack([r[2] for r in rows])
    for q in [unique_vecs[7], unique_vecs[81_234], rng.normal(size=dim).astype(np.float32)]:
        q = q / np.linalg.norm(q)
        exact = np.sort(mat @ q)[::-1][:20]
        hits = store.search_dense([q], 20)[0]
        assert [h.score for h in hits] == pytest.approx(exact.tolist(), abs=1e-5)
        for h in hits:
            assert h.text == shared or h.score == pytest.approx(float(unique_vecs[int(h.text[7:])] @ q), abs=1e-5)
    # a unique row by its own vector and its own code; a shared-tag row among 10k copies
    for j in [0, 12_345, 89_999]:
        (image_id, text, _), = [r for r in rows if r[1] == f"code XK{j}"]
        assert (store.search_dense([unique_vecs[j]], 1)[0][0].image_id, text) == (image_id, f"code XK{j}")
        assert store.search_bm25([f"XK{j}"], 1)[0][0].image_id == image_id
    for image_id in [5, 24_995, 50_000]:
        top = store.search_dense([shared_vec], 5, image_filter=[image_id, 1])[0]
        assert top[0].image_id == image_id and top[0].text == shared and top[0].score == pytest.approx(1.0, abs=1e-5)
        assert image_id in {h.image_id for h in store.search_bm25([shared], 3, image_filter=[image_id])[0]}
    assert {h.text for h in store.search_dense([shared_vec], 50)[0]} == {shared}
    assert len(store.search_bm25([shared], 50)[0]) == 50

    # the shared vector stays while one row carries it; replaced texts drop theirs
    store.delete_images([i for i in range(5, n_images + 1, 5) if i != 50_000])
    store.replace(1, [TextItem("ocr", "fresh text")], [unique_vecs[0]])
    store.flush()
    assert [h.image_id for h in store.search_dense([shared_vec], 5)[0] if h.text == shared] == [50_000]
    store.delete_images([50_000])
    left = {int(r["id"]) for r in client.query(vectors, filter=f"id in {[text_key(shared), text_key('code XK0')]}",
                                               output_fields=["id"])}
    assert left == set()
    assert store.search_dense([unique_vecs[0]], 1)[0][0].text == "fresh text"
