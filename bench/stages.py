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

OCR, where the time goes (``--ocr``, on by default): the OCR stage alone (`ocr_images`:
OCR + MiniLM + upsert) on two sets side by side in one run, per image size and thread
count: *photos* = crops of scikit-image's photos that carry no text (astronaut, camera,
chelsea, rocket, coins, moon, ... none of which PP-OCR reads a line in), and *text* = the
same photos with two printed lines on a label. Each row splits the OCR engine's seconds
into gate (detector at IMGSEARCH_OCR_GATE_SIDE), full detection, angle classifier and
recognition, and shows the previous engine (rapidocr's `RapidOCR` one image at a time,
det at <= 1280 px) on the same images as the baseline.

Not a test: nothing here asserts a speed. ``--record`` appends rows to bench/RESULTS.md.

    python bench/stages.py --images 64 --record
    python bench/stages.py --only-ocr --images 24 --sizes 480x360,1024x768 --threads 1,2 --record
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


OCR_SECTION = """## bench/stages.py — OCR stage: photos without text vs text-bearing photos

The OCR stage (`ingest.text_stages.ocr_images`: OCR + MiniLM + upsert into `texts`) over
two sets side by side in one run. photos = crops of scikit-image photos without text;
text = the same crops with two printed lines on a white label. threads = images OCRed at
once (one onnxruntime thread each). Split = seconds per image in the gate (detector at
the gate side), full detection (only around what the gate found), angle classifier,
recognition (all lines of the batch together); these are summed over threads, so with 2
threads they add up to about twice the wall time. CPU ms per image = the process's CPU time
(all threads) per image: what the stage costs when the cores are not shared (2 free cores
give 2000 / that images/s). baseline = the previous engine
(rapidocr `RapidOCR`, one image at a time, 2 threads) on the same images, engine only.

| date | command | set | size | threads | stage img/s | CPU ms per image | gate / det / cls / rec ms per image \
| gated out | lines | baseline engine img/s | machine |
|---|---|---|---|---|---|---|---|---|---|---|---|
"""
NO_TEXT_PHOTOS = ("astronaut", "camera", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "coins",
                  "moon", "brick", "grass", "gravel", "cell", "retina")


def photo_jpegs(n: int, size: tuple[int, int], text: bool, seed: int = 0) -> list[bytes]:
    """Crops of scikit-image photos without text at ``size``; with ``text``, two printed lines
    (a code and a phrase) on a white label at a random place."""
    import numpy as np
    import skimage.data

    rng = np.random.default_rng(seed)
    photos = []
    for name in NO_TEXT_PHOTOS:
        img = getattr(skimage.data, name)()
        photos.append(Image.fromarray(img).convert("RGB"))
    out = []
    w, h = size
    font = ImageFont.truetype(FONT, max(14, h // 14))
    for i in range(n):
        photo = photos[i % len(photos)]
        scale = rng.uniform(0.6, 1.0)
        cw = int(min(photo.width, photo.height * w / h) * scale)
        ch = int(cw * h / w)
        x0, y0 = int(rng.integers(0, photo.width - cw + 1)), int(rng.integers(0, photo.height - ch + 1))
        img = photo.crop((x0, y0, x0 + cw, y0 + ch)).resize(size, Image.Resampling.BICUBIC)
        if text:
            draw = ImageDraw.Draw(img)
            lines = [f"LOT {i:05d}-QX", "best before spring"]
            lw = int(max(draw.textlength(t, font=font) for t in lines)) + 16
            lh = font.size * 2 + 24
            lx, ly = int(rng.integers(0, max(1, w - lw))), int(rng.integers(0, max(1, h - lh)))
            draw.rectangle((lx, ly, lx + lw, ly + lh), fill=(255, 255, 255))
            for k, line in enumerate(lines):
                draw.text((lx + 8, ly + 8 + k * (font.size + 8)), line, fill=(0, 0, 0), font=font)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def baseline_rate(images: list) -> float:
    """The previous OCR engine: rapidocr's RapidOCR, one image at a time (det <= 1280 px)."""
    import logging

    import numpy as np
    from rapidocr import RapidOCR

    logging.getLogger("RapidOCR").setLevel(logging.ERROR)
    engine = RapidOCR(params={"Global.log_level": "error", "Det.limit_type": "max", "Det.limit_side_len": 1280})
    arrays = [np.asarray(img) for img in images]
    engine(arrays[0])
    start = time.perf_counter()
    for a in arrays:
        engine(a)
    return len(arrays) / (time.perf_counter() - start)


def bench_ocr(args, tmp: Path, host: str) -> None:
    """The OCR stage on photos without text and on text-bearing photos, per size and threads."""
    from common.models.base import MODELS
    from ingest.text_stages import TextContext, ocr_images

    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    base = Settings.from_env({}, data_dir=tmp / "ocr-data", caption_backend="off", device=args.device)
    for size in sizes:
        sets = {name: [Image.open(io.BytesIO(b)).convert("RGB") for b in photo_jpegs(args.images, size, text)]
                for name, text in (("photos", False), ("text", True))}
        baseline = {name: baseline_rate(imgs) if args.baseline else None for name, imgs in sets.items()}
        for n in threads:
            settings = base.with_overrides(ocr_threads=n)
            ctx = TextContext(settings)
            model = ctx.ocr()
            ocr_images([("file:///warm.jpg", sets["text"][0])], "ocrwarm", ctx)  # sessions, MiniLM, collection
            for name, imgs in sets.items():
                items = [(f"file:///{name}/{size[0]}x{size[1]}/{i}.jpg", img) for i, img in enumerate(imgs)]
                before = model.model.timings.snapshot()
                start, cpu = time.perf_counter(), time.process_time()
                done = sum(len(ocr_images(items[k:k + args.batch], "ocrbench", ctx).done)
                           for k in range(0, len(items), args.batch))
                rate = done / (time.perf_counter() - start)
                cpu_ms = (time.process_time() - cpu) / len(items) * 1000  # all threads of this process
                after = model.model.timings.snapshot()
                d = {k: after[k] - before[k] for k in after}
                split = " / ".join(f"{d[k] / len(items) * 1000:.0f}" for k in ("gate_s", "det_s", "cls_s", "rec_s"))
                base_rate = f"{baseline[name]:.2f}" if baseline[name] is not None else "-"
                found = ""
                if name == "text":
                    rows = [r["text"] for u, _ in items for r in ctx.texts("ocrbench").rows_of(image_id(u))]
                    found = f" (codes read {sum(1 for i in range(len(items)) if f'LOT {i:05d}-QX' in rows)}" \
                            f"/{len(items)})"
                print(f"ocr {name:6s} {size[0]}x{size[1]} threads {n}: {rate:6.2f} img/s  cpu {cpu_ms:.0f} ms/img  "
                      f"gate/det/cls/rec ms/img "
                      f"{split}  gated out {d['gated_out']}/{d['images']}  lines {d['lines']}{found}  "
                      f"baseline {base_rate} img/s")
                if args.record:
                    record_row("## bench/stages.py — OCR stage", [name + found, f"{size[0]}x{size[1]}", n,
                                                                 f"{rate:.2f}", f"{cpu_ms:.0f}", split,
                                                                 f"{d['gated_out']}/{d['images']}", d["lines"],
                                                                 base_rate, host], OCR_SECTION)
            MODELS.unload(kind="ocr")


ENDPOINT_SECTION = """## bench/stages.py — caption stage against a slow OpenAI-compatible endpoint

`ingest.text_stages.caption_images` with the `openai` backend against the local test
endpoint (tests/vision_server.py, real HTTP) that sleeps DELAY seconds per answer, grid 2
(whole image + 4 crops = 5 requests per image). concurrency = IMGSEARCH_CAPTION_CONCURRENCY.

| date | command | images | delay s | concurrency | requests | img/s | max in flight | machine |
|---|---|---|---|---|---|---|---|---|
"""


def bench_endpoint(args, tmp: Path, host: str) -> None:
    """The endpoint caption backend, sequential vs bounded concurrent requests."""
    from ingest.text_stages import TextContext, caption_images
    from tests.vision_server import VisionEndpoint

    imgs = [Image.open(io.BytesIO(b)).convert("RGB") for b in photo_jpegs(args.images, (480, 360), False)]
    items = [(f"file:///cap/{i}.jpg", img) for i, img in enumerate(imgs)]
    with VisionEndpoint() as endpoint:
        for n in (int(c) for c in args.concurrency.split(",")):
            settings = Settings.from_env({}, data_dir=tmp / "cap-data", ocr_enabled=False, caption_backend="openai",
                                         caption_endpoint=endpoint.url, caption_model="test-vl", caption_grid=2,
                                         caption_concurrency=n)
            ctx = TextContext(settings)
            endpoint.delay_s = 0.0
            caption_images(items[:1], "capwarm", ctx)  # text model, collection
            endpoint.delay_s, endpoint.max_in_flight, endpoint.requests[:] = args.delay, 0, []
            start = time.perf_counter()
            out = caption_images(items, "capbench", ctx)
            rate = len(out.done) / (time.perf_counter() - start)
            print(f"endpoint captions: {len(items)} images, delay {args.delay}s, concurrency {n}: {rate:.2f} img/s "
                  f"({len(endpoint.requests)} requests, max in flight {endpoint.max_in_flight}, "
                  f"{len(out.failed)} failed)")
            if args.record:
                record_row("## bench/stages.py — caption stage", [len(items), args.delay, n, len(endpoint.requests),
                                                                 f"{rate:.2f}", endpoint.max_in_flight, host],
                           ENDPOINT_SECTION)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--size", default="480x360", help="JPEG size WxH")
    parser.add_argument("--note", default="", help="appended to the machine column (e.g. 'shared')")
    parser.add_argument("--record", action="store_true", help="append the result to bench/RESULTS.md")
    parser.add_argument("--parts", default="stages,ocr",
                        help="comma-separated: stages (embed/ocr/caption row), ocr (OCR-stage rows: photos vs "
                             "text), endpoint (caption stage against a slow local OpenAI-compatible endpoint)")
    parser.add_argument("--device", default="auto", help="ocr part: IMGSEARCH_DEVICE (cuda: the CUDA provider)")
    parser.add_argument("--delay", type=float, default=0.25, help="endpoint part: seconds per endpoint answer")
    parser.add_argument("--concurrency", default="1,8", help="endpoint part: IMGSEARCH_CAPTION_CONCURRENCY values")
    parser.add_argument("--sizes", default="480x360,1024x768", help="OCR rows: image sizes WxH, comma-separated")
    parser.add_argument("--threads", default="1,2", help="OCR rows: IMGSEARCH_OCR_THREADS values, comma-separated")
    parser.add_argument("--batch", type=int, default=16, help="OCR rows: images per ocr_images call (a batch)")
    parser.add_argument("--no-baseline", dest="baseline", action="store_false",
                        help="OCR rows: skip the previous engine's rate")
    args = parser.parse_args()
    host = machine() + (f", {args.note}" if args.note else "")
    parts = set(args.parts.split(","))
    if "stages" not in parts:
        with tempfile.TemporaryDirectory() as tmp:
            if "ocr" in parts:
                bench_ocr(args, Path(tmp), host)
            if "endpoint" in parts:
                bench_endpoint(args, Path(tmp), host)
            close_clients()
        return 0
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
        if "ocr" in parts:
            bench_ocr(args, Path(tmp), host)
        if "endpoint" in parts:
            bench_endpoint(args, Path(tmp), host)
        close_clients()

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
