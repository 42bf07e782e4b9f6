"""Perceptual hash (pHash): 64 bits that survive resizing, re-encoding, crops, small rotations
and overlays.

Stored as a ±1 float vector so that inner product = 64 - 2 * hamming distance, which both
Milvus Lite and Milvus server can search (binary vectors are not everywhere).

Why not the textbook pHash (signs of the 8x8 lowest DCT coefficients of a 32x32 grey image
against their median): on the Copydays-style set in ``evalsets/neardup`` it ranks near
duplicates at mAP 0.90 and fails on 70%-area crops (AP 0.71) and 10-degree rotations (0.72),
whose black corners and shifted borders move every coefficient. This hash

1. removes the mean and multiplies the 32x32 grey image by a Hann window, so borders (where
   crops, rotation corners and caption bars act) weigh little;
2. keeps the 64 lowest-frequency AC coefficients in zigzag order (the square 8x8 block
   holds (7, 7), the most shift-sensitive one, and the DC term, a wasted bit);
3. takes their signs (the window already centred the image, so 0 is the natural cut).

And at query time :func:`phash_query_vectors` also hashes shifted crops and small rotations
of the query image; the channel keeps each indexed image's best match. That lifts the
ranking to mAP 0.97 on the set (crops 0.92, rotations 0.99); figures in bench/RESULTS.md.

Mirrors (issue 18): the hash is not flip-invariant (a horizontal flip negates every
coefficient of odd horizontal frequency, about half the bits), so the query is also hashed
mirrored, with the same crops and rotations of the mirror. The stored hash stays the plain
image's: the duplicate listing (stored hash against stored hash) and its distances are
unchanged, and a flip-invariant stored hash would spend bits on symmetry instead of detail.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

_N = 32
# Orthonormal DCT-II matrix: coefficients = D @ X @ D.T.
_K = np.arange(_N)
_DCT = np.sqrt(2.0 / _N) * np.cos(np.pi * (2 * _K[None, :] + 1) * _K[:, None] / (2 * _N))
_DCT[0] /= np.sqrt(2.0)
_WINDOW = np.outer(np.hanning(_N + 2)[1:-1], np.hanning(_N + 2)[1:-1])
# The 64 lowest-frequency AC coefficients, zigzag order (u + v ascending), DC left out.
_ZIGZAG = sorted(((u, v) for u in range(_N) for v in range(_N)), key=lambda uv: (uv[0] + uv[1], uv[0]))[1:65]
_ROWS = np.array([u for u, _ in _ZIGZAG])
_COLS = np.array([v for _, v in _ZIGZAG])

# Query-time variants: crops keeping 70% / 85% of the area at 9 places, small rotations.
_CROP_SIDES = (0.837, 0.92)
_CROP_PLACES = (0.0, 0.5, 1.0)
_ROTATIONS = (-9.0, -5.0, 5.0, 9.0)


def phash_bits(image: Image.Image) -> np.ndarray:
    """64 booleans: signs of the windowed image's lowest-frequency DCT coefficients."""
    grey = np.asarray(image.convert("L").resize((_N, _N), Image.Resampling.LANCZOS), dtype=np.float64)
    coeffs = _DCT @ ((grey - grey.mean()) * _WINDOW) @ _DCT.T
    return coeffs[_ROWS, _COLS] > 0


def phash_vector(image: Image.Image) -> list[float]:
    """The hash as 64 floats in {-1, +1}, ready for an inner-product index."""
    return np.where(phash_bits(image), 1.0, -1.0).astype(np.float32).tolist()


def hamming_from_score(score: float) -> int:
    """Hamming distance from the inner product of two ±1 hash vectors (64 - 2 * hamming)."""
    return int(round((64 - score) / 2))


def score_for_hamming(distance: int) -> float:
    """The inner product two hashes at ``distance`` have (the search radius of a threshold)."""
    return 64.0 - 2.0 * distance


def query_variants(image: Image.Image, mirrored: bool = True) -> list[Image.Image]:
    """The image itself, then crops at 9 places for 2 sizes and 4 small rotations; with
    ``mirrored``, the same 23 again for the horizontally flipped image (46 in all).

    An indexed copy that is a crop or a rotation of the query matches one of these much
    better than the query itself; a copy that the query is a crop of is met from the other
    side when that copy is the query (the stored hash is always of the whole image)."""
    image = image.convert("RGB")
    if mirrored:
        return query_variants(image, False) + query_variants(ImageOps.mirror(image), False)
    out = [image]
    w, h = image.size
    for side in _CROP_SIDES:
        cw, ch = w * side, h * side
        for fx in _CROP_PLACES:
            for fy in _CROP_PLACES:
                x, y = (w - cw) * fx, (h - ch) * fy
                out.append(image.crop((round(x), round(y), round(x + cw), round(y + ch))))
    out.extend(image.rotate(a, resample=Image.Resampling.BICUBIC) for a in _ROTATIONS)
    return out


def phash_query_vectors(image: Image.Image) -> list[list[float]]:
    """Hash vectors of :func:`query_variants`; the first is the image's own hash."""
    return [phash_vector(v) for v in query_variants(image)]
