"""Decode + resize paths vs the raw encoder: can the pixels keep up with the GPU?

Same JPEGs (``--size``, default 1024x768: photo-sized, where decoding costs), one CLIP model
(default ViT-B-32 with random weights), each path timed from bytes to the encoder's input
tensor, as images/s and as a ratio to the raw encoder (forward pass alone, as everywhere:
bench/harness.py). A ratio above 1 means that path does not starve the encoder.

in-process: what the embed stage does now: `decode_image` then open_clip's preprocess,
            one image after the other in the encoder's thread.
threads:    the same per image on a thread pool of ``--workers``.
processes:  `common.decode.DecodePool` (``--workers`` processes: JPEG draft decode,
            resize, crop to uint8) + `normalise` in the encoder's process.
torchvision: `common.decode.decode_resize_torch` (torchvision.io.decode_jpeg; nvJPEG on
            CUDA) + `normalise`, on ``--device``.

``cos`` = mean cosine between the vectors of a path and those of in-process (fidelity).
Not a test: nothing here asserts a speed. ``--record`` appends rows to bench/RESULTS.md.

    python bench/decode.py --images 256 --workers 2 --record
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from bench.harness import machine, raw_encoder_rate, smooth_jpeg  # noqa: E402
from bench.results import record_row  # noqa: E402
from common.decode import DecodePool, decode_resize_torch, normalise  # noqa: E402
from common.images import decode_image  # noqa: E402
from common.models.clip import load_clip  # noqa: E402
from common.settings import Settings  # noqa: E402

SECTION = """## bench/decode.py — decode + resize paths vs the raw encoder

Bytes -> encoder input tensor, per path, as images/s and as a ratio to the raw encoder's
forward pass on the same device (ratio > 1: the path keeps up). in-process = the embed
stage's current path (PIL decode, open_clip preprocess, one by one in the encoder's thread);
threads / processes = `--workers` of them; torchvision = `torchvision.io.decode_jpeg` +
resize on the device. cos = mean cosine of the vectors vs in-process.

| date | command | model | device | images | raw img/s | path | path img/s | path/raw | cos | machine |
|---|---|---|---|---|---|---|---|---|---|---|
"""


def transform_params(model) -> tuple[int, tuple, tuple]:
    """Crop size, mean and std of an open_clip preprocess pipeline."""
    size, mean, std = 224, None, None
    for t in getattr(model.preprocess, "transforms", []):
        if type(t).__name__ == "CenterCrop":
            size = t.size[0] if isinstance(t.size, (tuple, list)) else int(t.size)
        if type(t).__name__ == "Normalize":
            mean, std = tuple(t.mean), tuple(t.std)
    return size, mean, std


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--pretrained", default="none")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--size", default="1024x768", help="JPEG size WxH")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--note", default="")
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    datas = [smooth_jpeg(i, (w, h)) for i in range(args.images)]
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings.from_env({}, data_dir=Path(tmp), device=args.device)
        model = load_clip(args.model, args.pretrained, settings)
        device = model.device
        size, mean, std = transform_params(model)
        raw = raw_encoder_rate(model, datas, args.batch_size, 1)
        batches = [datas[i:i + args.batch_size] for i in range(0, len(datas), args.batch_size)]

        def in_process(batch):
            return model.preprocess_images([decode_image(d, 1 << 30, 1 << 30).image for d in batch]).to(device)

        threads = ThreadPoolExecutor(args.workers)

        def threaded(batch):
            import torch

            tensors = list(threads.map(lambda d: model.preprocess(decode_image(d, 1 << 30, 1 << 30).image), batch))
            return torch.stack(tensors).to(device)

        pool = DecodePool(args.workers, size)

        def processes(batch):
            return normalise(pool.batch(batch), device, mean, std)

        def torchvision(batch):
            return normalise(decode_resize_torch(batch, size, device), device, mean, std)

        paths = {"in-process": in_process, f"threads x{args.workers}": threaded,
                 f"processes x{args.workers}": processes, f"torchvision ({device})": torchvision}
        reference = model.encode_image_tensors(in_process(batches[0][:16]))
        rows = []
        for name, fn in paths.items():
            fn(batches[0][:4])  # warm-up (worker start, CUDA context)
            start = time.perf_counter()
            for batch in batches:
                fn(batch)
            if device.startswith("cuda"):
                import torch

                torch.cuda.synchronize()
            rate = len(datas) / (time.perf_counter() - start)
            vecs = model.encode_image_tensors(fn(batches[0][:16]))
            cos = float(np.mean(np.sum(vecs * reference, axis=1)))
            rows.append((name, rate, cos))
            print(f"{name:22s} {rate:9.1f} img/s  x{rate / raw:6.2f} of raw ({raw:.1f} img/s)  cos {cos:.4f}",
                  flush=True)
        pool.close()
        threads.shutdown()
    host = machine() + (f", {args.note}" if args.note else "")
    if args.record:
        for name, rate, cos in rows:
            record_row("## bench/decode.py", [args.model, device, f"{args.images} x {w}x{h} JPEG", f"{raw:.1f}", name,
                                              f"{rate:.1f}", f"{rate / raw:.2f}", f"{cos:.4f}", host], SECTION)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
