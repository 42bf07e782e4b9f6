"""Captions and tags: CLIP zero-shot tags with the bundled reference model, the
OpenAI-compatible endpoint backend against a local test endpoint (real HTTP, see
tests/vision_server.py) with the crop technique, and the local transformers backend."""

from __future__ import annotations

import os

import pytest
from PIL import Image

from common.errors import ConfigError
from common.models.caption import CaptionError, ClipTagger, OpenAICaptioner, TransformersCaptioner, crops
from common.models.clip import load_clip
from tests.conftest import CLASSES
from tests.vision_server import VisionEndpoint

LABEL = {"t-shirt-top": "t-shirt", "trouser": "trousers", "ankle-boot": "ankle boot"}


def test_clip_zero_shot_tags_name_what_the_reference_model_sees(make_settings, samples_dir):
    settings = make_settings(caption_max_tags=3, caption_min_score=0.0)
    tagger = ClipTagger(settings, load_clip(settings.clip_model, settings.clip_pretrained, settings))
    paths = [p for c in CLASSES for p in sorted((samples_dir / c).glob("*.png"))[:5]]
    images = [Image.open(p).convert("RGB") for p in paths]
    described = tagger.describe(images)
    hits = [LABEL.get(p.parent.name, p.parent.name) in [t for t, _ in d.tags] for p, d in zip(paths, described)]
    assert sum(hits) / len(hits) >= 0.7, [d.tags for d in described[:5]]
    for d in described:
        scores = [s for _, s in d.tags]
        assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores) and d.captions == []
    # the stored vectors give the same tags as the pixels (the caption stage reuses them)
    vectors = tagger.model.encode_images(images[:4])
    assert [d.tags for d in tagger.describe([None] * 4, vectors)] == [d.tags for d in described[:4]]


def test_custom_vocabulary_and_bad_vocabulary(make_settings, tmp_path):
    settings = make_settings(caption_vocabulary=str(tmp_path / "missing.txt"))
    model = load_clip(settings.clip_model, settings.clip_pretrained, settings)
    with pytest.raises(ConfigError, match="cannot read IMGSEARCH_CAPTION_VOCABULARY"):
        ClipTagger(settings, model)
    (tmp_path / "v.txt").write_text("# clothes\nsneaker\nsandal\nsneaker\n")
    tagger = ClipTagger(make_settings(caption_vocabulary=str(tmp_path / "v.txt")), model)
    assert tagger.labels == ["sneaker", "sandal"]


def white_with_yellow_corner() -> Image.Image:
    img = Image.new("RGB", (100, 100), (250, 250, 250))
    img.paste((240, 220, 20), (0, 0, 55, 55))
    return img


def test_endpoint_backend_describes_whole_image_and_crops_and_merges(make_settings):
    with VisionEndpoint() as endpoint:
        settings = make_settings(caption_backend="openai", caption_endpoint=endpoint.url, caption_model="test-vl",
                                 caption_api_key="k-123", caption_grid=2)
        desc = OpenAICaptioner(settings).describe([white_with_yellow_corner()])[0]
        assert len(endpoint.requests) == 1 + 4  # whole image + 2x2 crops
        sizes = sorted((r["size"] for r in endpoint.requests), reverse=True)  # sent concurrently: any order
        assert sizes[0] == (100, 100) and all(size[0] < 100 for size in sizes[1:])
        assert {r["model"] for r in endpoint.requests} == {"test-vl"}
        assert {r["auth"] for r in endpoint.requests} == {"Bearer k-123"}
        assert desc.captions[0] == "a white picture 100x100"
        tags = dict(desc.tags)
        assert tags["white"] > tags["yellow"] > 0  # the small yellow detail survives thanks to a crop
        assert "yellow" in " ".join(desc.captions)

        whole_only = OpenAICaptioner(settings.with_overrides(caption_grid=0)).describe([white_with_yellow_corner()])
        assert "yellow" not in dict(whole_only[0].tags)


def test_endpoint_refusals_are_per_image_and_outages_are_transient(make_settings):
    with VisionEndpoint() as endpoint:
        settings = make_settings(caption_backend="openai", caption_endpoint=endpoint.url, caption_model="m",
                                 caption_grid=0)
        captioner = OpenAICaptioner(settings)
        with pytest.raises(CaptionError, match="refused the image \\(400\\)"):
            captioner.describe([Image.new("RGB", (40, 40), (230, 20, 230))])
        endpoint.fail_next = 1
        with pytest.raises(ConnectionError, match="503"):
            captioner.describe([Image.new("RGB", (40, 40), "red")])
        assert captioner.describe([Image.new("RGB", (40, 40), "red")])[0].captions == ["a red picture 40x40"]
    gone = OpenAICaptioner(settings)
    with pytest.raises(ConnectionError, match="unreachable"):
        gone.describe([Image.new("RGB", (40, 40), "red")])
    with pytest.raises(ConfigError, match="IMGSEARCH_CAPTION_ENDPOINT"):
        OpenAICaptioner(make_settings(caption_backend="openai"))


def test_crops_cover_the_image_in_a_grid():
    views = crops(Image.new("RGB", (200, 100)), 3)
    assert len(views) == 10 and views[0].size == (200, 100)
    assert all(v.size[0] <= 200 / 3 * 1.3 + 1 for v in views[1:])
    assert len(crops(Image.new("RGB", (200, 100)), 1)) == 1


def test_transformers_backend_needs_a_local_model_folder(make_settings, tmp_path):
    with pytest.raises(ConfigError, match="local folder"):
        TransformersCaptioner(make_settings(caption_backend="transformers", caption_model=str(tmp_path)))


def test_transformers_backend_captions_with_local_weights(make_settings):
    folder = os.environ.get("IMGSEARCH_TEST_CAPTION_MODEL")
    if not folder:
        pytest.skip("no image-to-text weights exist on this offline machine (no hub access, no package ships "
                    "one); set IMGSEARCH_TEST_CAPTION_MODEL=/path/to/blip-folder to run this test")
    captioner = TransformersCaptioner(make_settings(caption_backend="transformers", caption_model=folder,
                                                    caption_grid=2))
    desc = captioner.describe([white_with_yellow_corner()])[0]
    assert desc.captions and all(c.strip() for c in desc.captions)


def test_endpoint_requests_are_concurrent_and_bounded(make_settings):
    images = [white_with_yellow_corner(), Image.new("RGB", (80, 60), "red"), Image.new("RGB", (40, 40), (230, 20, 230))]
    with VisionEndpoint() as endpoint:
        endpoint.hold = 3  # requests wait until 3 were in flight at once: only a concurrent client gets past
        settings = make_settings(caption_backend="openai", caption_endpoint=endpoint.url, caption_model="m",
                                 caption_grid=2, caption_concurrency=3)
        captioner = OpenAICaptioner(settings)
        out = captioner.describe_each(images)
        assert endpoint.max_in_flight == 3  # never more than the bound
        assert len(endpoint.requests) == 3 * 5  # whole image + 2x2 crops each, grid crops included
        assert out[0].captions[0] == "a white picture 100x100" and "yellow" in dict(out[0].tags)
        assert out[1].captions[0] == "a red picture 80x60"
        assert isinstance(out[2], CaptionError) and "refused" in str(out[2])  # per image, not per batch
        with pytest.raises(CaptionError):
            captioner.describe(images)

        endpoint.hold, endpoint.max_in_flight = 0, 0
        sequential = OpenAICaptioner(settings.with_overrides(caption_concurrency=1))
        assert sequential.describe(images[:2]) == out[:2] and endpoint.max_in_flight == 1
