"""Search is semantically right: held-out phrasings find their class, images find their kind.

Uses the reference model and the 200 bundled Fashion-MNIST test images (20 per class).
The text queries come from scripts/reference_eval_queries.json and must never appear in
the captions the model was trained with (checked below).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.errors import QueryError
from imgsearch.demo import class_of
from query.search import SearchService

ROOT = Path(__file__).resolve().parents[2]
EVAL_QUERIES = json.loads((ROOT / "scripts" / "reference_eval_queries.json").read_text())


@pytest.fixture(scope="module")
def service(indexed_samples):
    settings, _ = indexed_samples
    return SearchService(settings)


def precision_at_10(hits, expected: str) -> float:
    assert len(hits) == 10
    return sum(class_of(h.uri) == expected for h in hits) / 10


def test_eval_phrasings_never_appeared_in_training():
    from scripts.train_reference_model import training_captions

    captions = {c.lower() for per_class in training_captions() for c in per_class}
    assert len(captions) > 100
    for phrases in EVAL_QUERIES.values():
        for phrase in phrases:
            assert phrase.lower() not in captions


def test_text_to_image_precision_at_10(service):
    per_class = {}
    for cls, phrases in EVAL_QUERIES.items():
        per_class[cls] = sum(precision_at_10(service.search_text(p, 10), cls) for p in phrases) / len(phrases)
    mean = sum(per_class.values()) / len(per_class)
    assert len(per_class) == 10
    assert mean >= 0.6, per_class


def test_image_to_image_precision_at_10(service, samples_dir):
    scores = []
    for path in sorted(samples_dir.glob("*/*.png")):
        hits = service.search_like(path.as_uri(), 10)
        assert path.as_uri() not in {h.uri for h in hits}  # the query itself is left out
        scores.append(precision_at_10(hits, path.parent.name))
    assert len(scores) == 200
    assert sum(scores) / len(scores) >= 0.8


def test_query_image_file_finds_itself_first(service, samples_dir):
    path = sorted(samples_dir.glob("sneaker/*.png"))[3]
    hits = service.search_image(path.read_bytes(), 5)
    assert hits[0].uri == path.as_uri()
    assert hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


@pytest.mark.parametrize("call, message", [
    (lambda s: s.search_text("   "), "empty text query"),
    (lambda s: s.search_text("shoe", k=0), "k must be"),
    (lambda s: s.search_text("shoe", k=5000), "k must be"),
    (lambda s: s.search_image(b"<html></html>"), "bad query image"),
    (lambda s: s.search_image("/etc/passwd"), "must be given as bytes"),
    (lambda s: s.search(image="/etc/passwd"), "must be given as bytes"),
    (lambda s: s.search_like("²"), "--like takes an image id"),
    (lambda s: s.search_like(2**64), "must be an integer from 1 to"),
    (lambda s: s.search_like("s3://b/\udcff"), "lone surrogate"),
    (lambda s: s.search_like("12345"), "no indexed image"),
    (lambda s: s.search_like("x'; drop"), "--like takes an image id"),
    (lambda s: s.search_like('file:///a" or id > 0 or uri == "'), "no indexed image"),
])
def test_malformed_queries_get_clear_errors(service, call, message):
    with pytest.raises(QueryError, match=message):
        call(service)
