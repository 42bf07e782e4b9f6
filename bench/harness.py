"""What every benchmark script shares: test images, the raw-encoder measurement, the machine.

Why one module: ratios are only comparable across scripts when "raw encoder" means the
same measurement and the same images everywhere.
"""

from __future__ import annotations

import io
import os
import platform
import signal
import time
from pathlib import Path

import numpy as np
from PIL import Image


def smooth_jpeg(seed: int, size: tuple[int, int]) -> bytes:
    """A smooth random colour field as JPEG: realistic decode cost, no data set needed."""
    rng = np.random.default_rng(seed)
    w, h = size
    small = rng.integers(0, 255, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def raw_encoder_rate(model, images: list[bytes], batch_size: int, repeats: int) -> float:
    """Images/s of the forward pass alone (decoded and preprocessed beforehand; best of ``repeats``)."""
    pics = [Image.open(io.BytesIO(b)).convert("RGB") for b in images]
    batches = [model.preprocess_images(pics[i:i + batch_size]) for i in range(0, len(pics), batch_size)]
    model.encode_image_tensors(batches[0])  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for batch in batches:
            model.encode_image_tensors(batch)
        best = min(best, time.perf_counter() - start)
    return len(pics) / best


def machine() -> str:
    """CPU model, cores, GPU and torch: recorded with every result."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores, {gpu}, torch {torch.__version__}, threads {torch.get_num_threads()}"


def stop_cleanly_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so a bench that is killed still leaves its ``with``
    blocks: the servers and workers it started are stopped instead of orphaned."""
    def _exit(signum, _frame) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)
