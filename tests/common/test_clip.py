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


def test_text_padding_is_cut_only_where_the_vectors_stay_the_same(make_settings):
    """Text queries go in without their trailing pads (a handful of tokens, not 64): the
    reference model's vectors equal those at the full context length, for a batch of
    different lengths; towers that read their pads keep them."""
    from common.models.clip import padding_id, trim_padding

    model = load_clip(reference.REFERENCE_MODEL, "", make_settings())
    texts = ["a red sneaker", "warm winter coat with a hood and two deep pockets", "x"]
    full = model.tokenizer(texts)
    cut = trim_padding(full, model.pad_id)
    assert model.pad_id is not None and cut.shape[1] < full.shape[1] // 3
    assert (cut != model.pad_id).sum() == (full != model.pad_id).sum()  # no real token is lost
    with torch.inference_mode():
        want = torch.nn.functional.normalize(model.model.encode_text(full), dim=-1).numpy()
    assert cosines(model.encode_texts(texts), want).min() >= 0.99999

    # open_clip's own towers keep their pads (see padding_id): the CLIP class, a causal
    # TextTransformer (it fails on a shorter input), a bidirectional last-token one (SigLIP)
    assert padding_id(open_clip.create_model("RN50", pretrained=None)) is None  # random weights
    for extra in ({}, {"no_causal_mask": True, "pool_type": "last"}):
        tower = open_clip.transformer.TextTransformer(context_length=77, vocab_size=49408, width=64, heads=2,
                                                      layers=1, output_dim=32, **extra)
        assert padding_id(type("Custom", (), {"text": tower})()) is None


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
        resolve_weights("RN50", "", settings)  # a model the catalog has no default weights for
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


def test_the_default_model_offline_without_cached_weights_says_the_ways_out(make_settings, tmp_path, samples_dir):
    """The product default (ViT-B-32, laion2b_s34b_b79k) with an empty model cache, offline
    (HF_HUB_OFFLINE=1): one line naming the three ways out; the CLI prints it with no traceback."""
    import subprocess
    import sys

    from common.settings import Settings
    from tests.servers import imgsearch_env

    settings = Settings.from_env({}, data_dir=tmp_path / "d", model_cache_dir=str(tmp_path / "empty-cache"))
    assert (settings.clip_model, settings.clip_pretrained) == ("ViT-B-32", "")
    with pytest.raises(ConfigError) as caught:
        load_clip(settings.clip_model, settings.clip_pretrained, settings)
    message = str(caught.value)
    assert "\n" not in message and "laion2b_s34b_b79k" in message and "offline" in message
    for way in ("connect once", "imgsearch models fetch ViT-B-32", "IMGSEARCH_CLIP_PRETRAINED",
                f"IMGSEARCH_CLIP_MODEL={reference.REFERENCE_MODEL}"):
        assert way in message
    env = imgsearch_env({"DATA_DIR": str(tmp_path / "d"), "MODEL_CACHE_DIR": str(tmp_path / "empty-cache")})
    proc = subprocess.run([sys.executable, "-m", "imgsearch", "ingest", str(samples_dir / "bag")], env=env,
                          capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"imgsearch: error: {message}"]


def test_a_cached_checkpoint_of_the_default_model_loads_with_no_network(tmp_path, samples_dir):
    """`imgsearch models fetch ViT-B-32 --from FILE` fills the cache (as from a connected machine
    or a bucket); the default settings then load it from there, offline. The file is open_clip's
    ViT-B-32 with seeded random weights: the real laion weights cannot be had here."""
    from safetensors.torch import save_file

    from common.models import catalog
    from common.settings import Settings
    from imgsearch.cli import main

    torch.manual_seed(0)
    net = open_clip.create_model("ViT-B-32", pretrained=None)
    source = tmp_path / "vit-b-32.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(source))
    cache = tmp_path / "cache"
    os.environ["IMGSEARCH_MODEL_CACHE_DIR"] = str(cache)
    try:
        assert main(["--data-dir", str(tmp_path / "d"), "models", "fetch", "ViT-B-32", "--from", str(source)]) == 0
    finally:
        del os.environ["IMGSEARCH_MODEL_CACHE_DIR"]
    assert catalog.cached(cache)["ViT-B-32"] and not catalog.cached(cache)["ViT-L-14"]
    listed = _models_json(tmp_path, cache)
    by_name = {m["name"]: m for m in listed["models"]}
    assert by_name["ViT-B-32"] == {**by_name["ViT-B-32"], "dim": 512, "relative_cost": 1.0, "cached": True,
                                   "default": True, "pretrained": "laion2b_s34b_b79k"}
    assert not by_name["ViT-L-14"]["cached"] and by_name["ViT-L-14"]["relative_cost"] > 1
    assert by_name[reference.REFERENCE_MODEL]["bundled"] and by_name[reference.REFERENCE_MODEL]["cached"]
    settings = Settings.from_env({}, data_dir=tmp_path / "d", model_cache_dir=str(cache))
    model = load_clip(settings.clip_model, settings.clip_pretrained, settings)
    assert (model.spec.name, model.spec.weights, model.spec.dim) == ("ViT-B-32", "laion2b_s34b_b79k", 512)
    images = mixed_images(samples_dir, n=4)
    with torch.no_grad():
        net.eval()
        expected = reference_path_embeddings("ViT-B-32", str(source), images)
    assert cosines(model.encode_images(images), expected).min() >= 0.9999


def _models_json(tmp_path, cache) -> dict:
    """`imgsearch models --json`, run as a user runs it."""
    import json
    import subprocess
    import sys

    from tests.servers import imgsearch_env

    env = imgsearch_env({"DATA_DIR": str(tmp_path / "d"), "MODEL_CACHE_DIR": str(cache)})
    proc = subprocess.run([sys.executable, "-m", "imgsearch", "models", "--json"], env=env, capture_output=True,
                          text=True, timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)
