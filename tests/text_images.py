"""Pictures with printed text for OCR tests: DejaVu Sans (Debian's fonts-dejavu) on a background."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image, ImageDraw, ImageFont

FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")


def font(size: int = 28) -> ImageFont.FreeTypeFont:
    if not FONT.is_file():
        pytest.skip(f"DejaVu font missing ({FONT}): apt-get install fonts-dejavu-core")
    return ImageFont.truetype(str(FONT), size)


def text_image(lines: list[str], size: tuple[int, int] = (420, 150), background=(255, 255, 255),
               ink=(0, 0, 0)) -> Image.Image:
    """``lines`` printed top to bottom, 50 px apart."""
    img = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(img)
    for n, line in enumerate(lines):
        draw.text((12, 14 + 50 * n), line, fill=ink, font=font())
    return img


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()
