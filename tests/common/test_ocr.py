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


def test_provider_is_chosen_explicitly_and_missing_cuda_is_a_clear_error(make_settings, caplog):
    import logging

    import onnxruntime

    from common.models.ocr_engine import OcrDeviceError, choose_provider

    assert choose_provider("cpu", ["CPUExecutionProvider"]) == (["CPUExecutionProvider"], "cpu")
    assert choose_provider("mps", ["CPUExecutionProvider"])[1] == "cpu"  # onnxruntime has no MPS provider
    assert choose_provider("auto", ["CUDAExecutionProvider", "CPUExecutionProvider"], gpu_present=False)[1] == "cpu"
    providers, label = choose_provider("auto", ["CUDAExecutionProvider", "CPUExecutionProvider"], gpu_present=True)
    assert label == "cuda:0" and providers[0][0] == "CUDAExecutionProvider" and providers[-1] == "CPUExecutionProvider"
    providers, label = choose_provider("cuda:1", ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert label == "cuda:1" and providers[0][1]["device_id"] == 1
    with pytest.raises(OcrDeviceError, match="no CUDAExecutionProvider.*install onnxruntime-gpu"):
        choose_provider("cuda", ["CPUExecutionProvider"])
    assert issubclass(OcrDeviceError, ConfigError)

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():  # this CPU machine
        with pytest.raises(OcrDeviceError, match="IMGSEARCH_DEVICE=cuda"):
            load_ocr(make_settings(device="cuda"))  # refused, not quietly run on the CPU
    with caplog.at_level(logging.INFO, logger="common.models.ocr_engine"):
        model = load_ocr(make_settings(device="cpu", ocr_threads=1))
        model.predict([text_image(["HELLO 42"])])
    assert model.model.engine.device == "cpu"
    chosen = [r for r in caplog.records if r.getMessage() == "ocr provider chosen"]
    if chosen:  # logged when this test loaded the model (not when an earlier test did)
        assert chosen[0].device == "cpu" and chosen[0].providers == ["CPUExecutionProvider"]


def test_gate_skips_photos_without_text_and_a_batch_reads_like_single_images(make_settings):
    import numpy as np

    model = load_ocr(make_settings(device="cpu"))
    rng = np.random.default_rng(3)
    smooth = Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).resize((800, 600), Image.BICUBIC)
    sign = Image.new("RGB", (800, 600), (90, 120, 160))
    sign.paste(text_image(["SERIAL XK-4471-B", "fresh coffee beans"]), (300, 380))
    small = text_image(["EXIT 12"], size=(200, 70))  # below the gate's size: straight to full detection
    before = model.model.timings.snapshot()
    batch = model.predict([smooth, sign, small])
    after = model.model.timings.snapshot()
    assert [[ln.text for ln in lines] for lines in batch] == [[], ["SERIAL XK-4471-B", "fresh coffee beans"],
                                                             ["EXIT 12"]]
    assert after["gated_out"] - before["gated_out"] == 1 and after["images"] - before["images"] == 3
    alone = [model.predict([img])[0] for img in (smooth, sign, small)]
    # the same lines and boxes; confidences move a little with the batch's padded width
    assert [[(ln.text, ln.box) for ln in lines] for lines in batch] == [[(ln.text, ln.box) for ln in lines]
                                                                       for lines in alone]
    assert all(abs(a.confidence - b.confidence) < 0.01 for x, y in zip(batch, alone) for a, b in zip(x, y))
    xs = batch[1][0].box[0::2]
    assert 300 <= min(xs) < max(xs) <= 720  # boxes in the whole image's pixels


def test_gpu_shape_buckets_pad_inputs_and_read_the_same(make_settings):
    """The GPU path pads detector inputs to multiples of 128 px and recognition batches to
    widths of 64 px and power-of-two sizes (a few shapes: flat CUDA memory). Run here on the
    CPU provider with those buckets on: the same lines come out."""
    import numpy as np

    from common.models.ocr_engine import PpOcrEngine

    engine = PpOcrEngine("cpu", threads=1)
    images = [np.asarray(text_image(["SERIAL XK-4471-B", "fresh coffee beans"])),
              np.asarray(text_image(["EXIT 12"], size=(200, 70)))]
    plain = engine.read(images)
    x, rh, rw = engine._det_input(images[0], 1280)
    assert x.shape[2:] == (rh, rw) == (160, 416)
    engine.gpu, engine.rec_batch = True, 32  # the bucketing a CUDA engine uses
    x, rh, rw = engine._det_input(images[0], 1280)
    assert x.shape[2:] == (256, 512) and (rh, rw) == (160, 416) and not x[0, :, rh:, :].any()
    bucketed = engine.read(images)
    assert [[t for _, t, _ in lines] for lines in bucketed] == [[t for _, t, _ in lines] for lines in plain]
    assert [[t for _, t, _ in lines] for lines in plain] == [["SERIAL XK-4471-B", "fresh coffee beans"], ["EXIT 12"]]
