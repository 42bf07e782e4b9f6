"""One lifecycle for every model kind: an identity, load under a lock, predict, warm, unload.

Every model imgsearch runs (the CLIP towers, the dense text encoder, OCR, captioners) is an
:class:`InferenceModel` held by the one process-wide :data:`MODELS` cache, in the shape of
Immich's machine-learning service (``InferenceModel`` plus a model cache):

- A model is keyed by its own :class:`ModelIdentity` (kind, name, weights, device): what
  makes two loads the same model, nothing else. Options that only change how a result is
  post-processed (a confidence cut, a tag count) are not part of it: callers hold them in
  a cheap bound view, so two stages that differ in a threshold share one loaded model.
- ``load`` runs once, under the model's own lock, so concurrent first calls load once and
  two different models load in parallel. Predict methods call :meth:`InferenceModel.ready`
  first, so a model that was unloaded loads again on its next use instead of failing.
- ``warm`` runs every code path once (tokenizer, both towers, detector and recogniser), so
  a worker's first answer is as fast as its tenth.
- ``unload`` frees the weights (and the CUDA cache); :meth:`ModelCache.unload_idle` drops
  models unused for a while.

A new model kind is a new subclass in its own module; nothing here changes.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelIdentity:
    """What makes two loads the same model: kind, name, weights and device.

    ``weights`` is what the user named (a pretrained tag, a checkpoint path or URI, a
    vocabulary file); ``device`` is the configured one (``auto`` resolves the same way
    within a process)."""

    kind: str  # clip | text | ocr | caption
    name: str
    weights: str = ""
    device: str = "cpu"

    def label(self) -> str:
        weights = f" ({self.weights})" if self.weights else ""
        return f"{self.kind}:{self.name}{weights} on {self.device}"


class InferenceModel(ABC):
    """Base of every model: :meth:`load` once under a lock, predict, :meth:`warm`, :meth:`unload`.

    Subclasses implement :meth:`_load` (set the attributes predict needs), :meth:`_warm`
    (one tiny predict through every path) and, where they hold more than Python objects,
    :meth:`_unload`. Their predict methods start with ``self.ready()``."""

    def __init__(self, identity: ModelIdentity):
        self.identity = identity
        self._lock = threading.RLock()  # load/unload, and predict where the backend is not re-entrant
        self._loaded = False
        self.load_seconds = 0.0
        self.last_used = time.monotonic()

    @property
    def loaded(self) -> bool:
        return self._loaded

    def load(self) -> InferenceModel:
        """Load the weights if not loaded yet (thread-safe; a second caller waits, then reuses)."""
        if self._loaded:
            return self
        with self._lock:
            if not self._loaded:
                started = time.perf_counter()
                self._load()
                self._loaded = True
                self.load_seconds = time.perf_counter() - started
                log.info("model loaded", extra={"model": self.identity.label(),
                                                "seconds": round(self.load_seconds, 3)})
        return self

    def ready(self) -> None:
        """Called by predict methods: load if needed (e.g. after an unload) and mark the use."""
        if not self._loaded:
            self.load()
        self.last_used = time.monotonic()

    def warm(self) -> None:
        """Load, then run every code path once on a tiny input."""
        self.ready()
        self._warm()

    def unload(self) -> None:
        """Free the weights; the next predict loads them again."""
        with self._lock:
            if not self._loaded:
                return
            self._unload()
            self._loaded = False
        gc.collect()
        _empty_cuda_cache(self.identity.device)
        log.info("model unloaded", extra={"model": self.identity.label()})

    @abstractmethod
    def _load(self) -> None:
        """Load weights and set what predict needs; raise ConfigError with the way out."""

    @abstractmethod
    def _warm(self) -> None:
        """One tiny predict through every path the model serves."""

    @abstractmethod
    def _unload(self) -> None:
        """Drop the weights :meth:`_load` set."""


M = TypeVar("M", bound=InferenceModel)


class ModelCache:
    """The process-wide models, one per :class:`ModelIdentity`, loaded on first use."""

    def __init__(self) -> None:
        self._models: dict[ModelIdentity, InferenceModel] = {}
        self._lock = threading.Lock()

    def get(self, identity: ModelIdentity, factory: Callable[[], M]) -> M:
        """The loaded model for ``identity``, built by ``factory`` the first time.

        The cache lock only guards the dict: loading happens under the model's own lock, so
        a slow load of one model never holds up another's."""
        with self._lock:
            model = self._models.get(identity)
            if model is None:
                model = factory()
                self._models[identity] = model
        try:
            model.load()
        except BaseException:
            with self._lock:  # a failed load is not cached: the next call tries again
                if self._models.get(identity) is model and not model.loaded:
                    del self._models[identity]
            raise
        model.last_used = time.monotonic()
        return model  # type: ignore[return-value]

    def loaded(self, kind: str | None = None) -> list[ModelIdentity]:
        """Identities of the models loaded now (of one kind, or all)."""
        with self._lock:
            return [i for i, m in self._models.items() if m.loaded and (kind is None or i.kind == kind)]

    def unload(self, kind: str | None = None, identity: ModelIdentity | None = None) -> int:
        """Unload one model, every model of a kind, or everything; returns how many."""
        with self._lock:
            chosen = [m for i, m in self._models.items()
                      if (identity is None or i == identity) and (kind is None or i.kind == kind)]
        for model in chosen:
            model.unload()
        return sum(1 for _ in chosen)

    def unload_idle(self, idle_s: float) -> int:
        """Unload models not used for ``idle_s`` seconds (a long-lived server's memory guard)."""
        cutoff = time.monotonic() - idle_s
        with self._lock:
            idle = [m for m in self._models.values() if m.loaded and m.last_used < cutoff]
        for model in idle:
            model.unload()
        return len(idle)


MODELS = ModelCache()


def _empty_cuda_cache(device: str) -> None:
    if not device.startswith(("cuda", "auto")):
        return
    import sys

    torch = sys.modules.get("torch")  # never import torch just to free memory
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
