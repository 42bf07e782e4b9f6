"""Decode + resize outside the encoder's thread: the same CLIP input as open_clip's preprocess."""

from __future__ import annotations

import io

import numpy as np
import open_clip
from PIL import Image

from common.decode import DecodePool, decode_resize, decode_resize_torch, normalise


def photo_jpeg(size=(1024, 768), seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (size[1] // 32, size[0] // 32, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(small).resize(size, Image.Resampling.BICUBIC).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def test_every_path_gives_open_clips_input_up_to_resampling():
    datas = [photo_jpeg(), photo_jpeg((640, 960), 1), photo_jpeg((300, 200), 2)]
    reference = open_clip.image_transform(224, is_train=False)  # Resize(224, bicubic), CenterCrop, Normalize
    expected = np.stack([reference(Image.open(io.BytesIO(d)).convert("RGB")).numpy() for d in datas])
    one = np.stack([decode_resize(d, 224) for d in datas])
    assert one.shape == (3, 3, 224, 224) and one.dtype == np.uint8
    with DecodePool(2, 224) as pool:
        pooled = pool.batch(datas)
    assert np.array_equal(pooled, one)  # processes return exactly what one process computes
    via_torch = decode_resize_torch(datas, 224, "cpu").numpy()
    for batch in (one, via_torch):
        got = normalise(batch).numpy()
        assert got.shape == expected.shape
        diff = np.abs(got - expected)  # in units of the std: resampling differences only
        assert float(diff.mean()) < 0.01 and float(diff.max()) < 0.1
