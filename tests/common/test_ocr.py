"""OCR with the real PP-OCRv6 ONNX models of the rapidocr wheel (offline), one interface."""

from __future__ import annotations

import pytest
from PIL import Image

from common.errors import ConfigError
from common.models.ocr import load_ocr
from tests.text_images import text_image


def test_printed_lines_are_read_with_boxes_and_confidence(make_settings):
    model = load_ocr(make_settings())
    img = text_image(["SERIAL XK-4471-B", "fresh coffee beans"])
    lines = model.predict([img])[0]
    assert [ln.text for ln in lines] == ["SERIAL XK-4471-B", "fresh coffee beans"]  # reading order
    for ln in lines:
        assert ln.confidence > 0.9 and len(ln.box) == 8
        xs, ys = ln.box[0::2], ln.box[1::2]
        assert 0 <= min(xs) < max(xs) <= img.width and 0 <= min(ys) < max(ys) <= img.height
    assert lines[0].box[1] < lines[1].box[1]  # the first line is above the second


def test_blank_and_tiny_images_give_no_lines(make_settings):
    model = load_ocr(make_settings())
    blank = Image.new("RGB", (200, 80), "white")
    tiny = text_image(["AB"], size=(28, 28))
    assert model.predict([blank, tiny]) == [[], []]
    # with the size guard off, a 28x28 image still goes through the detector without error
    assert isinstance(load_ocr(make_settings(ocr_min_side=0)).predict([tiny])[0], list)


def test_paddleocr_backend_is_refused_clearly_when_not_installed(make_settings):
    pytest.importorskip("rapidocr")
    try:
        import paddleocr  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="paddleocr package is not installed"):
            load_ocr(make_settings(ocr_backend="paddleocr"))
    else:  # pragma: no cover - a deployment with paddleocr: the backend must read the same text
        lines = load_ocr(make_settings(ocr_backend="paddleocr")).predict([text_image(["HELLO 42"])])[0]
        assert "HELLO" in " ".join(ln.text for ln in lines)
