"""The perceptual hash on real photos: copies stay close, distinct photos stay apart."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.models.phash import (
    hamming_from_score,
    phash_bits,
    phash_query_vectors,
    phash_vector,
    query_variants,
    score_for_hamming,
)

NEARDUP = Path(__file__).resolve().parents[2] / "evalsets" / "neardup"


def bits(path: Path) -> np.ndarray:
    return phash_bits(Image.open(path))


def test_vector_form_and_score_conversion():
    vector = phash_vector(Image.open(NEARDUP / "coins" / "original.jpg"))
    assert len(vector) == 64 and set(vector) <= {-1.0, 1.0}
    assert 20 <= vector.count(1.0) <= 44  # signs of a centred image: neither all on nor all off
    for distance in (0, 6, 64):
        assert hamming_from_score(score_for_hamming(distance)) == distance
    same = np.dot(vector, vector)
    assert hamming_from_score(same) == 0


def test_reencoded_and_resized_copies_hash_alike():
    original = Image.open(NEARDUP / "chelsea" / "original.jpg")
    buf = io.BytesIO()
    original.resize((120, 80)).save(buf, "JPEG", quality=25)
    copy = Image.open(io.BytesIO(buf.getvalue()))
    assert int((phash_bits(original) != phash_bits(copy)).sum()) <= 4


@pytest.mark.parametrize("a, b", [("astronaut", "camera"), ("coffee", "rocket"), ("moon", "coins")])
def test_distinct_photos_are_far_apart(a, b):
    assert int((bits(NEARDUP / a / "original.jpg") != bits(NEARDUP / b / "original.jpg")).sum()) > 12


def test_query_variants_reach_a_crop_the_whole_image_misses():
    original = Image.open(NEARDUP / "rocket" / "original.jpg")
    crop = bits(NEARDUP / "rocket" / "crop70.jpg")
    variants = query_variants(original)
    assert len(variants) == 46 and variants[0].size == original.size
    direct = int((phash_bits(original) != crop).sum())
    best = min(int((phash_bits(v) != crop).sum()) for v in variants)
    assert best < direct
    vectors = phash_query_vectors(original)
    assert vectors[0] == phash_vector(original) and len(vectors) == 46


def test_a_mirrored_copy_is_far_from_the_stored_hash_but_met_by_the_mirrored_variants():
    original = Image.open(NEARDUP / "rocket" / "original.jpg")
    mirror = bits(NEARDUP / "rocket" / "mirror.jpg")
    assert int((phash_bits(original) != mirror).sum()) > 12  # the plain hash is not flip-invariant
    assert len(query_variants(original, mirrored=False)) == 23
    best = min(int((phash_bits(v) != mirror).sum()) for v in query_variants(original))
    assert best <= 4
