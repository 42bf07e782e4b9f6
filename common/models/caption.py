"""Captions and tags behind one small interface (load, describe), three backends.

- ``clip``: zero-shot tags against a label vocabulary with the collection's own CLIP model
  (any open_clip model, including the bundled reference model; no extra weights). Image
  vectors already computed by ``embed`` are reused, so tagging costs one matrix product.
- ``openai``: an OpenAI-compatible vision chat endpoint (vLLM, Ollama serving Qwen-VL,
  LLaVA, ...). Uses the crop technique: the whole image and a grid of crops are described
  separately and merged, so small details (a label, a logo) are not lost in a downscaled
  whole-image view.
- ``transformers``: a local image-to-text model (BLIP, GIT, ...) from a folder on disk, with
  the same crop technique.

Every backend returns one :class:`Description` (captions, scored tags) per image.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from common.errors import ConfigError, ImgsearchError
from common.models.base import MODELS, InferenceModel, ModelIdentity
from common.settings import Settings

log = logging.getLogger(__name__)

VOCABULARY = Path(__file__).resolve().parent / "caption_vocabulary.txt"
PROMPT = ("Describe this image for a search index. Answer with JSON only: "
          '{"caption": "<one sentence>", "tags": ["<object or attribute>", ...]} '
          "with at most 10 short lowercase tags. Include any readable text in the caption.")
MAX_CROP_SIDE = 1024  # views are downscaled before upload; crops keep their detail


class CaptionError(ImgsearchError):
    """One image could not be described (bad answer, refused request): dead-lettered."""


@dataclass
class Description:
    """What a captioner says about one image: captions (whole image first) and scored tags."""

    captions: list[str] = field(default_factory=list)
    tags: list[tuple[str, float]] = field(default_factory=list)


def crops(image: Image.Image, grid: int) -> list[Image.Image]:
    """The whole image, then a ``grid`` x ``grid`` grid of slightly overlapping crops."""
    views = [image]
    if grid < 2:
        return views
    w, h = image.size
    cw, ch = w / grid, h / grid
    pad_w, pad_h = cw * 0.1, ch * 0.1
    for row in range(grid):
        for col in range(grid):
            box = (max(0, int(col * cw - pad_w)), max(0, int(row * ch - pad_h)),
                   min(w, int((col + 1) * cw + pad_w)), min(h, int((row + 1) * ch + pad_h)))
            if box[2] - box[0] >= 8 and box[3] - box[1] >= 8:
                views.append(image.crop(box))
    return views


def merge_views(answers: Sequence[tuple[str, list[str]]], max_tags: int) -> Description:
    """Merge per-view answers: captions in view order without repeats; a tag's score is the
    share of views that named it (whole image counted twice, so it wins ties)."""
    captions: list[str] = []
    counts: dict[str, float] = {}
    for n, (caption, tags) in enumerate(answers):
        caption = " ".join(caption.split())
        if caption and caption.lower() not in {c.lower() for c in captions}:
            captions.append(caption)
        for tag in dict.fromkeys(t.strip().lower() for t in tags if t and t.strip()):
            counts[tag] = counts.get(tag, 0.0) + (2.0 if n == 0 else 1.0)
    total = len(answers) + 1.0 if answers else 1.0
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:max_tags]
    return Description(captions, [(tag, round(min(1.0, c / total), 4)) for tag, c in ranked])


@dataclass(frozen=True)
class CaptionOptions:
    """Per-caller options of a captioner (not part of the model's identity)."""

    grid: int = 2
    max_tags: int = 5
    min_score: float = 0.1
    timeout_s: int = 60
    api_key: str = field(default="", repr=False)  # a secret: never in reprs or logs
    concurrency: int = 8  # endpoint requests in flight at once, per describe call

    @classmethod
    def from_settings(cls, settings: Settings) -> "CaptionOptions":
        return cls(settings.caption_grid, settings.caption_max_tags, settings.caption_min_score,
                   settings.caption_timeout_s, settings.caption_api_key, settings.caption_concurrency)


def options_concurrency(options: CaptionOptions) -> int:
    return max(1, options.concurrency)


class Captioner(InferenceModel):
    """Base of the captioners. ``describe`` gets decoded images and, when known, their CLIP
    vectors. Constructed from settings (configuration errors surface at once); the options
    default to those settings' and a :class:`Describer` binds another caller's."""

    name = "base"
    needs_pixels = True  # False: describes from stored CLIP vectors alone (no re-fetch)

    def __init__(self, settings: Settings, identity: ModelIdentity | None = None):
        super().__init__(identity or self.identity_for(settings))
        self.settings = settings
        self.options = CaptionOptions.from_settings(settings)

    @classmethod
    def identity_for(cls, settings: Settings, clip_model=None) -> ModelIdentity:
        """What makes two captioners the same model (backend, model, device)."""
        return ModelIdentity("caption", cls.name, settings.caption_model, settings.device)

    def _load(self) -> None:
        """Nothing to load by default (an endpoint holds its model)."""

    def _unload(self) -> None:
        """Nothing to free by default."""

    def _warm(self) -> None:
        """Endpoints are not warmed: a request would cost the endpoint a real caption."""

    concurrent = False  # True: views are described by up to IMGSEARCH_CAPTION_CONCURRENCY threads

    def describe(self, images: Sequence[Image.Image | None], vectors: np.ndarray | None = None,
                 options: CaptionOptions | None = None) -> list[Description]:
        """One description per image; the first image that cannot be described raises."""
        described = self.describe_each(images, options)
        for item in described:
            if isinstance(item, CaptionError):
                raise item
        return described  # type: ignore[return-value]

    def describe_each(self, images: Sequence[Image.Image], options: CaptionOptions | None = None
                      ) -> list[Description | CaptionError]:
        """A description or the :class:`CaptionError` of each image. Every view (whole image
        and grid crops) of every image is one request; a concurrent backend sends them on
        its bounded pool, so one slow request does not serialise the batch. Transient faults
        (``ConnectionError``) propagate: the stage is retried."""
        self.ready()
        opts = options or self.options
        views = [(n, view) for n, img in enumerate(images) for view in crops(img, opts.grid)]

        def one(view: Image.Image) -> tuple[str, list[str]] | CaptionError:
            try:
                return self._view(view, opts)
            except CaptionError as exc:
                return exc

        if self.concurrent and options_concurrency(opts) > 1 and len(views) > 1:
            pool = ThreadPoolExecutor(min(options_concurrency(opts), len(views)),
                                      thread_name_prefix=f"caption-{self.name}")
            try:
                answers = [f.result() for f in [pool.submit(one, v) for _, v in views]]
            finally:  # a transient fault: views not sent yet are not sent (the stage is retried)
                pool.shutdown(wait=True, cancel_futures=True)
        else:
            answers = [one(v) for _, v in views]
        per_image: list[list] = [[] for _ in images]
        for (n, _), answer in zip(views, answers):
            per_image[n].append(answer)
        out: list[Description | CaptionError] = []
        for answers_of in per_image:
            failed = next((a for a in answers_of if isinstance(a, CaptionError)), None)
            out.append(failed if failed is not None else merge_views(answers_of, opts.max_tags))
        return out

    def _view(self, image: Image.Image, options: CaptionOptions) -> tuple[str, list[str]]:  # pragma: no cover
        raise NotImplementedError


@dataclass(frozen=True)
class Describer:
    """A loaded captioner bound to one caller's :class:`CaptionOptions` (what callers hold)."""

    model: Captioner
    options: CaptionOptions

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def needs_pixels(self) -> bool:
        return self.model.needs_pixels

    def describe(self, images: Sequence[Image.Image | None], vectors: np.ndarray | None = None) -> list[Description]:
        return self.model.describe(images, vectors, self.options)

    def describe_each(self, images: Sequence[Image.Image]) -> list[Description | CaptionError]:
        """Per image a description or its :class:`CaptionError` (backends that need pixels)."""
        return self.model.describe_each(images, self.options)


class ClipTagger(Captioner):
    """Zero-shot tags: softmax over ``logit_scale * cos(image, "a photo of a <label>")``."""

    name = "clip"
    needs_pixels = False

    def __init__(self, settings: Settings, clip_model):
        self.vocabulary = (Path(settings.caption_vocabulary).expanduser() if settings.caption_vocabulary
                           else VOCABULARY)
        self.model = clip_model
        super().__init__(settings, self.identity_for(settings, clip_model))
        try:
            labels = [ln.strip() for ln in self.vocabulary.read_text(encoding="utf-8").splitlines()]
        except OSError as exc:
            raise ConfigError(f"cannot read IMGSEARCH_CAPTION_VOCABULARY {self.vocabulary}: {exc}") from None
        self.labels = list(dict.fromkeys(label for label in labels if label and not label.startswith("#")))
        if len(self.labels) < 2:
            raise ConfigError(f"caption vocabulary {self.vocabulary} needs at least two labels")
        self.label_vectors: np.ndarray | None = None
        self.scale = 100.0

    @classmethod
    def identity_for(cls, settings: Settings, clip_model=None) -> ModelIdentity:
        """The vocabulary and the CLIP model it is encoded with make the tagger."""
        vocabulary = settings.caption_vocabulary or str(VOCABULARY)
        clip = clip_model.identity.label() if clip_model is not None else ""
        return ModelIdentity("caption", f"clip[{clip}]", vocabulary, settings.device)

    def _load(self) -> None:
        self.label_vectors = self.model.encode_texts([f"a photo of a {label}" for label in self.labels])
        scale = getattr(getattr(self.model, "model", None), "logit_scale", None)
        self.scale = float(scale.exp().item()) if scale is not None else 100.0

    def _unload(self) -> None:
        self.label_vectors = None

    def _warm(self) -> None:
        self.describe([None], np.zeros((1, self.label_vectors.shape[1]), dtype=np.float32))

    def describe(self, images: Sequence[Image.Image | None], vectors: np.ndarray | None = None,
                 options: CaptionOptions | None = None) -> list[Description]:
        self.ready()
        opts = options or self.options
        if vectors is None:
            vectors = self.model.encode_images(list(images))
        logits = self.scale * (np.asarray(vectors, dtype=np.float32) @ self.label_vectors.T)
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        out = []
        for row in probs:
            order = np.argsort(-row)[: opts.max_tags]
            out.append(Description([], [(self.labels[i], round(float(row[i]), 4)) for i in order
                                        if row[i] >= opts.min_score]))
        return out


def image_data_url(image: Image.Image) -> str:
    """A view as a JPEG data URL, downscaled to at most MAX_CROP_SIDE on its longer side."""
    view = image.convert("RGB")
    if max(view.size) > MAX_CROP_SIDE:
        view.thumbnail((MAX_CROP_SIDE, MAX_CROP_SIDE))
    buf = io.BytesIO()
    view.save(buf, "JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def parse_answer(content: str) -> tuple[str, list[str]]:
    """The model's JSON answer (code fences allowed); plain prose becomes the caption."""
    text = content.strip()
    if text.startswith("```"):
        text = text.strip("`")
        text = text.split("\n", 1)[1] if "\n" in text else text
    start, end = text.find("{"), text.rfind("}")
    if start >= 0 and end > start:
        try:
            doc = json.loads(text[start:end + 1])
        except ValueError:
            doc = None
        if isinstance(doc, dict):
            tags = doc.get("tags") or []
            return str(doc.get("caption") or ""), [str(t) for t in tags] if isinstance(tags, list) else []
    return content.strip(), []


class OpenAICaptioner(Captioner):
    """POST ``<endpoint>/chat/completions`` with each view as an ``image_url`` data URL."""

    name = "openai"
    concurrent = True

    def __init__(self, settings: Settings):
        super().__init__(settings)
        if not settings.caption_endpoint or not settings.caption_model:
            raise ConfigError("IMGSEARCH_CAPTION_BACKEND=openai needs IMGSEARCH_CAPTION_ENDPOINT "
                              "(e.g. http://vllm:8000/v1) and IMGSEARCH_CAPTION_MODEL")
        self.url = settings.caption_endpoint.rstrip("/") + "/chat/completions"

    @classmethod
    def identity_for(cls, settings: Settings, clip_model=None) -> ModelIdentity:
        """The endpoint and the model it serves (the API key is an option, never an identity)."""
        return ModelIdentity("caption", "openai", f"{settings.caption_model}@{settings.caption_endpoint}", "remote")

    def _view(self, image: Image.Image, options: CaptionOptions) -> tuple[str, list[str]]:
        body = {"model": self.settings.caption_model, "temperature": 0, "max_tokens": 300,
                "messages": [{"role": "user", "content": [
                    {"type": "text", "text": PROMPT},
                    {"type": "image_url", "image_url": {"url": image_data_url(image)}}]}]}
        headers = {"Content-Type": "application/json"}
        if options.api_key:
            headers["Authorization"] = f"Bearer {options.api_key}"
        request = urllib.request.Request(self.url, data=json.dumps(body).encode(), headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=options.timeout_s) as resp:
                doc = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:300].decode("utf-8", "replace")
            if exc.code >= 500 or exc.code == 429:  # overloaded or restarting: retry the stage
                raise ConnectionError(f"caption endpoint answered {exc.code}: {detail}") from None
            raise CaptionError(f"caption endpoint refused the image ({exc.code}): {detail}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            raise ConnectionError(f"caption endpoint {self.url} unreachable: {exc}") from None
        except ValueError as exc:
            raise CaptionError(f"caption endpoint sent no JSON: {exc}") from None
        try:
            content = doc["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise CaptionError(f"caption endpoint answer has no choices[0].message.content: {str(doc)[:200]}") from None
        return parse_answer(str(content or ""))


class TransformersCaptioner(Captioner):
    """A local image-to-text model (transformers pipeline) loaded from a folder on disk."""

    name = "transformers"

    def __init__(self, settings: Settings):
        super().__init__(settings)
        folder = Path(settings.caption_model).expanduser() if settings.caption_model else None
        if folder is None or not (folder / "config.json").is_file():
            raise ConfigError("IMGSEARCH_CAPTION_BACKEND=transformers needs IMGSEARCH_CAPTION_MODEL = a local "
                              f"folder with a transformers image-to-text model (config.json), got "
                              f"{settings.caption_model!r}")
        self.folder = folder
        self.pipe = None

    def _load(self) -> None:
        from transformers import pipeline

        device = self.settings.device if self.settings.device not in ("auto",) else -1
        self.pipe = pipeline("image-to-text", model=str(self.folder), device=device)

    def _unload(self) -> None:
        self.pipe = None

    def _warm(self) -> None:
        self._view(Image.new("RGB", (32, 32), "white"), self.options)

    def _view(self, image: Image.Image, options: CaptionOptions) -> tuple[str, list[str]]:
        with self._lock:
            out = self.pipe(image.convert("RGB"), max_new_tokens=40)
        caption = out[0].get("generated_text", "") if out else ""
        return caption, []


BACKENDS: dict[str, type[Captioner]] = {"clip": ClipTagger, "openai": OpenAICaptioner,
                                        "transformers": TransformersCaptioner}


def load_captioner(settings: Settings, clip_model=None) -> Describer | None:
    """The configured captioner from the one model cache, bound to the settings' options
    (None when captions are off). ``clip_model`` is the collection's CLIP model, needed by
    the ``clip`` backend only."""
    backend = settings.caption_backend
    if backend == "off":
        return None
    cls = BACKENDS[backend]
    if backend == "clip":
        if clip_model is None:
            raise ConfigError("the clip caption backend needs the collection's CLIP model")
        model = MODELS.get(cls.identity_for(settings, clip_model), lambda: ClipTagger(settings, clip_model))
    else:
        model = MODELS.get(cls.identity_for(settings), lambda: cls(settings))
    return Describer(model, CaptionOptions.from_settings(settings))
