"""Known CLIP models, their default weights, and the model cache that holds them.

The product default is ViT-B-32 with LAION-2B weights (``laion2b_s34b_b79k``): a general
model. Its checkpoint is fetched ONCE into the model cache (``IMGSEARCH_MODEL_CACHE_DIR``,
default ``<data dir>/models``) the first time it is needed on a machine that is online, or
explicitly with ``imgsearch models fetch NAME [--from FILE|s3://...]``; afterwards it loads
from the cache with no network. ``HF_HUB_OFFLINE=1`` forbids the automatic fetch (tests set
it). The bundled Fashion-MNIST reference model needs no fetch: the demo, the tests and the
benchmarks select it explicitly (``IMGSEARCH_CLIP_MODEL=imgsearch-fmnist-lit-minilm``).
"""

from __future__ import annotations

import os
import shutil
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from common.errors import ConfigError
from common.models import reference

DEFAULT_MODEL = "ViT-B-32"
CHECKPOINT = "open_clip_model.safetensors"  # the file name open_clip publishes on the HF hub


@dataclass(frozen=True)
class Known:
    name: str
    pretrained: str
    dim: int
    cost: float  # image-tower compute relative to ViT-B-32 (GFLOPs per 224px image: 4.4)
    repo: str = ""  # Hugging Face repository of the open_clip checkpoint ("" = bundled)
    note: str = ""


KNOWN = {k.name: k for k in (
    Known("ViT-B-32", "laion2b_s34b_b79k", 512, 1.0, "laion/CLIP-ViT-B-32-laion2B-s34B-b79K",
          "default: general photos, fast on CPU"),
    Known("ViT-B-16", "laion2b_s34b_b88k", 512, 4.0, "laion/CLIP-ViT-B-16-laion2B-s34B-b88K", "finer detail"),
    Known("ViT-L-14", "laion2b_s32b_b82k", 768, 18.0, "laion/CLIP-ViT-L-14-laion2B-s32B-b82K",
          "best quality, GPU advised"),
    Known(reference.REFERENCE_MODEL, reference.REFERENCE_TAG, 384, 0.05, "",
          "bundled demo/test model: Fashion-MNIST clothing only"),
)}


def default_pretrained(model_name: str) -> str:
    """The weights an empty IMGSEARCH_CLIP_PRETRAINED means for ``model_name`` ("" if none)."""
    known = KNOWN.get(model_name)
    return known.pretrained if known else ""


SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")  # open_clip picks the loader by suffix


def cached_path(cache_dir: Path, name: str, pretrained: str) -> Path:
    """The cached checkpoint of (name, pretrained): the one present, else where a download goes."""
    folder = Path(cache_dir) / "checkpoints" / name / pretrained
    for suffix in SUFFIXES:
        path = folder / f"open_clip_model{suffix}"
        if path.is_file():
            return path
    return folder / CHECKPOINT


def known_for(name: str, pretrained: str) -> Known | None:
    known = KNOWN.get(name)
    return known if known is not None and known.repo and known.pretrained == pretrained else None


def offline_message(name: str, pretrained: str) -> str:
    return (f"the weights of {name} ({pretrained}) are not in the model cache and this machine is offline. "
            f"Ways out: connect once (or run `imgsearch models fetch {name}`, also --from FILE or s3://...); "
            "point IMGSEARCH_CLIP_PRETRAINED at a checkpoint file or s3:// URI; or use the bundled demo model "
            f"(IMGSEARCH_CLIP_MODEL={reference.REFERENCE_MODEL})")


# The command line keeps Hugging Face libraries offline (it sets HF_HUB_OFFLINE=1 when unset)
# but lets this catalog fetch when the user did not forbid it: it records that here.
FETCH_ALLOWED: bool | None = None


def offline() -> bool:
    """True when the automatic fetch is forbidden (HF_HUB_OFFLINE=1 set by the user or tests)."""
    if FETCH_ALLOWED is not None:
        return not FETCH_ALLOWED
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def checkpoint_for(name: str, pretrained: str, cache_dir: Path, fetch: bool = True) -> Path | None:
    """The cached checkpoint of a known (model, tag); fetched once when online. None for a
    tag this catalog does not know (open_clip resolves it itself)."""
    known = known_for(name, pretrained)
    if known is None:
        return None
    path = cached_path(cache_dir, name, pretrained)
    if path.is_file():
        return path
    if not fetch or offline():
        raise ConfigError(offline_message(name, pretrained))
    try:
        return download(known, path)
    except OSError as exc:
        raise ConfigError(f"{offline_message(name, pretrained)} (fetch failed: {exc})") from None


def download(known: Known, target: Path) -> Path:
    url = f"https://huggingface.co/{known.repo}/resolve/main/{CHECKPOINT}"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
    with urllib.request.urlopen(url, timeout=60) as resp, open(tmp, "wb") as out:  # noqa: S310 (fixed host)
        shutil.copyfileobj(resp, out, 1 << 22)
    tmp.replace(target)
    return target


def install(name: str, pretrained: str, source: Path, cache_dir: Path) -> Path:
    """Copy a checkpoint file into the cache as (name, pretrained) (``models fetch --from``)."""
    suffix = Path(source).suffix if Path(source).suffix in SUFFIXES else ".pt"
    folder = Path(cache_dir) / "checkpoints" / name / pretrained
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("open_clip_model.*"):
        old.unlink()
    target = folder / f"open_clip_model{suffix}"
    tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
    shutil.copyfile(source, tmp)
    tmp.replace(target)
    return target


def cached(cache_dir: Path) -> dict[str, bool]:
    """model name -> whether its default weights are in the cache (bundled: always)."""
    return {k.name: (not k.repo) or cached_path(cache_dir, k.name, k.pretrained).is_file() for k in KNOWN.values()}
