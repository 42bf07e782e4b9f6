"""Decode and resize for the encoder outside its process (or on the GPU), so pixels keep up.

The embed stage decodes with PIL in a thread pool and preprocesses (resize, crop, to tensor,
normalise) in the encoder's own thread, one image after the other: on a large GPU the
encoder waits for that Python loop (clip-retrieval's ViT-B/32 on one A100 is bound by
resizing at ~2,500 images/s). Two paths that take it off the encoder's thread:

- :class:`DecodePool`: worker *processes* turn JPEG/PNG bytes into ``size x size`` uint8
  RGB arrays, already resized and centre-cropped. JPEGs are decoded at a reduced DCT scale
  first (PIL ``draft``, never below the target size), so a 4000 px photo costs a fraction of
  a full decode. Only bytes go in and ~150 KB arrays come out.
- :func:`decode_resize_torch`: ``torchvision.io.decode_jpeg`` on a batch (nvJPEG on CUDA),
  then one antialiased bicubic resize and crop on the device.

Both give uint8 ``(N, 3, size, size)`` batches; :func:`normalise` turns them into the CLIP
input on the encoder's device (a few element-wise ops there). The result matches open_clip's
``Resize(size, bicubic) -> CenterCrop(size) -> ToTensor -> Normalize`` up to resampling
differences (bench/decode.py reports the cosine of the vectors against that path).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _resized(w: int, h: int, size: int) -> tuple[int, int]:
    """Shorter side to ``size``, the longer one truncated as torchvision's Resize does."""
    if w <= h:
        return size, int(size * h / w)
    return int(size * w / h), size


def decode_resize(data: bytes, size: int, max_pixels: int = 100_000_000) -> np.ndarray:
    """Bytes -> (3, size, size) uint8: shorter side to ``size`` (bicubic), centre crop."""
    Image.MAX_IMAGE_PIXELS = max_pixels
    img = Image.open(io.BytesIO(data))
    if img.format == "JPEG":
        w, h = img.size
        scale = min(w, h) / size
        if scale >= 2:  # decode at 1/2, 1/4 or 1/8 of the size, never below the target
            img.draft("RGB", (max(size, int(w / scale * 1.0001)), max(size, int(h / scale * 1.0001))))
    img = img.convert("RGB")
    nw, nh = _resized(*img.size, size)
    img = img.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = round((nw - size) / 2), round((nh - size) / 2)  # torchvision's CenterCrop
    img = img.crop((left, top, left + size, top + size))
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).copy()


def _decode_many(args: tuple[list[bytes], int]) -> np.ndarray:
    datas, size = args
    return np.stack([decode_resize(d, size) for d in datas])


class DecodePool:
    """``workers`` processes decoding and resizing for one encoder (``with DecodePool(...)``).

    :meth:`batch` splits a batch into one chunk per worker (few, large messages) and returns
    the uint8 ``(N, 3, size, size)`` array in order."""

    def __init__(self, workers: int, size: int):
        import multiprocessing

        self.size = size
        self.workers = max(1, workers)
        self.pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))

    def batch(self, datas: Sequence[bytes]) -> np.ndarray:
        step = max(1, -(-len(datas) // self.workers))
        chunks = [(list(datas[i:i + step]), self.size) for i in range(0, len(datas), step)]
        return np.concatenate(list(self.pool.map(_decode_many, chunks)))

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "DecodePool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def decode_resize_torch(datas: Sequence[bytes], size: int, device: str = "cpu"):
    """``torchvision.io.decode_jpeg`` (nvJPEG when ``device`` is CUDA) + resize + crop on
    ``device`` -> uint8 ``(N, 3, size, size)`` tensor there. JPEG only."""
    import torch
    import torch.nn.functional as F
    from torchvision.io import ImageReadMode, decode_jpeg

    encoded = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
    images = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)
    out = torch.empty((len(images), 3, size, size), dtype=torch.uint8, device=device)
    for n, img in enumerate(images):  # shapes differ: one resize each, all on the device
        nw, nh = _resized(img.shape[2], img.shape[1], size)
        resized = F.interpolate(img[None].float(), size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
        top, left = round((nh - size) / 2), round((nw - size) / 2)
        out[n] = resized[0, :, top:top + size, left:left + size].clamp_(0, 255).round_().to(torch.uint8)
    return out


def normalise(batch, device: str = "cpu", mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD):
    """uint8 ``(N, 3, H, W)`` (numpy or tensor) -> the float CLIP input on ``device``."""
    import torch

    x = torch.as_tensor(batch).to(device, non_blocking=True)
    m = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=device).view(1, 3, 1, 1)
    return (x.float() / 255.0 - m) / s
