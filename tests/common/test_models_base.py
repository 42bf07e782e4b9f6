"""The one model lifecycle (common/models/base.py): one load per identity, options outside the
identity, unload and reload, failed loads not cached. Real models where a real one shows it."""

from __future__ import annotations

import threading

import pytest
from PIL import Image

from common.errors import ConfigError
from common.models.base import MODELS, InferenceModel, ModelCache, ModelIdentity
from common.models.clip import load_clip
from common.models.ocr import load_ocr
from common.models.text import load_text_encoder
from tests.text_images import text_image


class CountingModel(InferenceModel):
    """A model whose load is slow enough for racing callers to overlap, and counted."""

    loads = 0

    def __init__(self, identity: ModelIdentity, gate: threading.Event):
        super().__init__(identity)
        self.gate = gate
        self.weights = None

    def _load(self) -> None:
        self.gate.wait(timeout=30)
        type(self).loads += 1
        self.weights = [0.0] * 1000

    def _unload(self) -> None:
        self.weights = None

    def _warm(self) -> None:
        self.predict()

    def predict(self) -> int:
        self.ready()
        return len(self.weights)


def test_racing_first_calls_load_one_model_once():
    cache, gate = ModelCache(), threading.Event()
    identity = ModelIdentity("test", "counting")
    got: list[InferenceModel] = []
    threads = [threading.Thread(target=lambda: got.append(cache.get(identity, lambda: CountingModel(identity, gate))))
               for _ in range(8)]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join(timeout=60)
    assert len(got) == 8 and len({id(m) for m in got}) == 1
    assert CountingModel.loads == 1 and cache.loaded() == [identity]


def test_unloaded_model_loads_again_on_next_use_and_idle_models_unload():
    cache, gate = ModelCache(), threading.Event()
    gate.set()
    identity = ModelIdentity("test", "reload")
    model = cache.get(identity, lambda: CountingModel(identity, gate))
    before = CountingModel.loads
    assert cache.unload(kind="test") == 1 and not model.loaded and model.weights is None
    assert cache.loaded() == []
    assert model.predict() == 1000 and model.loaded and CountingModel.loads == before + 1
    assert cache.unload_idle(3600) == 0 and model.loaded  # used just now
    assert cache.unload_idle(0) == 1 and not model.loaded


def test_options_are_not_identity_two_cuts_share_one_loaded_ocr(make_settings):
    strict = load_ocr(make_settings(ocr_min_confidence=0.99, ocr_min_side=0))
    loose = load_ocr(make_settings(ocr_min_confidence=0.0, ocr_min_side=500))
    assert strict.model is loose.model  # one detector/recogniser in memory
    img = text_image(["SERIAL XK-4471-B"])
    assert [ln.text for ln in load_ocr(make_settings()).predict([img])[0]] == ["SERIAL XK-4471-B"]
    assert loose.predict([img]) == [[]]  # shorter side below 500: not OCRed, by this caller's option


def test_text_encoder_unload_frees_and_reloads_the_same_vectors(make_settings):
    encoder = load_text_encoder(make_settings())
    first = encoder.encode(["a red sneaker"])
    assert load_text_encoder(make_settings(caption_max_tags=1)) is encoder
    assert MODELS.unload(identity=encoder.identity) == 1 and encoder.model is None
    again = encoder.encode(["a red sneaker"])
    assert encoder.loaded and (abs(first - again) < 1e-6).all()


def test_clip_identity_is_the_model_not_the_settings_and_warm_runs_both_towers(make_settings, tmp_path):
    settings = make_settings()
    model = load_clip(settings.clip_model, "", settings)
    # another data dir, another batch size: the same weights, the same loaded model
    other = make_settings(data_dir=tmp_path / "elsewhere", batch_size=3)
    assert load_clip(other.clip_model, other.clip_pretrained, other) is model
    model.warm()
    assert model.encode_images([Image.new("RGB", (28, 28), "black")]).shape == (1, model.spec.dim)


def test_a_failed_load_is_not_cached(make_settings, tmp_path):
    settings = make_settings()
    missing = str(tmp_path / "later.pt")
    with pytest.raises(ConfigError, match="checkpoint file not found"):
        load_clip("ViT-B-32", missing, settings)
    assert not [i for i in MODELS.loaded("clip") if i.weights == missing]
    with pytest.raises(ConfigError, match="checkpoint file not found"):  # tried again, not a cached failure
        load_clip("ViT-B-32", missing, settings)
