"""Decode and validate untrusted image bytes into upright RGB pictures.

Everything an operator's bucket may hold ends here: zero-byte files, HTML saved as .jpg,
truncated uploads, decompression bombs, 16-bit PNGs, CMYK JPEGs, animated GIFs, photos
whose EXIF says "rotate me". Each problem becomes an :class:`ImageError` with a stable
``reason``; nothing here crashes a batch.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from common.errors import ImageError

# Formats Pillow decodes that we accept. Anything else (PDF, EPS, ...) is unsupported_type.
ALLOWED_FORMATS = {"JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "MPO", "PPM", "TGA", "ICO"}
MIME = {"JPEG": "image/jpeg", "MPO": "image/jpeg", "PNG": "image/png", "GIF": "image/gif",
        "WEBP": "image/webp", "BMP": "image/bmp", "TIFF": "image/tiff",
        "PPM": "image/x-portable-pixmap", "TGA": "image/x-tga", "ICO": "image/x-icon"}


@dataclass
class DecodedImage:
    """An upright RGB picture plus what the index records about the original file."""

    image: Image.Image
    width: int
    height: int
    mime: str
    nbytes: int


QUERY_MAX_SIDE = 1024  # longest edge of a query image after its one downscale (CLIP, phash variants, OCR)


def decode_image(data: bytes, max_bytes: int, max_pixels: int) -> DecodedImage:
    """Bytes -> upright RGB image, or :class:`ImageError` saying why not.

    Pixel count is checked from the header before any pixel is decoded, so a bomb costs
    nothing. EXIF orientation is applied; palette/alpha images are put on white; 16-bit
    and CMYK images are converted; animated images use their first frame.
    """
    with warnings.catch_warnings():
        # Our own max_pixels check decides; Pillow's warning would only be noise.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        img, fmt = _open(data, max_bytes, max_pixels)
        _load(img, fmt)
        rgb = _upright_rgb(img, fmt)
    return DecodedImage(rgb, rgb.width, rgb.height, MIME.get(fmt, "application/octet-stream"), len(data))


def decode_query_image(data: bytes, max_bytes: int, max_pixels: int,
                       max_side: int = QUERY_MAX_SIDE) -> DecodedImage:
    """Like :func:`decode_image`, for a caller's query image: bounded cost per request.

    The pixel limit (``IMGSEARCH_QUERY_MAX_IMAGE_PIXELS``) is checked from the header; a
    JPEG is decoded straight at a reduced scale (``draft``); the picture is then scaled
    down ONCE so its longer edge is at most ``max_side``, before the EXIF turn and the RGB
    conversion. Everything after (CLIP preprocessing, the ~23 phash crop/rotation variants,
    OCR) works on that small copy, so a query never holds full-resolution copies.
    ``width``/``height`` are those of the original picture.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        img, fmt = _open(data, max_bytes, max_pixels)
        width, height = img.size
        if fmt in ("JPEG", "MPO") and max(width, height) > max_side:
            img.draft("RGB", (max_side, max_side))  # DCT scaling: 1/2, 1/4, 1/8 while decoding
        _load(img, fmt)
        try:
            img = _shrink(img, max_side)
        except Exception as exc:
            raise ImageError("undecodable", f"cannot scale {fmt} ({img.mode}) data: {exc}") from None
        rgb = _upright_rgb(img, fmt)
    return DecodedImage(rgb, width, height, MIME.get(fmt, "application/octet-stream"), len(data))


def _open(data: bytes, max_bytes: int, max_pixels: int) -> tuple[Image.Image, str]:
    """Read the header only: byte and pixel limits, format allow-list."""
    if not data:
        raise ImageError("empty", "zero-byte file")
    if len(data) > max_bytes:
        raise ImageError("too_large", f"file is larger than the limit of {max_bytes} bytes")
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageError("unsupported_type", f"not a recognised image ({_sniff(data)})") from None
    except Image.DecompressionBombError as exc:
        raise ImageError("too_many_pixels", f"decompression bomb guard: {exc}") from None
    except Exception as exc:  # Pillow raises many types on hostile headers
        raise ImageError("undecodable", f"cannot read image header: {exc}") from None
    fmt = img.format or "?"
    if fmt not in ALLOWED_FORMATS:
        raise ImageError("unsupported_type", f"image format {fmt} is not supported")
    width, height = img.size
    if width < 1 or height < 1:
        raise ImageError("undecodable", f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageError("too_many_pixels",
                         f"{width}x{height} = {width * height} pixels exceeds the limit of {max_pixels}")
    return img, fmt


def _load(img: Image.Image, fmt: str) -> None:
    try:
        img.seek(0)
        img.load()
    except Image.DecompressionBombError as exc:
        raise ImageError("too_many_pixels", str(exc)) from None
    except OSError as exc:
        text = str(exc)
        # Pillow says "image file is truncated" when the data ends early; "broken data
        # stream" is a complete file with corrupt compressed data.
        reason = "truncated" if "truncated" in text else "undecodable"
        raise ImageError(reason, f"cannot decode {fmt} data: {text}") from None
    except Exception as exc:
        raise ImageError("undecodable", f"cannot decode {fmt} data: {exc}") from None


def _upright_rgb(img: Image.Image, fmt: str) -> Image.Image:
    try:
        return to_rgb(ImageOps.exif_transpose(img) or img)
    except Exception as exc:
        raise ImageError("undecodable", f"cannot convert {fmt} ({img.mode}) to RGB: {exc}") from None


def _shrink(img: Image.Image, max_side: int) -> Image.Image:
    """``img`` with its longer edge at most ``max_side`` (aspect kept; never enlarged)."""
    w, h = img.size
    if max(w, h) <= max_side:
        return img
    scale = max_side / max(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if img.mode in ("P", "1", "PA"):
        # palette images resize by nearest neighbour only: thin them to twice the target
        # (cheap, one byte a pixel), then convert the small copy and filter it properly
        if max(w, h) > 2 * max_side:
            img = img.resize((max(1, round(w * scale * 2)), max(1, round(h * scale * 2))),
                             Image.Resampling.NEAREST)
        img = img.convert("RGBA" if img.mode == "PA" or "transparency" in img.info else "RGB")
    factor = int(max(w, h) / max_side / 2)
    if factor >= 2 and img.mode in ("RGBA", "LA"):
        # box-average by a whole factor first, one band at a time: Pillow's reduce/resize of
        # an alpha image first makes a premultiplied full-size copy (+1 copy of the picture)
        img = Image.merge(img.mode, [img.getchannel(band).reduce(factor) for band in img.getbands()])
    elif factor >= 2 and img.mode not in ("P", "1", "PA", "I;16", "I;16B", "I;16L", "I;16N"):
        img = img.reduce(factor)
    return img.resize(size, Image.Resampling.LANCZOS)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB; transparency composited on white."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        return Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        scaled = (arr - lo) / (hi - lo or 1.0) * 255.0
        return Image.fromarray(np.nan_to_num(scaled).astype(np.uint8)).convert("RGB")
    if mode == "P" and "transparency" in img.info or mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _sniff(data: bytes) -> str:
    head = data[:64].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")):
        return "looks like HTML"
    if head.startswith(b"%pdf"):
        return "looks like PDF"
    if head.startswith((b"<?xml", b"<svg")):
        return "looks like XML/SVG"
    try:
        data[:256].decode("utf-8")
        return "looks like text"
    except UnicodeDecodeError:
        return "unknown binary data"
