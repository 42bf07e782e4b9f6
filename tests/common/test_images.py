"""Decoding untrusted bytes: every bad input gets its own reason, odd-but-valid ones decode."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from common.errors import ImageError
from common.images import decode_image

MAX_BYTES = 1_000_000
MAX_PIXELS = 4_000_000


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def reason_of(data: bytes, max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS) -> str:
    with pytest.raises(ImageError) as info:
        decode_image(data, max_bytes, max_pixels)
    assert info.value.message, "every failure carries a human message"
    return info.value.reason


def noise(w: int = 64, h: int = 48) -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8))


def test_plain_jpeg_decodes_to_rgb_with_metadata():
    data = encode(noise(), "JPEG", quality=90)
    dec = decode_image(data, MAX_BYTES, MAX_PIXELS)
    assert (dec.width, dec.height, dec.image.mode, dec.mime, dec.nbytes) == (64, 48, "RGB", "image/jpeg",
                                                                             len(data))


def test_zero_bytes():
    assert reason_of(b"") == "empty"


def test_html_named_jpg_is_unsupported_type():
    with pytest.raises(ImageError) as info:
        decode_image(b"<!DOCTYPE html><html><body>404</body></html>", MAX_BYTES, MAX_PIXELS)
    assert info.value.reason == "unsupported_type"
    assert "HTML" in info.value.message


def test_text_and_pdf_are_unsupported_type():
    assert reason_of(b"just some notes\n") == "unsupported_type"
    assert reason_of(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj") == "unsupported_type"


def test_truncated_png_and_jpeg():
    png = encode(noise(), "PNG")
    assert reason_of(png[: len(png) // 2]) == "truncated"
    jpg = encode(noise(256, 256), "JPEG", quality=95)
    assert reason_of(jpg[: len(jpg) // 3]) in ("truncated", "undecodable")


def test_corrupt_body_with_valid_header():
    png = bytearray(encode(noise(), "PNG"))
    png[60:400] = b"\x00" * 340  # smash the compressed stream, keep the signature and IHDR
    assert reason_of(bytes(png)) in ("undecodable", "truncated")


def test_over_byte_limit_is_refused_before_decoding():
    data = encode(noise(), "PNG")
    assert reason_of(data, max_bytes=len(data) - 1) == "too_large"
    decode_image(data, len(data), MAX_PIXELS)  # exactly at the limit is fine


def test_decompression_bomb_is_refused_from_the_header():
    bomb = encode(Image.new("L", (5000, 5000)), "PNG")  # tiny file, 25 M pixels
    assert len(bomb) < 100_000
    assert reason_of(bomb, max_pixels=MAX_PIXELS) == "too_many_pixels"


def test_sixteen_bit_png_keeps_its_contrast():
    arr = np.linspace(0, 65535, 64 * 32).reshape(32, 64).astype(np.uint16)
    data = encode(Image.fromarray(arr), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    dec = decode_image(data, MAX_BYTES, MAX_PIXELS)
    px = np.asarray(dec.image)
    assert dec.image.mode == "RGB"
    assert px[0, 0, 0] < 5 and px[-1, -1, 0] > 250


def test_cmyk_jpeg_converts_to_rgb():
    cmyk = Image.new("CMYK", (40, 30), (0, 255, 255, 0))  # pure red in CMYK
    dec = decode_image(encode(cmyk, "JPEG", quality=95), MAX_BYTES, MAX_PIXELS)
    r, g, b = dec.image.getpixel((20, 15))
    assert dec.image.mode == "RGB" and r > 200 and g < 60 and b < 60


def test_animated_gif_uses_first_frame():
    frames = [Image.new("RGB", (32, 32), c) for c in [(255, 0, 0), (0, 0, 255), (0, 255, 0)]]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    dec = decode_image(data, MAX_BYTES, MAX_PIXELS)
    r, g, b = dec.image.getpixel((16, 16))
    assert dec.mime == "image/gif" and r > 200 and b < 60


def test_exif_rotated_photo_comes_out_upright():
    upright = Image.new("RGB", (30, 20), (0, 0, 255))
    upright.paste((255, 0, 0), (0, 0, 30, 10))  # red top half, blue bottom half
    stored = upright.rotate(90, expand=True)  # what a camera held sideways writes
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    dec = decode_image(encode(stored, "JPEG", quality=95, exif=exif.tobytes()), MAX_BYTES, MAX_PIXELS)
    assert (dec.width, dec.height) == (30, 20)
    top, bottom = dec.image.getpixel((15, 2)), dec.image.getpixel((15, 17))
    assert top[0] > 200 and top[2] < 60, top
    assert bottom[2] > 200 and bottom[0] < 60, bottom


def test_transparent_png_is_composited_on_white():
    rgba = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    dec = decode_image(encode(rgba, "PNG"), MAX_BYTES, MAX_PIXELS)
    assert dec.image.getpixel((5, 5)) == (255, 255, 255)


def test_query_images_are_scaled_down_once_and_keep_their_turn():
    from common.images import QUERY_MAX_SIDE, decode_query_image

    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to view"
    for fmt, mode in (("JPEG", "RGB"), ("PNG", "RGBA"), ("PNG", "P"), ("PNG", "I;16"), ("GIF", "P")):
        buf = io.BytesIO()
        Image.new(mode, (3000, 1200)).save(buf, fmt, **({"exif": exif.tobytes()} if fmt != "GIF" else {}))
        out = decode_query_image(buf.getvalue(), 10**8, 10**8)
        assert out.image.mode == "RGB" and max(out.image.size) == QUERY_MAX_SIDE, (fmt, mode, out.image.size)
        if fmt != "GIF":
            assert out.image.height > out.image.width  # upright: the EXIF turn applied after the downscale
        assert (out.width, out.height) == (3000, 1200)
    small = io.BytesIO()
    Image.new("RGB", (28, 28), "red").save(small, "PNG")
    assert decode_query_image(small.getvalue(), 10**6, 10**6).image.size == (28, 28)  # never enlarged


def test_query_pixel_limit_is_read_from_the_header():
    from common.images import decode_query_image

    buf = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(buf, "PNG")  # 100 MP in a few KB
    with pytest.raises(ImageError) as info:
        decode_query_image(buf.getvalue(), 10**7, 40_000_000)
    assert info.value.reason == "too_many_pixels"
