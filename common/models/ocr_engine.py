"""PP-OCR on onnxruntime sessions we own: explicit provider, a cheap gate, batched recognition.

The rapidocr wheel ships PaddleOCR's PP-OCRv6 detector and recogniser and the v2 angle
classifier as ONNX files, plus the pre/post-processing around them. ``RapidOCR.__call__``
runs one image at a time, chooses its execution provider from flags (and onnxruntime falls
back to the CPU without a word when CUDA cannot load), and lets every input shape through.
This engine keeps rapidocr's processing (resize bounds, padding, DB post-processing, crops,
CTC decoding: imported, not copied) and changes how the models are driven:

1. **Provider, explicit.** ``IMGSEARCH_DEVICE=cuda[:N]`` means onnxruntime's
   ``CUDAExecutionProvider`` on that GPU, or :class:`OcrDeviceError`; never a quiet CPU run.
   ``auto`` takes CUDA only when both onnxruntime and torch see a GPU. The choice is logged.
2. **Gate.** Every image larger than ``gate_side`` is first run through the detector at
   that size (a 480x360 photo costs ~1/3 of the full pass, a 1280 px one ~1/16). An image
   whose low-resolution probability map has no text pixels stops there: no full detection,
   no recognition. Photos without text, most of a photo library, cost one small pass.
3. **Batched recognition.** The text lines of every image of a call are cropped first, then
   classified and recognised together, sorted by width, in batches of similar widths.
4. **Bucketed shapes on the GPU.** Detector inputs are padded to multiples of 128 px and
   recogniser batches to widths of multiples of 64 px and power-of-two batch sizes, so the
   CUDA arena sees a few dozen shapes, not one per image (memory stays flat).

``timings`` accumulates the seconds of each step (gate, det, cls, rec) and the counts, which
is what ``bench/stages.py`` reports.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.errors import ConfigError

log = logging.getLogger(__name__)

DET_MODEL = "PP-OCRv6_det_small.onnx"
REC_MODEL = "PP-OCRv6_rec_small.onnx"
CLS_MODEL = "ch_ppocr_mobile_v2.0_cls_mobile.onnx"
TEXT_SCORE = 0.5  # rapidocr's Global.text_score: lines below are dropped
REGION_MARGIN = 16  # px around a text box the gate found, where full detection looks again
REC_HEIGHT = 48
REC_MIN_WIDTH = 320  # PaddleOCR pads every recognition batch to at least 48x320
REC_BATCH = 8  # lines per recognition run on the CPU (GPU: up to 32)
CLS_SHAPE = (3, 48, 192)
CLS_THRESH = 0.9


class OcrDeviceError(ConfigError):
    """The OCR device asked for cannot be used (no CUDA provider in this onnxruntime, or CUDA
    failed to load): raised instead of silently running on the CPU."""


def models_dir() -> Path:
    """The folder of the ONNX models inside the installed rapidocr wheel (nothing downloads)."""
    import importlib.util

    spec = importlib.util.find_spec("rapidocr")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("IMGSEARCH_OCR_BACKEND=rapidocr needs the rapidocr package (pip install rapidocr)")
    folder = Path(list(spec.submodule_search_locations)[0]) / "models"
    missing = [m for m in (DET_MODEL, REC_MODEL, CLS_MODEL) if not (folder / m).is_file()]
    if missing:
        raise ConfigError(f"the rapidocr wheel at {folder} lacks {', '.join(missing)} (rapidocr>=3.10 ships them)")
    return folder


def _cuda_seen_by_torch() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
    return bool(torch.cuda.is_available())


def choose_provider(device: str, available: list[str], gpu_present: bool | None = None) -> tuple[list, str]:
    """The onnxruntime providers for ``device`` (``IMGSEARCH_DEVICE``) and a label for logs.

    ``cuda[:N]`` needs ``CUDAExecutionProvider`` in ``available`` (onnxruntime-gpu), else
    :class:`OcrDeviceError`; ``auto`` picks CUDA when onnxruntime has it and a GPU is present
    (``gpu_present``; default: torch sees one), else the CPU; ``cpu`` and ``mps`` run on the CPU
    (onnxruntime has no MPS provider; CoreML is not used)."""
    kind, _, index = device.partition(":")
    if kind == "auto":
        present = _cuda_seen_by_torch() if gpu_present is None else gpu_present
        kind = "cuda" if "CUDAExecutionProvider" in available and present else "cpu"
    if kind == "cuda":
        if "CUDAExecutionProvider" not in available:
            raise OcrDeviceError(
                f"IMGSEARCH_DEVICE={device} but this onnxruntime has no CUDAExecutionProvider (available: "
                f"{', '.join(available)}): install onnxruntime-gpu instead of onnxruntime (the GPU image does), "
                "or set IMGSEARCH_DEVICE=cpu for OCR on the CPU")
        device_id = int(index or 0)
        options = {"device_id": device_id, "arena_extend_strategy": "kSameAsRequested",
                   "cudnn_conv_algo_search": "HEURISTIC", "do_copy_in_default_stream": True}
        return [("CUDAExecutionProvider", options), "CPUExecutionProvider"], f"cuda:{device_id}"
    return ["CPUExecutionProvider"], "cpu"


@dataclass
class Timings:
    """Accumulated seconds per step and counts, since load (thread-safe through ``add``)."""

    gate_s: float = 0.0
    det_s: float = 0.0
    cls_s: float = 0.0
    rec_s: float = 0.0
    images: int = 0
    gated_out: int = 0  # images the gate found no text in
    lines: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **values) -> None:
        with self._lock:
            for key, value in values.items():
                setattr(self, key, getattr(self, key) + value)

    def snapshot(self) -> dict:
        with self._lock:
            return {k: getattr(self, k) for k in ("gate_s", "det_s", "cls_s", "rec_s", "images", "gated_out", "lines")}


def _round_up(value: int, step: int) -> int:
    return max(step, int(math.ceil(value / step)) * step)


def _merge(boxes: list[list[int]]) -> list[tuple[int, int, int, int]]:
    """Overlapping rectangles merged until none overlap."""
    boxes = [list(map(int, b)) for b in boxes]
    merged = True
    while merged and len(boxes) > 1:
        merged = False
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                a, b = boxes[i], boxes[j]
                if a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]:
                    boxes[i] = [min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])]
                    del boxes[j]
                    merged = True
                    break
            if merged:
                break
    return [tuple(b) for b in boxes]


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


class PpOcrEngine:
    """Detector, angle classifier and recogniser sessions on one provider; :meth:`read`
    turns images (H x W x 3 uint8 arrays) into ``(box 4x2, text, score)`` lines per image."""

    def __init__(self, device: str = "cpu", threads: int = 0, det_max_side: int = 1280, gate_side: int = 320,
                 rec_min_width: int = REC_MIN_WIDTH, intra_threads: int = 1, regions: bool = True):
        """``threads`` images are detected at once (0: one per core; the GPU: one), each run
        on ``intra_threads`` onnxruntime threads (0: onnxruntime's default, all cores).
        ``regions``: full detection only around what the gate found (else the whole image)."""
        import onnxruntime as ort
        from rapidocr.ch_ppocr_cls.utils import ClsPostProcess
        from rapidocr.ch_ppocr_det.utils import DBPostProcess
        from rapidocr.ch_ppocr_rec.utils import CTCLabelDecode

        folder = models_dir()
        providers, self.device = choose_provider(device, ort.get_available_providers())
        self.gpu = self.device.startswith("cuda")
        self.threads = 1 if self.gpu else (threads or os.cpu_count() or 1)
        self.regions = regions
        self.pool = ThreadPoolExecutor(self.threads, thread_name_prefix="ocr") if self.threads > 1 else None
        self.det_max_side = det_max_side
        self.gate_side = gate_side
        self.rec_min_width = rec_min_width
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.enable_cpu_mem_arena = False  # variable shapes: rapidocr's choice, RSS stays flat
        if intra_threads > 0 and not self.gpu:
            options.intra_op_num_threads = intra_threads
            options.inter_op_num_threads = 1
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # shared cores
        self.sessions = {}
        for key, name in (("det", DET_MODEL), ("cls", CLS_MODEL), ("rec", REC_MODEL)):
            session = ort.InferenceSession(str(folder / name), sess_options=options, providers=providers)
            used = session.get_providers()
            if self.gpu and used[0] != "CUDAExecutionProvider":  # onnxruntime fell back to the CPU
                raise OcrDeviceError(f"IMGSEARCH_DEVICE={device}: onnxruntime could not start the CUDA provider "
                                     f"for {name} (session providers: {used}); check the CUDA/cuDNN libraries "
                                     "onnxruntime-gpu needs, or set IMGSEARCH_DEVICE=cpu")
            self.sessions[key] = session
        self.inputs = {k: s.get_inputs()[0].name for k, s in self.sessions.items()}
        self.det_post = DBPostProcess(thresh=0.3, box_thresh=0.5, max_candidates=1000, unclip_ratio=1.6,
                                      use_dilation=True, score_mode="fast")
        self.cls_post = ClsPostProcess(["0", "180"])
        meta = self.sessions["rec"].get_modelmeta().custom_metadata_map
        self.rec_post = CTCLabelDecode(character=meta["character"].splitlines())
        self.rec_batch = 32 if self.gpu else REC_BATCH
        self.timings = Timings()
        log.info("ocr provider chosen", extra={"device": self.device, "providers": self.sessions["det"].get_providers(),
                                               "requested": device, "threads": self.threads,
                                               "intra_threads": intra_threads})

    def close(self) -> None:
        """Stop the detection threads (the sessions go with the engine)."""
        if self.pool is not None:
            self.pool.shutdown(wait=False)
        self.sessions = {}

    # -- the steps ----------------------------------------------------------------------------
    def _run(self, key: str, batch: np.ndarray) -> np.ndarray:
        return self.sessions[key].run(None, {self.inputs[key]: batch})[0]

    def _det_input(self, img: np.ndarray, max_side: int) -> tuple[np.ndarray, int, int]:
        """Resized (longer side <= max_side, multiples of 32; never upscaled), normalised,
        NCHW, padded to the bucket on the GPU; returns the tensor and the resized h, w."""
        import cv2

        h, w = img.shape[:2]
        ratio = min(1.0, max_side / max(h, w))
        rh, rw = max(32, int(round(h * ratio / 32) * 32)), max(32, int(round(w * ratio / 32) * 32))
        resized = cv2.resize(img, (rw, rh)) if (rh, rw) != (h, w) else img
        x = (resized.astype(np.float32) * (1 / 255.0) - 0.5) / 0.5
        x = x.transpose(2, 0, 1)[None]
        if self.gpu:  # a few shapes, not one per image: the CUDA arena stays flat
            bh, bw = _round_up(rh, 128), _round_up(rw, 128)
            padded = np.zeros((1, 3, bh, bw), dtype=np.float32)
            padded[:, :, :rh, :rw] = x
            x = padded
        return np.ascontiguousarray(x, dtype=np.float32), rh, rw

    def _gate(self, img: np.ndarray) -> list[tuple[int, int, int, int]]:
        """The cheap pass: the detector at ``gate_side``; returns the regions (x0, y0, x1, y1
        in ``img`` pixels, with a margin) around the text boxes it found, merged; [] = no text."""
        x, rh, rw = self._det_input(img, self.gate_side)
        pred = self._run("det", x)[:, :, :rh, :rw]
        boxes, _ = self.det_post(pred, img.shape[:2])
        h, w = img.shape[:2]
        regions = []
        for box in boxes:
            x0, y0 = box.min(axis=0)
            x1, y1 = box.max(axis=0)
            margin = max(REGION_MARGIN, int(y1 - y0))  # a line height around it: its neighbours too
            regions.append([max(0, x0 - margin), max(0, y0 - margin), min(w, x1 + margin), min(h, y1 + margin)])
        return _merge(regions)

    def _detect(self, img: np.ndarray, regions: list[tuple[int, int, int, int]] | None = None) -> np.ndarray:
        """Full-resolution detection over the whole image, or only over ``regions``."""
        from rapidocr.ch_ppocr_det.main import TextDetector

        found = []
        for x0, y0, x1, y1 in regions if regions is not None else [(0, 0, img.shape[1], img.shape[0])]:
            part = img[y0:y1, x0:x1]
            x, rh, rw = self._det_input(part, self.det_max_side)
            pred = self._run("det", x)[:, :, :rh, :rw]
            boxes, _ = self.det_post(pred, part.shape[:2])
            found.extend(np.asarray(b, dtype=np.float32) + np.array([x0, y0], dtype=np.float32) for b in boxes)
        if not found:
            return np.zeros((0, 4, 2), dtype=np.float32)
        return TextDetector.sorted_boxes(np.stack(found))

    def _classify(self, crops: list[np.ndarray]) -> list[np.ndarray]:
        import cv2

        c, h, w = CLS_SHAPE
        out = list(crops)
        for start in range(0, len(crops), 32):
            chunk = crops[start:start + 32]
            batch = np.zeros((len(chunk), c, h, w), dtype=np.float32)
            for n, crop in enumerate(chunk):
                rw = min(w, int(math.ceil(h * crop.shape[1] / crop.shape[0])))
                resized = cv2.resize(crop, (rw, h)).astype(np.float32).transpose(2, 0, 1) / 255
                batch[n, :, :, :rw] = (resized - 0.5) / 0.5
            for n, (label, score) in enumerate(self.cls_post(self._run("cls", batch))):
                if "180" in label and score > CLS_THRESH:
                    out[start + n] = cv2.rotate(crops[start + n], 1)
        return out

    def _recognise(self, crops: list[np.ndarray]) -> list[tuple[str, float]]:
        """All lines of the call, sorted by width, in batches padded to the batch's widest."""
        import cv2

        ratios = [c.shape[1] / float(c.shape[0]) for c in crops]
        order = np.argsort(ratios, kind="stable")
        out: list[tuple[str, float]] = [("", 0.0)] * len(crops)
        for start in range(0, len(order), self.rec_batch):
            idx = order[start:start + self.rec_batch]
            max_ratio = max(self.rec_min_width / REC_HEIGHT, max(ratios[i] for i in idx))
            width = int(REC_HEIGHT * max_ratio)
            if self.gpu:
                width = _round_up(width, 64)
            rows = _pow2(len(idx)) if self.gpu else len(idx)
            batch = np.zeros((rows, 3, REC_HEIGHT, width), dtype=np.float32)
            for n, i in enumerate(idx):
                crop = crops[i]
                rw = min(width, int(math.ceil(REC_HEIGHT * ratios[i])))
                resized = cv2.resize(crop, (rw, REC_HEIGHT)).astype(np.float32).transpose(2, 0, 1) / 255
                batch[n, :, :, :rw] = (resized - 0.5) / 0.5
            preds = self._run("rec", batch)[:len(idx)]
            lines, _ = self.rec_post(preds, False, wh_ratio_list=[ratios[i] for i in idx], max_wh_ratio=max_ratio)
            for n, i in enumerate(idx):
                out[i] = (str(lines[n][0]), float(lines[n][1]))
        return out

    # -- the whole read --------------------------------------------------------------------------
    def read(self, images: list[np.ndarray]) -> list[list[tuple[np.ndarray, str, float]]]:
        """Lines ``(box 4x2 in the image's pixels, text, score)`` of each image, detector order."""
        from rapidocr.utils.process_img import (
            apply_vertical_padding,
            get_rotate_crop_image,
            map_boxes_to_original,
            resize_image_within_bounds,
        )

        def detect(rgb: np.ndarray):
            h, w = rgb.shape[:2]
            img, ratio_h, ratio_w = resize_image_within_bounds(rgb, 30, 2000)
            record = {"preprocess": {"ratio_h": ratio_h, "ratio_w": ratio_w}}
            img, record = apply_vertical_padding(img, record, 8, 30)
            started = time.perf_counter()
            regions = None
            if self.gate_side and max(img.shape[:2]) > self.gate_side * 1.25:
                regions = self._gate(img)
                if not regions:
                    return (h, w, img, record, None), time.perf_counter() - started, 0.0
            gated = time.perf_counter()
            boxes = self._detect(img, regions if self.regions else None)
            return (h, w, img, record, boxes), gated - started, time.perf_counter() - gated

        done = list(self.pool.map(detect, images)) if self.pool is not None and len(images) > 1 else \
            [detect(rgb) for rgb in images]
        prepared = [d[0] for d in done]
        gate_s, det_s = sum(d[1] for d in done), sum(d[2] for d in done)
        gated_out = sum(1 for p in prepared if p[4] is None)
        crops, owners = [], []
        for n, (_, _, img, _, boxes) in enumerate(prepared):
            for box in boxes if boxes is not None else []:
                crops.append(get_rotate_crop_image(img, copy.deepcopy(box).astype(np.float32)))
                owners.append(n)
        started = time.perf_counter()
        crops = self._classify(crops) if crops else crops
        classified = time.perf_counter()
        texts = self._recognise(crops) if crops else []
        recognised = time.perf_counter()
        per_image: list[list[tuple[np.ndarray, str, float]]] = [[] for _ in images]
        by_image: dict[int, list[int]] = {}
        for k, n in enumerate(owners):
            by_image.setdefault(n, []).append(k)
        for n, ks in by_image.items():
            h, w, _, record, boxes = prepared[n]
            mapped = map_boxes_to_original(np.asarray(boxes, dtype=np.float32).copy(), record, h, w)
            for j, k in enumerate(ks):
                text, score = texts[k]
                if text.strip() and score >= TEXT_SCORE:
                    per_image[n].append((mapped[j], text, score))
        self.timings.add(gate_s=gate_s, det_s=det_s, cls_s=classified - started, rec_s=recognised - classified,
                         images=len(images), gated_out=gated_out, lines=len(crops))
        return per_image
