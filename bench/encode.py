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
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from bench.harness import machine, raw_encoder_rate, smooth_jpeg  # noqa: E402
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
    """``n`` benchmark JPEGs in ``folder``."""
    paths = []
    for i in range(n):
        path = folder / f"img{i:05d}.jpg"
        path.write_bytes(smooth_jpeg(i, size))
        paths.append(path)
    return paths


def bench_pipeline(settings: Settings, folder: Path, repeats: int) -> float:
    """Images/s of a full embedded ingest into a fresh collection (best of ``repeats``)."""
    best = 0.0
    for r in range(repeats):
        run_settings = settings.with_overrides(collection=f"bench{r}")
        summary = run_ingest(str(folder), run_settings, progress=False)
        assert summary.failed == 0 and summary.indexed == summary.listed, summary.render()
        best = max(best, summary.indexed / summary.seconds)
    return best


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
        raw = raw_encoder_rate(model, [p.read_bytes() for p in paths], args.batch_size, args.repeats)
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
        record_row("## bench/encode.py", [model.spec.name, model.device, f"{args.images} x {w}x{h} JPEG, batch "
                                          f"{args.batch_size}", f"{raw:.1f}", f"{pipe:.1f}", f"{ratio:.2f}", where],
                   ENCODE_SECTION)
        print(f"recorded in {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
