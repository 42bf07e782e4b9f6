"""Build the committed evaluation sets under ``evalsets/`` from offline material, reproducibly.

Sources: scikit-image's bundled photos (``skimage.data``; BSD/CC0/public-domain, see
``skimage/data/README.txt``) and the DejaVu fonts (Debian ``fonts-dejavu-core``). Every random
choice comes from one seeded generator, so the same versions of Pillow, scikit-image and the
fonts rebuild byte-identical files (``tests/test_evalsets.py`` checks the committed files
against a rebuild when both are present).

Sets (format: README "Evaluation"):
- ``evalsets/neardup/``: a folder per photo holding its original and Copydays-style copies
  (crops keeping >= 70% of the area, resizes, JPEG quality 30-90, rotations <= 10 degrees,
  text overlays, one combination, a horizontal mirror), plus ``_distractors/`` (distinct photos that are no
  one's duplicate).
- ``evalsets/ocr/``: words, codes/serial numbers and sentences rendered onto tiles of other
  photos, with ``queries.jsonl``: the exact word or code (relevant: its image) and two
  hand-written paraphrases per sentence.
- ``evalsets/queries.jsonl``: the mixed set over both folders: the OCR queries, one
  near-duplicate image query per copy, and plain-language descriptions of the photos.

Usage: ``python scripts/build_eval_sets.py [--out evalsets]``
"""

from __future__ import annotations

import argparse
import io
import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

ROOT = Path(__file__).resolve().parents[1]
FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
SEED = 20261123
SIDE = 256          # longest side of a near-duplicate original (phash works on 32x32)
OCR_SIZE = (480, 360)

# Photos that get near-duplicate groups: distinct scenes, none used elsewhere in the sets.
GROUP_PHOTOS = ["astronaut", "camera", "chelsea", "coffee", "coins", "moon", "rocket", "clock",
                "motorcycle_left", "cell", "immunohistochemistry", "page"]
# Photos cut into non-overlapping tiles that carry the OCR text (never near-duplicate groups).
OCR_TILES = {"retina": (3, 3), "hubble_deep_field": (2, 2), "brick": (2, 2), "grass": (2, 2),
             "gravel": (2, 2)}
# Distinct images that belong to no group.
DISTRACTOR_PHOTOS = ["horse", "text", "logo", "colorwheel", "microaneurysms"]
LFW_FACES = 24      # lfw_subset()[:100] are faces, [100:] natural non-face patches
LFW_OTHERS = 12

# What a caption or watermark overlay says (near-duplicate copies).
OVERLAYS = ["(c) 2019 Northwind Photo Agency", "SAMPLE", "Holiday 2023 - day 4", "CONFIDENTIAL",
            "photo: J. Moreau", "www.example-pictures.net", "DRAFT v2", "Do not reproduce",
            "Archive 1987/114", "Press kit", "Best of the year", "Staff pick"]

WORDS = ["marmalade", "LIGHTHOUSE", "quartz", "Orchestra", "velvet", "HARBOR", "cinnamon",
         "Glacier", "falcon", "TAPESTRY", "walnut", "Meridian"]
# (sentence printed in the image, two paraphrases written by hand with few shared words)
SENTENCES = [
    ("The museum will close early on Friday for a private event.",
     ["gallery shuts ahead of its usual time at the end of the week",
      "exhibition hall not open late this Friday because of a booked function"]),
    ("Please keep your dog on a leash inside the park.",
     ["pets must be restrained while walking in the gardens",
      "hold your puppy on a lead in the public green"]),
    ("Fresh bread is baked every morning at six.",
     ["loaves come out of the oven daily at dawn",
      "bakery makes new rolls each day early"]),
    ("No parking in front of the garage door at any time.",
     ["do not leave your car blocking the entrance to the carport",
      "vehicles must never stand before this gate"]),
    ("The train to the airport leaves from platform four.",
     ["which track does the rail link to the terminal depart from",
      "railway service for flights departs at the fourth quay"]),
    ("Wash your hands before returning to work.",
     ["staff must clean their hands before going back to their jobs",
      "hygiene rule for employees: soap up after the break"]),
    ("Our shop is moving to a bigger building next month.",
     ["the store relocates to larger premises soon",
      "we are changing address to a more spacious place in a few weeks"]),
    ("Turn off the lights when you leave the room.",
     ["switch the lamps off on your way out",
      "save electricity by putting out the lighting as you exit"]),
    ("Children under twelve must be accompanied by an adult.",
     ["kids need a grown-up with them",
      "young visitors may only enter with a parent or guardian"]),
    ("The lake is frozen, do not walk on the ice.",
     ["danger: the pond has iced over, stay off it",
      "warning about stepping onto the frozen water"]),
    ("Free coffee for all visitors this weekend.",
     ["complimentary hot drinks for guests on Saturday and Sunday",
      "no charge for an espresso for everyone who comes by in the next two days"]),
    ("The library opens at nine and closes at eight.",
     ["opening hours of the book lending house",
      "when can I borrow novels: from 9 am until 8 pm"]),
]
# Plain-language descriptions of the group photos (mixed set; the CLIP channel's queries).
DESCRIPTIONS = {
    "astronaut": "an astronaut in a white space suit with a flag", "camera": "a man with a camera on a tripod",
    "chelsea": "a ginger tabby cat", "coffee": "a cup of coffee on a saucer",
    "coins": "old coins on a table", "moon": "the cratered surface of the moon",
    "rocket": "a rocket on its launch pad", "clock": "a wall clock",
    "motorcycle_left": "a motorcycle parked in a room", "cell": "a cell under a microscope",
    "immunohistochemistry": "a stained tissue sample", "page": "a page of printed text from a book",
}


def photo(name: str) -> Image.Image:
    """A scikit-image sample as an 8-bit RGB PIL image."""
    from skimage import data

    if name == "motorcycle_left":
        array = data.stereo_motorcycle()[0]
    else:
        array = getattr(data, name)()
    array = np.asarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    elif array.dtype != np.uint8:
        array = np.clip(array * 255, 0, 255).astype(np.uint8)
    image = Image.fromarray(array)
    if image.mode == "RGBA":
        white = Image.new("RGB", image.size, "white")
        white.paste(image, mask=image.getchannel("A"))
        image = white
    return image.convert("RGB")


def fit(image: Image.Image, side: int) -> Image.Image:
    scale = side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)


def jpeg(image: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def font(name: str, size: int) -> ImageFont.FreeTypeFont:
    path = FONT_DIR / name
    if not path.exists():
        sys.exit(f"font {path} missing: apt-get install fonts-dejavu-core")
    return ImageFont.truetype(str(path), size)


# -- near-duplicate copies ----------------------------------------------------------------
def crop_area(image: Image.Image, area: float, rng: np.random.Generator, centred: bool) -> Image.Image:
    """A crop keeping ``area`` of the pixels, same aspect, at a random (or central) place."""
    f = math.sqrt(area)
    w, h = round(image.width * f), round(image.height * f)
    if centred:
        x, y = (image.width - w) // 2, (image.height - h) // 2
    else:
        x, y = int(rng.integers(0, image.width - w + 1)), int(rng.integers(0, image.height - h + 1))
    return image.crop((x, y, x + w, y + h))


def rotate(image: Image.Image, degrees: float) -> Image.Image:
    """Rotation about the centre, same frame, black corners (as a careless re-upload does)."""
    return image.rotate(degrees, resample=Image.Resampling.BICUBIC, expand=False, fillcolor=(0, 0, 0))


def overlay_caption(image: Image.Image, text: str, rng: np.random.Generator) -> Image.Image:
    """A caption bar across the bottom or top, as news sites and social posts add."""
    out = image.copy()
    draw = ImageDraw.Draw(out, "RGBA")
    size = max(10, image.height // 14)
    face = font("DejaVuSans-Bold.ttf", size)
    bar = int(size * 1.6)
    top = image.height - bar if rng.random() < 0.5 else 0
    draw.rectangle((0, top, image.width, top + bar), fill=(0, 0, 0, 150))
    draw.text((size // 2, top + (bar - size) // 2), text, font=face, fill=(255, 255, 255, 255))
    return out


def overlay_watermark(image: Image.Image, text: str, rng: np.random.Generator) -> Image.Image:
    """A large half-transparent diagonal watermark over the middle."""
    layer = Image.new("RGBA", image.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    size = max(12, image.width // max(6, len(text) // 2 + 2))
    face = font("DejaVuSans-Bold.ttf", size)
    box = draw.textbbox((0, 0), text, font=face)
    x = (image.width - (box[2] - box[0])) // 2
    y = (image.height - (box[3] - box[1])) // 2
    draw.text((x, y), text, font=face, fill=(255, 255, 255, 110), stroke_width=1,
              stroke_fill=(0, 0, 0, 110))
    layer = layer.rotate(float(rng.uniform(15, 35)), resample=Image.Resampling.BICUBIC)
    return Image.alpha_composite(image.convert("RGBA"), layer).convert("RGB")


def copies(original: Image.Image, rng: np.random.Generator) -> dict[str, bytes]:
    """The transformed copies of one photo, each a JPEG: name -> bytes."""
    out: dict[str, bytes] = {}
    out["crop70"] = jpeg(crop_area(original, float(rng.uniform(0.70, 0.74)), rng, centred=False), 90)
    out["crop85-centre"] = jpeg(crop_area(original, float(rng.uniform(0.82, 0.88)), rng, centred=True), 90)
    out["resize-small"] = jpeg(fit(original, int(rng.integers(80, 112))), 90)
    out["resize-large"] = jpeg(fit(original, int(rng.integers(400, 480))), 90)
    out["jpeg30"] = jpeg(original, 30)
    out["jpeg-mid"] = jpeg(original, int(rng.integers(45, 75)))
    sign = 1 if rng.random() < 0.5 else -1
    out["rotate5"] = jpeg(rotate(original, sign * float(rng.uniform(3, 6))), 90)
    out["rotate10"] = jpeg(rotate(original, -sign * float(rng.uniform(8, 10))), 90)
    out["caption"] = jpeg(overlay_caption(original, OVERLAYS[int(rng.integers(len(OVERLAYS)))], rng), 85)
    out["watermark"] = jpeg(overlay_watermark(original, OVERLAYS[int(rng.integers(len(OVERLAYS)))], rng), 85)
    combo = rotate(crop_area(original, float(rng.uniform(0.78, 0.85)), rng, centred=False),
                   float(rng.uniform(-5, 5)))
    combo = overlay_caption(fit(combo, int(rng.integers(160, 220))), OVERLAYS[int(rng.integers(len(OVERLAYS)))], rng)
    out["combo"] = jpeg(combo, int(rng.integers(30, 50)))
    # last, and drawing nothing from rng, so the copies above stay byte-identical (issue 18)
    out["mirror"] = jpeg(ImageOps.mirror(original), 90)
    return out


def build_neardup(out: Path, rng: np.random.Generator) -> dict[str, list[str]]:
    """Write the groups and distractors; return group name -> file paths relative to ``out``."""
    groups: dict[str, list[str]] = {}
    for name in GROUP_PHOTOS:
        original = fit(photo(name), SIDE)
        folder = out / "neardup" / name
        folder.mkdir(parents=True)
        files = {"original": jpeg(original, 92), **copies(original, rng)}
        for label, data in files.items():
            (folder / f"{label}.jpg").write_bytes(data)
        groups[name] = [f"neardup/{name}/{label}.jpg" for label in files]
    distractors = out / "neardup" / "_distractors"
    distractors.mkdir(parents=True)
    for name in DISTRACTOR_PHOTOS:
        (distractors / f"{name}.jpg").write_bytes(jpeg(fit(photo(name), SIDE), 90))
    from skimage import data

    lfw = data.lfw_subset()
    picks = [("face", i) for i in rng.choice(100, LFW_FACES, replace=False)] + \
            [("patch", 100 + i) for i in rng.choice(100, LFW_OTHERS, replace=False)]
    for kind, index in picks:
        small = Image.fromarray(np.clip(lfw[index] * 255, 0, 255).astype(np.uint8)).convert("RGB")
        (distractors / f"lfw-{kind}-{index:03d}.jpg").write_bytes(
            jpeg(small.resize((100, 100), Image.Resampling.BICUBIC), 90))
    return groups


# -- OCR set ------------------------------------------------------------------------------
def code(rng: np.random.Generator, pattern: str) -> str:
    """Fill a pattern: 9 -> digit, A -> capital letter (no O/I: people misread them too)."""
    letters = "ABCDEFGHJKLMNPQRSTUVWXYZ"
    return "".join(str(rng.integers(10)) if c == "9" else letters[rng.integers(len(letters))] if c == "A" else c
                   for c in pattern)


CODE_PATTERNS = ["INV-99999-AA", "SN 9A9-99999", "PO 99999-A", "LOT 9999-9999", "REF AA-9999",
                 "MODEL AA-9999", "SKU 999-999-99", "BATCH 99A-9999", "TICKET 9999999", "VIN AA9A9999",
                 "ORDER 99-99999", "PART A999-99A"]


def tiles() -> list[tuple[str, Image.Image]]:
    out = []
    for name, (cols, rows) in OCR_TILES.items():
        image = photo(name)
        w, h = image.width // cols, image.height // rows
        for r in range(rows):
            for c in range(cols):
                tile = image.crop((c * w, r * h, (c + 1) * w, (r + 1) * h))
                out.append((f"{name}-{r}{c}", tile.resize(OCR_SIZE, Image.Resampling.LANCZOS)))
    return out


def wrap(text: str, face: ImageFont.FreeTypeFont, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if face.getlength(trial) <= width or not line:
            line = trial
        else:
            lines.append(line)
            line = word
    return lines + [line]


def draw_block(image: Image.Image, lines: list[str], face: ImageFont.FreeTypeFont,
               rng: np.random.Generator, style: str) -> None:
    """Lines of text at a random place: on a label (light box, dark text) or on the photo
    itself (white text with a dark outline, like a sign or a meme)."""
    draw = ImageDraw.Draw(image, "RGBA")
    spacing = int(face.size * 1.3)
    width = int(max(face.getlength(line) for line in lines))
    height = spacing * len(lines)
    x = int(rng.integers(12, max(13, image.width - width - 12)))
    y = int(rng.integers(12, max(13, image.height - height - 12)))
    if style == "label":
        draw.rectangle((x - 8, y - 6, x + width + 8, y + height + 2), fill=(245, 242, 230, 235))
    for i, line in enumerate(lines):
        if style == "label":
            draw.text((x, y + i * spacing), line, font=face, fill=(20, 20, 20, 255))
        else:
            draw.text((x, y + i * spacing), line, font=face, fill=(255, 255, 255, 255),
                      stroke_width=2, stroke_fill=(0, 0, 0, 255))


def build_ocr(out: Path, rng: np.random.Generator) -> list[dict]:
    """Write the OCR images; return their queries (paths relative to ``out/ocr``)."""
    folder = out / "ocr" / "images"
    folder.mkdir(parents=True)
    backgrounds = tiles()
    order = rng.permutation(len(backgrounds))
    queries: list[dict] = []
    fonts = ["DejaVuSans-Bold.ttf", "DejaVuSans.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSansMono-Bold.ttf"]
    # One word + one code per image for the first images, one sentence per image after.
    word_items = list(zip(WORDS, CODE_PATTERNS))
    for n, index in enumerate(order[:len(word_items) + len(SENTENCES)]):
        tile_name, image = backgrounds[index]
        image = image.copy()
        name = f"ocr-{n:02d}-{tile_name}.jpg"
        rel = f"images/{name}"
        if n < len(word_items):
            word, pattern = word_items[n]
            serial = code(rng, pattern)
            half = image.height // 2
            top, bottom = image.crop((0, 0, image.width, half)), image.crop((0, half, image.width, image.height))
            draw_block(top, [word], font(fonts[n % 4], int(rng.integers(34, 44))), rng,
                       "label" if n % 2 else "photo")
            draw_block(bottom, [serial], font(fonts[(n + 3) % 4], int(rng.integers(26, 34))), rng,
                       "photo" if n % 2 else "label")
            image.paste(top, (0, 0))
            image.paste(bottom, (0, half))
            queries.append({"id": f"word-{n:02d}", "kind": "word", "text": word.lower(), "relevant": [rel]})
            queries.append({"id": f"code-{n:02d}", "kind": "code", "text": serial, "relevant": [rel]})
        else:
            s = n - len(word_items)
            sentence, paraphrases = SENTENCES[s]
            face = font(fonts[s % 3], int(rng.integers(24, 30)))
            draw_block(image, wrap(sentence, face, image.width - 60), face, rng, "label" if s % 2 else "photo")
            for p, text in enumerate(paraphrases):
                queries.append({"id": f"paraphrase-{s:02d}-{p}", "kind": "paraphrase", "text": text,
                                "relevant": [rel], "printed": sentence})
        (folder / name).write_bytes(jpeg(image, 85))
    return queries


PROVENANCE = """# Evaluation sets (generated: do not edit by hand)

Built by `scripts/build_eval_sets.py` (seeded; rebuild with
`.venv/bin/python scripts/build_eval_sets.py`). Format and use: the README's "Evaluation".

- `ocr/`: text rendered with the DejaVu fonts (Debian `fonts-dejavu-core`) onto tiles of
  scikit-image's `retina`, `hubble_deep_field`, `brick`, `grass` and `gravel` samples;
  `ocr/queries.jsonl` holds the queries (words, codes, hand-written paraphrases).
- `neardup/`: one folder per scikit-image photo with its original and Copydays-style copies;
  `neardup/_distractors/`: other scikit-image samples and images of its `lfw_subset`.
- `queries.jsonl`: the mixed set over both folders.

Image sources and licences: scikit-image's bundled sample data; each `skimage.data`
function's docstring names its source and licence (CC0 or public domain for the photos
used here; `stereo_motorcycle` from the Middlebury 2014 stereo benchmark; `lfw_subset`
from Labeled Faces in the Wild).
"""


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def build(out: Path) -> None:
    """Rebuild every set into ``out`` (replaced)."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    rng = np.random.default_rng(SEED)
    groups = build_neardup(out, rng)
    ocr_queries = build_ocr(out, rng)
    write_jsonl(out / "ocr" / "queries.jsonl", ocr_queries)
    mixed = [{**q, "id": f"ocr-{q['id']}", "relevant": [f"ocr/{r}" for r in q["relevant"]]} for q in ocr_queries]
    for name, files in groups.items():
        for path in files[1:]:  # every copy asks for its original and the other copies
            label = Path(path).stem
            mixed.append({"id": f"neardup-{name}-{label}", "kind": "near-duplicate", "image": path,
                          "relevant": [f for f in files if f != path]})
        mixed.append({"id": f"describe-{name}", "kind": "description", "text": DESCRIPTIONS[name],
                      "relevant": files})
    write_jsonl(out / "queries.jsonl", mixed)
    (out / "README.md").write_text(PROVENANCE, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "evalsets", help="output folder (replaced)")
    args = parser.parse_args(argv)
    build(args.out)
    files = [p for p in args.out.rglob("*") if p.is_file()]
    print(f"{len(files)} files, {sum(p.stat().st_size for p in files) / 1e6:.2f} MB in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
