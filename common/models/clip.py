"""CLIP image/text encoder over open_clip: one small interface (load, encode).

Any open_clip model works: a built-in name with a pretrained tag, a built-in name with a
local or ``s3://`` checkpoint, ``hf-hub:``/``local-dir:`` names, or the bundled offline
reference model. Images are encoded in ONE batched forward pass per call; outputs are
L2-normalised float32 so inner product = cosine similarity everywhere downstream.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from common.errors import ConfigError
from common.models import catalog, reference
from common.models.base import MODELS, InferenceModel, ModelIdentity
from common.settings import Settings

log = logging.getLogger(__name__)

RANDOM_INIT = "none"  # IMGSEARCH_CLIP_PRETRAINED=none: random weights (benchmarks only)


@dataclass(frozen=True)
class ModelSpec:
    """What a collection records about the model that built it.

    ``weights`` is what the user named (tag, path, URI); ``digest`` identifies the actual
    weights (sha256 prefix of the checkpoint file, or the tag), so two paths to the same
    file match and a retrained file at the same path does not.
    """

    name: str
    weights: str
    digest: str
    dim: int

    def label(self) -> str:
        return f"{self.name} ({self.weights}, {self.dim}-d, {self.digest})"


def resolve_device(device: str) -> str:
    """``auto`` -> cuda if available, else mps, else cpu."""
    import torch

    if device != "auto":
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} requested but CUDA is not available here")
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def file_digest(path: Path) -> str:
    """sha256 prefix of a checkpoint file (streamed: checkpoints can be GBs)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def resolve_weights(model_name: str, pretrained: str, settings: Settings) -> tuple[str | None, str, str]:
    """(value for open_clip's ``pretrained``, weights label, digest) for a model + pretrained."""
    if reference.is_reference(model_name, pretrained):
        path = reference.reference_checkpoint(settings.cache_dir)
        return str(path), reference.REFERENCE_TAG, reference.weights_digest()
    if model_name.startswith(("hf-hub:", "local-dir:")):
        return None, model_name, model_name
    pretrained = pretrained or catalog.default_pretrained(model_name)
    cached = catalog.checkpoint_for(model_name, pretrained, settings.cache_dir)  # known tag: the cache
    if cached is not None:
        return str(cached), pretrained, pretrained
    if not pretrained:
        raise ConfigError(
            f"IMGSEARCH_CLIP_PRETRAINED is empty for model {model_name!r}: give a pretrained tag "
            f"(see open_clip.list_pretrained()), a checkpoint path or an s3:// URI "
            f"(or '{RANDOM_INIT}' for random weights, benchmarks only)")
    if pretrained == RANDOM_INIT:
        return None, RANDOM_INIT, "random-init-seed0"
    if pretrained.startswith("s3://"):
        path = download_checkpoint(pretrained, settings)
        return str(path), pretrained, file_digest(path)
    path = Path(pretrained).expanduser()
    if path.is_file():
        return str(path), pretrained, file_digest(path)
    if "/" in pretrained or pretrained.endswith((".pt", ".bin", ".safetensors", ".pth")):
        raise ConfigError(f"checkpoint file not found: {pretrained}")
    return pretrained, pretrained, pretrained  # a tag: open_clip resolves (needs its cache offline)


def download_checkpoint(uri: str, settings: Settings) -> Path:
    """Fetch an ``s3://`` checkpoint into the model cache once (keyed by URI and ETag)."""
    from common.sources import s3_client, split_s3_uri

    bucket, key = split_s3_uri(uri)
    client = s3_client(settings)
    try:
        etag = client.head_object(Bucket=bucket, Key=key)["ETag"].strip('"')
    except Exception as exc:
        raise ConfigError(f"cannot read checkpoint {uri}: {exc}") from exc
    tag = hashlib.sha256(f"{uri}@{etag}".encode()).hexdigest()[:16]
    target = settings.cache_dir / "checkpoints" / "s3" / f"{tag}-{Path(key).name}"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f"{target.suffix}.{os.getpid()}.part")
        client.download_file(bucket, key, str(tmp))
        tmp.replace(target)
    return target


class ClipModel(InferenceModel):
    """An open_clip model with its preprocess and tokenizer. Thread-safe to call.

    ``spec`` (name, weights, digest, dim) is known once loaded; the cache loads on get."""

    def __init__(self, identity: ModelIdentity, settings: Settings):
        super().__init__(identity)
        self.settings = settings
        self.model = self.preprocess = self.tokenizer = None
        self.spec: ModelSpec | None = None
        self.device = identity.device
        self.pad_id: int | None = None  # trailing pads are cut from text tokens (see padding_id)

    def _load(self) -> None:
        """Load weights once; raise :class:`ConfigError` with a useful message when impossible."""
        import open_clip
        import torch

        model_name, pretrained, settings = self.identity.name, self.identity.weights, self.settings
        _quiet_transformers()
        reference.register_config(settings.cache_dir)
        ckpt, label, digest = resolve_weights(model_name, pretrained, settings)
        device = resolve_device(settings.device)
        torch.manual_seed(0)  # random-init benchmarks get the same weights every run
        extra = {}
        if catalog.known_for(model_name, label) is not None:  # a cached file: the tag's own preprocessing
            cfg = open_clip.get_pretrained_cfg(model_name, label)
            extra = {k: cfg[c] for k, c in (("image_mean", "mean"), ("image_std", "std"),
                                             ("image_interpolation", "interpolation"),
                                             ("image_resize_mode", "resize_mode")) if cfg.get(c)}
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                model_name, pretrained=ckpt, device=device, pretrained_text=False, **extra)
        except RuntimeError as exc:
            raise ConfigError(f"cannot load CLIP model {model_name!r} with weights {label!r}: {exc}. "
                              "Offline machines need a local checkpoint path or s3:// URI.") from exc
        model.eval()
        tokenizer = open_clip.get_tokenizer(model_name)
        with torch.inference_mode():
            dim = int(model.encode_text(tokenizer(["probe"]).to(device)).shape[-1])
        self.model, self.preprocess, self.tokenizer, self.device = model, preprocess, tokenizer, device
        self.pad_id = padding_id(model)
        self.spec = ModelSpec(model_name, label, digest, dim)
        log.info("loaded CLIP model", extra={"model": self.spec.label(), "device": device})

    def _unload(self) -> None:
        self.model = self.preprocess = self.tokenizer = None

    def _warm(self) -> None:
        self.encode_texts(["warm up"])
        self.encode_images([Image.new("RGB", (32, 32), "white")])

    def preprocess_images(self, images: Sequence[Image.Image]):
        """PIL images -> one (N, 3, H, W) float tensor on the CPU (pinned when going to CUDA)."""
        import torch

        self.ready()
        batch = torch.stack([self.preprocess(img) for img in images])
        return batch.pin_memory() if self.device.startswith("cuda") else batch

    def encode_image_tensors(self, batch) -> np.ndarray:
        """One forward pass over a preprocessed batch -> (N, d) L2-normalised float32."""
        import torch

        self.ready()
        with self._lock, torch.inference_mode(), self._autocast():
            feats = self.model.encode_image(batch.to(self.device, non_blocking=True))
            feats = torch.nn.functional.normalize(feats.float(), dim=-1)
        return feats.cpu().numpy().astype(np.float32)

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """PIL images -> (N, d) L2-normalised float32, in one forward pass."""
        if not images:
            self.ready()
            return np.zeros((0, self.spec.dim), dtype=np.float32)
        return self.encode_image_tensors(self.preprocess_images(images))

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> (N, d) L2-normalised float32, in one forward pass."""
        import torch

        self.ready()
        if not texts:
            return np.zeros((0, self.spec.dim), dtype=np.float32)
        tokens = trim_padding(self.tokenizer(list(texts)), self.pad_id).to(self.device)
        with self._lock, torch.inference_mode(), self._autocast():
            feats = self.model.encode_text(tokens)
            feats = torch.nn.functional.normalize(feats.float(), dim=-1)
        return feats.cpu().numpy().astype(np.float32)

    def _autocast(self):
        import contextlib

        import torch

        if self.device.startswith("cuda"):
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()


def padding_id(model) -> int | None:
    """The pad token id of a text tower whose output provably does not depend on trailing
    pads, or None (then tokens go in at the full context length).

    Tokenizers pad every text to the context length (64 or 77 tokens) though a query has a
    handful; cutting the columns that are padding in every row of a batch halves the text
    tower's time here and leaves the vectors unchanged where the tower ignores them: a
    Hugging Face tower (``HFTextEncoder``: the reference model's MiniLM, the XLM-R towers)
    masks attention with ``input_ids != pad_token_id`` and pools masked (mean, max) or at
    the first token.

    open_clip's own towers keep their pads: the CLIP class adds its whole positional
    embedding, ``TextTransformer`` its whole causal mask (open_clip 3.x slices it only with a
    pad mask, and fails on a shorter input), and bidirectional or last-token towers (SigLIP)
    read their pads."""
    text = getattr(model, "text", None)
    if type(text).__name__ != "HFTextEncoder":
        return None
    pad = getattr(getattr(text, "config", None), "pad_token_id", None)
    return int(pad) if pad is not None else None


def trim_padding(tokens, pad_id: int | None):
    """``tokens`` without the trailing columns that are ``pad_id`` in every row."""
    if pad_id is None or tokens.shape[1] == 0:
        return tokens
    used = (tokens != pad_id).any(dim=0).nonzero()
    return tokens[:, :int(used.max()) + 1] if len(used) else tokens[:, :1]


def clip_identity(model_name: str, pretrained: str, settings: Settings) -> ModelIdentity:
    """The identity of a CLIP model: name, weights as named ("" = the reference model's tag), device."""
    if reference.is_reference(model_name, pretrained):
        pretrained = reference.REFERENCE_TAG  # "" and the tag name the same weights
    pretrained = pretrained or catalog.default_pretrained(model_name)  # "" = the model's default weights
    return ModelIdentity("clip", model_name, pretrained, settings.device)


def load_clip(model_name: str, pretrained: str, settings: Settings) -> ClipModel:
    """The loaded CLIP model for (model, weights, device), from the one model cache."""
    identity = clip_identity(model_name, pretrained, settings)
    return MODELS.get(identity, lambda: ClipModel(identity, settings))


def _quiet_transformers() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # open_clip without an HF text tower does not need transformers
        pass
