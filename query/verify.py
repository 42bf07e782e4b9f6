"""Local-feature verification of near-duplicate candidates: ORB keypoints + RANSAC inliers.

Global descriptors (the 64-bit hash, the CLIP vector) see a 70% crop as a different
picture; local features do not: a crop, a rescale, a rotation or an overlay keeps most of
the keypoints of the part that is left, and a geometric model (a homography fitted with
RANSAC) separates the matches of a true copy, which agree on one transform, from the chance
matches of a similar-looking image, which do not. This module is that textbook step, as an
optional re-ranking of an image query's top candidates (bench/eval.py measures whether it
pays; it is not on by default).

ORB is not mirror-invariant; the query is also matched as its mirror image, so a
mirrored copy verifies too.

Plain functions over PIL images, no I/O: the caller fetches the candidates' pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

SIDE = 320              # images are matched at this longest side (ORB cost grows with pixels)
FEATURES = 500          # ORB keypoints per image
RATIO = 0.8             # Lowe's ratio test on the two nearest descriptors
RANSAC_PX = 6.0         # reprojection error (pixels at SIDE) for an inlier
MIN_INLIERS = 20        # inliers from which a candidate counts as a verified copy


@dataclass(frozen=True)
class Features:
    points: np.ndarray        # (n, 2) float32 keypoint positions
    descriptors: np.ndarray | None  # (n, 32) uint8, None when no keypoint was found


def _grey(image: Image.Image) -> np.ndarray:
    image = image.convert("L")  # every image at the same scale: small ones up, large ones down
    scale = SIDE / max(image.size)
    if abs(scale - 1) > 0.01:
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.Resampling.BILINEAR)
    return np.asarray(image)


def features(image: Image.Image) -> Features:
    """ORB keypoints and descriptors of ``image`` at SIDE pixels."""
    import cv2

    orb = cv2.ORB_create(nfeatures=FEATURES)
    keypoints, descriptors = orb.detectAndCompute(_grey(image), None)
    points = np.array([k.pt for k in keypoints], dtype=np.float32).reshape(-1, 2)
    return Features(points, descriptors)


def inliers(query: Features, candidate: Features) -> int:
    """RANSAC homography inliers among the ratio-tested ORB matches (0 when too few)."""
    import cv2

    if query.descriptors is None or candidate.descriptors is None or len(query.points) < 4 \
            or len(candidate.points) < 4:
        return 0
    pairs = cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(query.descriptors, candidate.descriptors, k=2)
    best: dict[int, object] = {}  # one match per candidate keypoint (many-to-one inflates inliers)
    for p in pairs:
        if len(p) == 2 and p[0].distance < RATIO * p[1].distance:
            if p[0].trainIdx not in best or p[0].distance < best[p[0].trainIdx].distance:
                best[p[0].trainIdx] = p[0]
    good = list(best.values())
    if len(good) < 8:
        return 0
    src = query.points[[m.queryIdx for m in good]]
    dst = candidate.points[[m.trainIdx for m in good]]
    _, mask = cv2.findHomography(src, dst, cv2.RANSAC, RANSAC_PX)
    return int(mask.sum()) if mask is not None else 0


def query_features(image: Image.Image) -> list[Features]:
    """The query's features, plain and mirrored."""
    return [features(image), features(ImageOps.mirror(image))]


def best_inliers(query: Sequence[Features], candidate: Features) -> int:
    return max(inliers(q, candidate) for q in query)


def rerank(order: Sequence[int], verified: dict[int, int], min_inliers: int = MIN_INLIERS) -> list[int]:
    """``order`` with the candidates of ``verified`` (id -> inliers) that reach
    ``min_inliers`` moved to the front, most inliers first (ties keep their order); the
    rest keep their order behind them."""
    position = {i: n for n, i in enumerate(order)}
    promoted = sorted((i for i in order if verified.get(i, 0) >= min_inliers),
                      key=lambda i: (-verified[i], position[i]))
    chosen = set(promoted)
    return promoted + [i for i in order if i not in chosen]
