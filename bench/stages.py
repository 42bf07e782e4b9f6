"""Per-stage throughput of embedded ingest: embed, ocr, caption (images/s), in one run.

Images: smooth random JPEG backgrounds with two printed lines each (DejaVu Sans), so the
OCR detector finds and reads real text. Each stage is timed on the same images after a
warm-up (models loaded, as in a running worker):

embed:    `run_ingest` with OCR and captions off (list, read, decode, CLIP, phash, upsert)
ocr:      `ingest.text_stages.ocr_images` (PP-OCRv6 det+rec via onnxruntime, MiniLM vectors
          of the lines, replace rows in `texts`)
caption:  `ingest.text_stages.caption_images` with the clip backend (zero-shot tags from the
          stored CLIP vectors, MiniLM vectors, replace rows); the endpoint and local-model
          backends are not measured here (no VLM endpoint or captioning weights offline)

Not a test: nothing here asserts a speed. ``--record`` appends a row to bench/RESULTS.md.

    python bench/stages.py --images 64 --record
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image, ImageDraw, ImageFont  # noqa: E402

from bench.harness import machine, smooth_jpeg  # noqa: E402
from bench.results import record_row  # noqa: E402
from common.ids import image_id  # noqa: E402
from common.settings import Settings  # noqa: E402
from common.store import ImageStore, close_clients  # noqa: E402

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
SECTION = """## bench/stages.py — per-stage images/s (embed, ocr, caption)

Same images through each stage of the embedded pipeline, after a warm-up: embed =
`run_ingest` with OCR/captions off; ocr = PP-OCRv6 (rapidocr, onnxruntime) + MiniLM + upsert
into `texts`; caption = CLIP zero-shot tags from stored vectors + MiniLM + upsert.

| date | command | images | embed img/s | ocr img/s | caption (clip tags) img/s | machine |
|---|---|---|---|---|---|---|
"""


def text_jpeg(i: int, size: tuple[int, int]) -> bytes:
    """A smooth colour field with two printed lines (a code and a phrase)."""
    img = Image.open(io.BytesIO(smooth_jpeg(i, size))).convert("RGB")
    draw = ImageDraw.Draw(img)
    font = ImageFont.truetype(FONT, max(14, size[1] // 12))
    draw.rectangle((8, 8, size[0] - 8, 8 + size[1] // 4), fill=(255, 255, 255))
    draw.text((14, 12), f"LOT {i:05d}-QX", fill=(0, 0, 0), font=font)
    draw.text((14, 12 + size[1] // 9), "best before spring", fill=(0, 0, 0), font=font)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--size", default="480x360", help="JPEG size WxH")
    parser.add_argument("--note", default="", help="appended to the machine column (e.g. 'shared')")
    parser.add_argument("--record", action="store_true", help="append the result to bench/RESULTS.md")
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))

    from ingest.runner import run_ingest
    from ingest.text_stages import TextContext, caption_images, ocr_images

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        for i in range(args.images):
            (folder / f"t{i:05d}.jpg").write_bytes(text_jpeg(i, size))
        (Path(tmp) / "warm").mkdir()
        (Path(tmp) / "warm" / "w.jpg").write_bytes(text_jpeg(99999, size))
        settings = Settings.from_env({}, clip_model="imgsearch-fmnist-lit-minilm",
                                     data_dir=Path(tmp) / "data", ocr_enabled=False, caption_backend="off")
        run_ingest(str(Path(tmp) / "warm"), settings.with_overrides(collection="warm"), progress=False)
        start = time.perf_counter()
        summary = run_ingest(str(folder), settings, progress=False)
        embed_rate = summary.indexed / (time.perf_counter() - start)
        assert summary.failed == 0, summary.render()

        text_settings = settings.with_overrides(ocr_enabled=True, caption_backend="clip")
        ctx = TextContext(text_settings)
        paths = sorted(folder.glob("*.jpg"))
        items = [(p.as_uri(), Image.open(p).convert("RGB")) for p in paths]
        ocr_images(items[:2], "warm", ctx)  # warm-up: OCR sessions, text model, collection
        start = time.perf_counter()
        ocr = ocr_images(items, settings.collection, ctx)
        ocr_rate = len(items) / (time.perf_counter() - start)
        found = sum(1 for u, _ in items if f"LOT {int(Path(u).stem[1:]):05d}-QX" in
                    " ".join(r["text"] for r in ctx.texts(settings.collection).rows_of(image_id(u))))

        stored = ImageStore(settings).vectors(image_id(u) for u, _ in items)
        import numpy as np

        vectors = np.asarray([stored[image_id(u)] for u, _ in items], dtype=np.float32)
        caption_images([(u, None) for u, _ in items[:2]], settings.collection, ctx, vectors[:2])  # warm-up
        start = time.perf_counter()
        tagged = caption_images([(u, None) for u, _ in items], settings.collection, ctx, vectors)
        caption_rate = len(items) / (time.perf_counter() - start)
        close_clients()

    host = machine() + (f", {args.note}" if args.note else "")
    print(f"images: {args.images} x {args.size} JPEG with printed text")
    print(f"embed:   {embed_rate:8.1f} img/s")
    print(f"ocr:     {ocr_rate:8.1f} img/s  ({ocr.texts} lines; code read exactly in {found}/{len(items)})")
    print(f"caption: {caption_rate:8.1f} img/s  ({tagged.texts} tags, clip backend)")
    print(f"machine: {host}")
    if args.record:
        record_row("## bench/stages.py", [f"{args.images} x {args.size} JPEG, 2 printed lines",
                                          f"{embed_rate:.1f}", f"{ocr_rate:.2f}", f"{caption_rate:.1f}", host],
                   SECTION)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
