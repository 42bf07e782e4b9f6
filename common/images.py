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


def decode_image(data: bytes, max_bytes: int, max_pixels: int) -> DecodedImage:
    """Bytes -> upright RGB image, or :class:`ImageError` saying why not.

    Pixel count is checked from the header before any pixel is decoded, so a bomb costs
    nothing. EXIF orientation is applied; palette/alpha images are put on white; 16-bit
    and CMYK images are converted; animated images use their first frame.
    """
    if not data:
        raise ImageError("empty", "zero-byte file")
    if len(data) > max_bytes:
        raise ImageError("too_large", f"file is larger than the limit of {max_bytes} bytes")
    with warnings.catch_warnings():
        # Our own max_pixels check below decides; Pillow's warning would only be noise.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
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
                             f"{width}x{height} = {width * height} pixels exceeds the limit of "
                             f"{max_pixels}")
        try:
            img.seek(0)
            img.load()
        except Image.DecompressionBombError as exc:
            raise ImageError("too_many_pixels", str(exc)) from None
        except OSError as exc:
            text = str(exc)
            reason = "truncated" if "truncated" in text else "undecodable"  # zlib errors: corrupt
            raise ImageError(reason, f"cannot decode {fmt} data: {text}") from None
        except Exception as exc:
            raise ImageError("undecodable", f"cannot decode {fmt} data: {exc}") from None
        try:
            rgb = to_rgb(ImageOps.exif_transpose(img) or img)
        except Exception as exc:
            raise ImageError("undecodable", f"cannot convert {fmt} ({img.mode}) to RGB: {exc}") from None
    return DecodedImage(rgb, rgb.width, rgb.height, MIME.get(fmt, "application/octet-stream"),
                        len(data))


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
