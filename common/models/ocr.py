"""OCR behind one small interface (load, predict): images -> text lines with box and confidence.

Backends:

- ``rapidocr`` (default): PaddleOCR's PP-OCRv6 detection/recognition models as ONNX, run by
  onnxruntime. The models ship inside the ``rapidocr`` wheel, so nothing downloads.
- ``paddleocr``: the PaddleOCR package itself, for deployments that have it (and Paddle's
  GPU builds). Used only when installed; otherwise a clear :class:`ConfigError`.

Both return the same :class:`OcrLine` list per image, reading order (top to bottom, left
to right), lines below ``ocr_min_confidence`` dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from common.errors import ConfigError
from common.models.base import MODELS, InferenceModel, ModelIdentity
from common.settings import Settings

log = logging.getLogger(__name__)

DET_MAX_SIDE = 1280  # the detector sees images at most this large (longer side); never upscaled
GATE_SIDE = 320  # the cheap first detector pass sees images at most this large (0: no gate)


@dataclass(frozen=True)
class OcrLine:
    """One recognised line: its text, its quadrilateral (4 x (x, y) pixels) and confidence."""

    text: str
    box: tuple[float, ...]  # x1, y1, x2, y2, x3, y3, x4, y4 (clockwise from top-left)
    confidence: float

    def to_dict(self) -> dict:
        return {"text": self.text, "box": [round(v, 1) for v in self.box], "confidence": round(self.confidence, 4)}


@dataclass(frozen=True)
class OcrOptions:
    """Per-caller cuts applied to an OCR model's lines (not part of the model's identity)."""

    min_side: int = 32  # images whose shorter side is smaller are not OCRed (0: all)
    min_confidence: float = 0.5

    @classmethod
    def from_settings(cls, settings: Settings) -> "OcrOptions":
        return cls(settings.ocr_min_side, settings.ocr_min_confidence)


class OcrModel(InferenceModel):
    """Base of the OCR backends: ``predict`` takes RGB images and returns their lines, one list
    per image, in reading order, lines below the options' confidence dropped."""

    name = "base"

    def predict(self, images: Sequence[Image.Image], options: OcrOptions = OcrOptions()) -> list[list[OcrLine]]:
        self.ready()
        out = []
        for img in images:
            if options.min_side and min(img.size) < options.min_side:
                out.append([])  # too small for a readable line: not worth the detector's time
                continue
            with self._lock:  # onnxruntime sessions are shared; one image at a time
                lines = self._predict_one(np.asarray(img.convert("RGB")))
            lines = [ln for ln in lines if ln.text.strip() and ln.confidence >= options.min_confidence]
            out.append(sorted(lines, key=lambda ln: (round(ln.box[1] / 10), ln.box[0])))
        return out

    engine = None  # the backend's loaded engine

    def _unload(self) -> None:
        self.engine = None

    def _warm(self) -> None:
        """Detector and recogniser both run: a white image with one printed line."""
        from PIL import ImageDraw, ImageFont

        img = Image.new("RGB", (320, 64), "white")
        ImageDraw.Draw(img).text((10, 12), "warm up 42", fill="black", font=ImageFont.load_default(size=32))
        self.predict([img], OcrOptions(0, 0.0))

    def _predict_one(self, rgb: np.ndarray) -> list[OcrLine]:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass(frozen=True)
class OcrReader:
    """The loaded OCR model bound to one caller's :class:`OcrOptions` (what callers hold)."""

    model: OcrModel
    options: OcrOptions

    def predict(self, images: Sequence[Image.Image]) -> list[list[OcrLine]]:
        return self.model.predict(images, self.options)

    def warm(self) -> None:
        self.model.warm()


def _box(points) -> tuple[float, ...]:
    arr = np.asarray(points, dtype=np.float64).reshape(-1, 2)[:4]
    return tuple(float(v) for v in arr.ravel())


class RapidOcrModel(OcrModel):
    """PP-OCRv6 (det + rec) and the v2 angle classifier: the ONNX models of the rapidocr wheel,
    run by our own onnxruntime sessions (:class:`~common.models.ocr_engine.PpOcrEngine`):
    the execution provider chosen explicitly from ``IMGSEARCH_DEVICE``, a cheap low-resolution
    detector pass first (images without text stop there), and recognition batched across
    the images of a call. rapidocr's own pre/post-processing is reused unchanged."""

    name = "rapidocr"

    def __init__(self, identity: ModelIdentity, threads: int = 0, gate_side: int = GATE_SIDE):
        super().__init__(identity)
        self.threads = threads
        self.gate_side = gate_side

    def _load(self) -> None:
        from common.models.ocr_engine import PpOcrEngine

        self.engine = PpOcrEngine(self.identity.device, threads=self.threads, det_max_side=DET_MAX_SIDE,
                                  gate_side=self.gate_side)

    def predict(self, images: Sequence[Image.Image], options: OcrOptions = OcrOptions()) -> list[list[OcrLine]]:
        self.ready()
        keep = [i for i, img in enumerate(images) if not (options.min_side and min(img.size) < options.min_side)]
        out: list[list[OcrLine]] = [[] for _ in images]
        found = self.engine.read([np.asarray(images[i].convert("RGB")) for i in keep])  # thread-safe
        for i, lines in zip(keep, found):
            kept = [OcrLine(t, _box(b), s) for b, t, s in lines if t.strip() and s >= options.min_confidence]
            out[i] = sorted(kept, key=lambda ln: (round(ln.box[1] / 10), ln.box[0]))
        return out

    def _unload(self) -> None:
        if self.engine is not None:
            self.engine.close()
        self.engine = None

    @property
    def timings(self):
        """Seconds spent per step since load (gate, det, cls, rec) and images per outcome."""
        return self.engine.timings


class PaddleOcrModel(OcrModel):
    """The paddleocr package (PaddleOCR 3.x ``predict`` API); not installed here, see README."""

    name = "paddleocr"

    def _load(self) -> None:
        try:
            from paddleocr import PaddleOCR
        except ImportError:
            raise ConfigError("IMGSEARCH_OCR_BACKEND=paddleocr but the paddleocr package is not installed "
                              "(pip install paddleocr paddlepaddle), or use the default rapidocr backend") from None
        self.engine = PaddleOCR(use_doc_orientation_classify=False, use_doc_unwarping=False,
                                use_textline_orientation=True)

    def _predict_one(self, rgb: np.ndarray) -> list[OcrLine]:
        lines = []
        for page in self.engine.predict(rgb[:, :, ::-1].copy()):  # PaddleOCR takes BGR arrays
            res = page.json.get("res", page.json) if hasattr(page, "json") else page
            for text, score, poly in zip(res.get("rec_texts", []), res.get("rec_scores", []),
                                         res.get("rec_polys", [])):
                lines.append(OcrLine(str(text), _box(poly), float(score)))
        return lines


BACKENDS: dict[str, type[OcrModel]] = {"rapidocr": RapidOcrModel, "paddleocr": PaddleOcrModel}


def load_ocr(settings: Settings) -> OcrReader:
    """The configured OCR backend from the one model cache, bound to the settings' cuts."""
    if settings.ocr_backend == "rapidocr":
        identity = ModelIdentity("ocr", "rapidocr", f"threads={settings.ocr_threads},gate={settings.ocr_gate_side}",
                                 settings.device)
        model = MODELS.get(identity, lambda: RapidOcrModel(identity, settings.ocr_threads, settings.ocr_gate_side))
    else:
        identity = ModelIdentity("ocr", settings.ocr_backend, "", settings.device)
        model = MODELS.get(identity, lambda: BACKENDS[settings.ocr_backend](identity))
    return OcrReader(model, OcrOptions.from_settings(settings))
