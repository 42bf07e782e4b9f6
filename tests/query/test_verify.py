"""ORB + RANSAC verification on real photos: copies verify (mirrors too), distinct photos do not."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("cv2", reason="opencv-python-headless verifies near-duplicates")

from query.verify import MIN_INLIERS, best_inliers, features, query_features, rerank  # noqa: E402

NEARDUP = Path(__file__).resolve().parents[2] / "evalsets" / "neardup"


def test_a_crop_and_a_mirror_verify_and_a_distinct_photo_does_not():
    query = query_features(Image.open(NEARDUP / "rocket" / "original.jpg"))
    assert best_inliers(query, features(Image.open(NEARDUP / "rocket" / "crop70.jpg"))) >= MIN_INLIERS
    assert best_inliers(query, features(Image.open(NEARDUP / "rocket" / "mirror.jpg"))) >= MIN_INLIERS
    for other in ("camera/original.jpg", "coins/original.jpg", "_distractors/lfw-face-035.jpg"):
        assert best_inliers(query, features(Image.open(NEARDUP / other))) < MIN_INLIERS // 2, other


def test_a_blank_image_has_no_keypoints_and_no_inliers():
    blank = features(Image.new("RGB", (64, 64), (128, 128, 128)))
    assert best_inliers(query_features(Image.open(NEARDUP / "rocket" / "original.jpg")), blank) == 0


def test_rerank_moves_verified_candidates_first_most_inliers_first():
    assert rerank([5, 6, 7, 8], {7: 30, 8: 90, 6: 3}, min_inliers=20) == [8, 7, 5, 6]
    assert rerank([5, 6], {}, min_inliers=20) == [5, 6]
