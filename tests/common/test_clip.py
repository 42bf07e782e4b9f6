"""The CLIP encoder: batched encoding equals open_clip's one-image reference path."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from common.errors import ConfigError
from common.models import reference
from common.models.clip import load_clip, resolve_weights


def reference_path_embeddings(model_name: str, pretrained: str | None, images) -> np.ndarray:
    """open_clip used the way its README shows, one image at a time, nothing of ours."""
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pretrained)
    model.eval()
    out = []
    with torch.no_grad():
        for img in images:
            feats = model.encode_image(preprocess(img).unsqueeze(0))
            out.append((feats / feats.norm(dim=-1, keepdim=True))[0].numpy())
    return np.stack(out)


def mixed_images(samples_dir, n: int = 12) -> list[Image.Image]:
    """Bundled samples plus photos of other sizes and aspect ratios (resize/crop paths)."""
    rng = np.random.default_rng(7)
    imgs = [Image.open(p).convert("RGB") for p in sorted(samples_dir.glob("*/*.png"))[::23][: n - 3]]
    for w, h in [(300, 200), (64, 640), (33, 35)]:
        imgs.append(Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)))
    return imgs


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_reference_model_batched_equals_one_image_path(make_settings, samples_dir):
    settings = make_settings()
    model = load_clip(reference.REFERENCE_MODEL, "", settings)
    images = mixed_images(samples_dir)
    batched = model.encode_images(images)
    ckpt = str(reference.reference_checkpoint(settings.cache_dir))
    single = reference_path_embeddings(reference.REFERENCE_MODEL, ckpt, images)
    assert batched.shape == (len(images), 384) and batched.dtype == np.float32
    assert np.allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)
    assert cosines(batched, single).min() >= 0.9999
    assert model.spec.weights == reference.REFERENCE_TAG
    assert model.spec.digest == reference.weights_digest()


def test_text_tower_is_the_frozen_minilm(make_settings):
    """The reference model's text side equals sentence-transformers' all-MiniLM-L6-v2."""
    from sentence_transformers import SentenceTransformer

    model = load_clip(reference.REFERENCE_MODEL, "", make_settings())
    texts = ["a red sneaker", "warm winter coat with a hood"]
    ours = model.encode_texts(texts)
    st = SentenceTransformer(str(reference.minilm_dir()), device="cpu").encode(texts, normalize_embeddings=True)
    assert cosines(ours, st).min() >= 0.9999


@pytest.mark.slow
def test_full_size_vit_b_32_batched_equals_one_image_path(make_settings, samples_dir):
    """The production architecture (random weights, seeded: no weights offline)."""
    model = load_clip("ViT-B-32", "none", make_settings())
    images = mixed_images(samples_dir, n=6)
    single = reference_path_embeddings("ViT-B-32", None, images)
    assert cosines(model.encode_images(images), single).min() >= 0.9999


def test_missing_weights_are_explained(make_settings, tmp_path):
    settings = make_settings()
    with pytest.raises(ConfigError, match="IMGSEARCH_CLIP_PRETRAINED is empty"):
        resolve_weights("ViT-B-32", "", settings)
    with pytest.raises(ConfigError, match="checkpoint file not found"):
        resolve_weights("ViT-B-32", str(tmp_path / "nope.pt"), settings)


def test_processes_assembling_the_reference_checkpoint_at_once_do_not_collide(tmp_path):
    # Workers start together on a fresh machine; each may build the model cache.
    import subprocess
    import sys

    code = ("import sys; from pathlib import Path; from common.models.reference import reference_checkpoint; "
            "print(reference_checkpoint(Path(sys.argv[1])))")
    root = Path(__file__).resolve().parents[2]
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=root, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(root)}) for _ in range(3)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err.decode()[-2000:] for _, err in outs]
    paths = {out.decode().strip() for out, _ in outs}
    assert len(paths) == 1
    from safetensors.torch import load_file

    assert len(load_file(paths.pop())) > 10
    assert not list(tmp_path.rglob("*.tmp"))
