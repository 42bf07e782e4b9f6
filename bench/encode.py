"""Raw encoder vs embedded pipeline throughput, side by side in one run on one device.

raw:      preprocessed tensors through the encoder's forward pass, batch after batch
          (the ceiling: nothing but the model).
pipeline: `run_ingest` on a folder of JPEGs into a fresh Milvus Lite collection
          (list, fetch, decode, preprocess, phash, encode, upsert; fetch/decode of the
          next batch overlapping the forward pass of the current one).

Prints images/s for both and pipeline/raw; ``--record`` appends the figures and the
machine they ran on to bench/RESULTS.md. Not a test: nothing here asserts a speed.

    python bench/encode.py                                   # bundled reference model
    python bench/encode.py --model ViT-B-32 --pretrained none --images 256
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from bench.results import record_row  # noqa: E402
from common.models.clip import load_clip  # noqa: E402
from common.settings import Settings  # noqa: E402
from common.store import close_clients  # noqa: E402
from ingest.runner import run_ingest  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
ENCODE_SECTION = """## bench/encode.py — raw encoder vs embedded pipeline

raw = forward pass over preprocessed batches; pipeline = `run_ingest` from a folder of
JPEGs into Milvus Lite (list, fetch, decode, preprocess, phash, encode, upsert).

| date | command | model | device | images | raw img/s | pipeline img/s | pipeline/raw | machine |
|---|---|---|---|---|---|---|---|---|
"""


def make_images(folder: Path, n: int, size: tuple[int, int]) -> list[Path]:
    """Smooth random colour fields saved as JPEG: realistic decode cost, no data set needed."""
    rng = np.random.default_rng(0)
    w, h = size
    paths = []
    for i in range(n):
        small = rng.integers(0, 255, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)
        path = folder / f"img{i:05d}.jpg"
        img.save(path, "JPEG", quality=90)
        paths.append(path)
    return paths


def bench_raw(model, paths: list[Path], batch_size: int, repeats: int) -> float:
    """Images/s of the forward pass alone (inputs preprocessed beforehand)."""
    images = [Image.open(p).convert("RGB") for p in paths]
    batches = [model.preprocess_images(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]
    model.encode_image_tensors(batches[0])  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for batch in batches:
            model.encode_image_tensors(batch)
        best = min(best, time.perf_counter() - start)
    return len(images) / best


def bench_pipeline(settings: Settings, folder: Path, repeats: int) -> float:
    """Images/s of a full embedded ingest into a fresh collection (best of ``repeats``)."""
    best = 0.0
    for r in range(repeats):
        run_settings = settings.with_overrides(collection=f"bench{r}")
        summary = run_ingest(str(folder), run_settings, progress=False)
        assert summary.failed == 0 and summary.indexed == summary.listed, summary.render()
        best = max(best, summary.indexed / summary.seconds)
    return best


def machine() -> str:
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="imgsearch-fmnist-lit-minilm", help="open_clip model name")
    parser.add_argument("--pretrained", default="", help="tag, checkpoint, 'none' (random) or empty (bundled)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--images", type=int, default=512, help="number of images (default 512)")
    parser.add_argument("--size", default="320x240", help="JPEG size WxH (default 320x240)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each; the best counts")
    parser.add_argument("--record", action="store_true", help="append the result to bench/RESULTS.md")
    args = parser.parse_args()
    w, h = (int(v) for v in args.size.lower().split("x"))

    with tempfile.TemporaryDirectory(prefix="imgsearch-bench-") as tmp:
        tmp_path = Path(tmp)
        folder = tmp_path / "images"
        folder.mkdir()
        paths = make_images(folder, args.images, (w, h))
        settings = Settings.from_env(data_dir=tmp_path / "data", clip_model=args.model,
                                     clip_pretrained=args.pretrained, device=args.device,
                                     batch_size=args.batch_size)
        model = load_clip(args.model, args.pretrained, settings)
        raw = bench_raw(model, paths, args.batch_size, args.repeats)
        pipe = bench_pipeline(settings, folder, args.repeats)
        close_clients()

    ratio = pipe / raw
    where = machine()
    print(f"model     {model.spec.label()} on {model.device}")
    print(f"machine   {where}")
    print(f"images    {args.images} JPEG {w}x{h}, batch {args.batch_size}, best of {args.repeats}")
    print(f"raw encoder      {raw:9.1f} images/s")
    print(f"embedded pipeline{pipe:9.1f} images/s")
    print(f"pipeline / raw   {ratio:9.2f}")
    if args.record:
        stamp = datetime.now(UTC).strftime("%Y-%m-%d")
        row = (f"| {stamp} | `bench/encode.py {' '.join(sys.argv[1:])}` | {model.spec.name} | {model.device} | "
               f"{args.images} x {w}x{h} JPEG, batch {args.batch_size} | {raw:.1f} | {pipe:.1f} | {ratio:.2f} | "
               f"{where} |\n")
        record_row("## bench/encode.py", row, ENCODE_SECTION)
        print(f"recorded in {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
