"""Bad (and odd-but-valid) files for ingest tests, made in code so nothing opaque is committed."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def bad_files(max_bytes: int) -> dict[str, tuple[bytes, str]]:
    """name -> (content, expected failure reason)."""
    good = _png(Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)))
    corrupt = bytearray(good)
    corrupt[60:600] = b"\x00" * 540
    return {
        "zero.jpg": (b"", "empty"),
        "truncated.png": (good[: len(good) // 2], "truncated"),
        "page.jpg": (b"<!DOCTYPE html><html><title>Not found</title></html>", "unsupported_type"),
        "notes.txt": (b"not an image at all\n", "unsupported_type"),
        "corrupt.png": (bytes(corrupt), "undecodable"),
        "huge.png": (good + b"\x00" * (max_bytes + 1 - len(good)), "too_large"),
        "bomb.png": (_png(Image.new("L", (6000, 6000))), "too_many_pixels"),
    }
