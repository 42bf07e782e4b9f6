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
    """PP-OCRv6 (det + rec) and the v2 angle classifier as ONNX models from the rapidocr wheel."""

    name = "rapidocr"

    def _load(self) -> None:
        try:
            from rapidocr import RapidOCR
        except ImportError as exc:
            raise ConfigError(f"IMGSEARCH_OCR_BACKEND=rapidocr needs rapidocr and onnxruntime: {exc}") from None
        logging.getLogger("RapidOCR").setLevel(logging.ERROR)
        # rapidocr's default detector input scales the SHORTER side up to 736 px: a 48 px
        # thumbnail becomes 736x736 (seconds of CPU for nothing). Bounding the LONGER side
        # instead only ever shrinks large images: 5-10x faster here, and as accurate on the
        # test sets (small signs read better unscaled).
        self.engine = RapidOCR(params={"Global.log_level": "error", "Det.limit_type": "max",
                                       "Det.limit_side_len": DET_MAX_SIDE})

    def _predict_one(self, rgb: np.ndarray) -> list[OcrLine]:
        result = self.engine(rgb)
        if result is None or result.txts is None or result.boxes is None:
            return []
        return [OcrLine(str(t), _box(b), float(s)) for b, t, s in zip(result.boxes, result.txts, result.scores)]


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
    identity = ModelIdentity("ocr", settings.ocr_backend, "", settings.device)
    model = MODELS.get(identity, lambda: BACKENDS[settings.ocr_backend](identity))
    return OcrReader(model, OcrOptions.from_settings(settings))
