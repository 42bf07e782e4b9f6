"""Perceptual hash (pHash): 64 bits that survive resizing, re-encoding and small edits.

Stored as a ±1 float vector so that inner product = 64 - 2 * hamming distance, which both
Milvus Lite and Milvus server can search (binary vectors are not everywhere).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

_N = 32
# Orthonormal DCT-II matrix: hash = sign(D @ X @ D.T)[:8, :8] - median.
_K = np.arange(_N)
_DCT = np.sqrt(2.0 / _N) * np.cos(np.pi * (2 * _K[None, :] + 1) * _K[:, None] / (2 * _N))
_DCT[0] /= np.sqrt(2.0)


def phash_bits(image: Image.Image) -> np.ndarray:
    """64 booleans: the low-frequency DCT coefficients above their median."""
    grey = np.asarray(image.convert("L").resize((_N, _N), Image.Resampling.LANCZOS), dtype=np.float64)
    coeffs = (_DCT @ grey @ _DCT.T)[:8, :8].ravel()
    return coeffs > np.median(coeffs)


def phash_vector(image: Image.Image) -> list[float]:
    """The hash as 64 floats in {-1, +1}, ready for an inner-product index."""
    return np.where(phash_bits(image), 1.0, -1.0).astype(np.float32).tolist()
