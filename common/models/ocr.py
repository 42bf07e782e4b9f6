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
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from common.errors import ConfigError
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


class OcrModel:
    """Base class: ``predict`` takes RGB images and returns their lines, one list per image."""

    name = "base"

    def __init__(self, settings: Settings):
        self.settings = settings
        self.min_side = settings.ocr_min_side
        self.min_confidence = settings.ocr_min_confidence
        self._lock = threading.Lock()  # onnxruntime sessions are shared; one image at a time

    def predict(self, images: Sequence[Image.Image]) -> list[list[OcrLine]]:
        out = []
        for img in images:
            if self.min_side and min(img.size) < self.min_side:
                out.append([])  # too small for a readable line: not worth the detector's time
                continue
            with self._lock:
                lines = self._predict_one(np.asarray(img.convert("RGB")))
            lines = [ln for ln in lines if ln.text.strip() and ln.confidence >= self.min_confidence]
            out.append(sorted(lines, key=lambda ln: (round(ln.box[1] / 10), ln.box[0])))
        return out

    def _predict_one(self, rgb: np.ndarray) -> list[OcrLine]:  # pragma: no cover - abstract
        raise NotImplementedError


def _box(points) -> tuple[float, ...]:
    arr = np.asarray(points, dtype=np.float64).reshape(-1, 2)[:4]
    return tuple(float(v) for v in arr.ravel())


class RapidOcrModel(OcrModel):
    """PP-OCRv6 (det + rec) and the v2 angle classifier as ONNX models from the rapidocr wheel."""

    name = "rapidocr"

    def __init__(self, settings: Settings):
        super().__init__(settings)
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

    def __init__(self, settings: Settings):
        super().__init__(settings)
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


BACKENDS = {"rapidocr": RapidOcrModel, "paddleocr": PaddleOcrModel}
_cache: dict[tuple, OcrModel] = {}
_cache_lock = threading.Lock()


def load_ocr(settings: Settings) -> OcrModel:
    """The configured OCR model, loaded once per process."""
    key = (settings.ocr_backend, settings.ocr_min_side, settings.ocr_min_confidence)
    with _cache_lock:
        if key not in _cache:
            _cache[key] = BACKENDS[settings.ocr_backend](settings)
        return _cache[key]
