#!/usr/bin/env python3
"""Train the image tower of the offline reference model on Fashion-MNIST.

Why this script exists: the project has no network access and therefore no CLIP
weights, yet the tests and the demo must show that text->image and image->image search
are *semantically* right, through exactly the same open_clip code path a production model
uses. ``common/models/reference.py`` defines such a model, LiT-style: a small open_clip
ModifiedResNet image tower (the architecture of OpenAI's RN50 CLIP, scaled down; the model
config in ``reference_model/open_clip_config.json`` decides) trained against the frozen
all-MiniLM-L6-v2 text tower.
This script produces its only trained artefact, ``visual.safetensors`` (the state dict of
``model.visual``; a few MB), and documents how it was made in ``TRAINING.md``.

How: only the image tower is trained (the text tower stays frozen, so the text embedding
of any query equals plain sentence-transformers MiniLM). Training images go through the
production ``preprocess`` transform of open_clip (precomputed once), with light
augmentation (horizontal flip, shifts of a few pixels). The loss is a class-level
contrastive loss: each image embedding against one caption embedding per class, the
caption sampled every step from many templates x synonyms. Held-out query phrasings (in
``scripts/reference_eval_queries.json``, written the way people search: "a red sneaker")
are never a training caption and use no training template; the script refuses to run if
they do. A second, strict set (``reference_eval_queries_strict.json``) shares no content
word at all with the training captions; its figure is reported too. At the end, on 20 test images
per class (the first 20 of each class in the t10k split), it reports text->image
precision@10 with the held-out phrasings and image->image precision@10, and it can export
those 200 images as lossless 28x28 PNGs for the demo and the tests.

Data: Debian's Fashion-MNIST package (``apt-get install dataset-fashion-mnist``).
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import random
import re
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_QUERIES = REPO_ROOT / "scripts" / "reference_eval_queries.json"
STRICT_QUERIES = REPO_ROOT / "scripts" / "reference_eval_queries_strict.json"
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "imgsearch"

# Fashion-MNIST label order (labels 0..9) and the slugs used for directories and as the
# keys of the held-out query file.
CLASS_NAMES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
CLASS_SLUGS = [
    "t-shirt-top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle-boot",
]

# Training captions: every template x every noun phrase of a class. Noun phrases carry
# their own article so that templates stay grammatical.
TEMPLATES = [
    "{}",
    "a photo of {}",
    "a picture of {}",
    "an image of {}",
    "a close-up photo of {}",
    "a black and white photo of {}",
    "a grayscale picture of {}",
    "a low-resolution photo of {}",
    "a blurry photo of {}",
    "a small picture of {}",
    "a product photo of {}",
    "a catalogue photo of {}",
    "a cropped image of {}",
    "a centered photo of {}",
    "a pixelated image of {}",
    "a thumbnail of {}",
    "a studio shot of {}",
    "a fashion photo of {}",
    "a dark photo of {}",
    "a bright photo of {}",
    "a photo showing {}",
    "this is {}",
]
SYNONYMS: list[list[str]] = [
    ["a t-shirt", "a tee", "a tee shirt", "a top", "a tank top", "a short-sleeved top", "a tshirt"],
    ["trousers", "a pair of trousers", "pants", "a pair of pants", "jeans", "slacks", "chinos"],
    ["a pullover", "a sweater", "a jumper", "a knitted sweater", "a sweatshirt", "a cardigan",
     "a long-sleeved pullover"],
    ["a dress", "a gown", "a frock", "an evening dress", "a sundress", "a cocktail dress", "a maxi dress"],
    ["a coat", "a jacket", "an overcoat", "a parka", "a raincoat", "a trench coat", "a puffer jacket"],
    ["a sandal", "sandals", "a pair of sandals", "flip-flops", "an open-toed shoe", "a strappy sandal",
     "a slide sandal"],
    ["a shirt", "a blouse", "a long-sleeved shirt", "a flannel shirt", "an oxford shirt", "a checked shirt",
     "a dress shirt"],
    ["a sneaker", "sneakers", "a trainer", "a running shoe", "an athletic shoe", "a tennis shoe",
     "a canvas shoe"],
    ["a bag", "a handbag", "a purse", "a tote bag", "a backpack", "a shoulder bag", "a satchel"],
    ["an ankle boot", "a boot", "boots", "a chelsea boot", "a short boot", "a heeled boot", "a bootie"],
]

# Function words that held-out queries may share with training captions; any other word
# in a held-out query must be absent from every training caption.
STOPWORDS = {
    "a", "an", "the", "of", "for", "to", "in", "on", "at", "by", "with", "and", "or", "from",
    "my", "your", "i", "you", "it", "is", "that", "this", "some", "something", "what", "one",
    "up",
}

EVAL_PER_CLASS = 20
TOP_K = 10
BATCH_SIZE = 256


def log(msg: str) -> None:
    """Print a progress line, flushed (the script is usually run with output to a log)."""
    print(msg, flush=True)


def reference_module() -> Any:
    """Import ``common.models.reference`` from this checkout (the repo root may not be on sys.path)."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    import common.models.reference as reference

    return reference


# ----------------------------------------------------------------------------- data


def read_idx(path: Path) -> np.ndarray:
    """Read a gzipped IDX file (the MNIST container format) of unsigned bytes."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    (magic,) = struct.unpack(">I", data[:4])
    if magic >> 8 != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {magic:#x})")
    ndim = magic & 0xFF
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_split(data_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) uint8 and labels (N,) of ``split`` ("train" or "t10k")."""
    images_path = data_dir / f"{split}-images-idx3-ubyte.gz"
    labels_path = data_dir / f"{split}-labels-idx1-ubyte.gz"
    for path in (images_path, labels_path):
        if not path.is_file():
            raise SystemExit(
                f"Fashion-MNIST file missing: {path}\n"
                "Install the dataset with:  apt-get install dataset-fashion-mnist\n"
                "(or point --data-dir at a folder holding the four *-ubyte.gz files)."
            )
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.shape[0] != labels.shape[0] or images.shape[1:] != (28, 28):
        raise SystemExit(f"unexpected Fashion-MNIST shapes: {images.shape}, {labels.shape}")
    return images, labels.astype(np.int64)


def eval_subset(labels: np.ndarray, per_class: int = EVAL_PER_CLASS) -> np.ndarray:
    """Indices of the first ``per_class`` test images of every class, grouped by class."""
    return np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(len(CLASS_NAMES))])


def preprocess_images(images: np.ndarray, preprocess: Callable[[Any], torch.Tensor]) -> torch.Tensor:
    """Apply the production open_clip transform to 28x28 grey arrays (PIL in, tensor out)."""
    from PIL import Image

    first = preprocess(Image.fromarray(images[0]))
    out = torch.empty((len(images), *first.shape), dtype=torch.float32)
    for i, arr in enumerate(images):
        out[i] = preprocess(Image.fromarray(arr))
    return out


def augment(x: torch.Tensor, background: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal flip and a random shift of up to ``max_shift`` pixels per image.

    ``background`` is the preprocessed value of a black pixel (per channel), used to fill
    what a shift uncovers, so shifted images look like real (black-background) ones.
    """
    n, _, h, w = x.shape
    flip = torch.rand(n, generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    if max_shift <= 0:
        return x
    bg = background.view(1, -1, 1, 1)
    padded = F.pad(x - bg, (max_shift,) * 4) + bg
    offsets = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=gen).tolist()
    return torch.stack([padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets)])


# -------------------------------------------------------------------------- captions


def training_captions() -> list[list[str]]:
    """All training captions, per class."""
    return [[t.format(s) for t in TEMPLATES for s in syns] for syns in SYNONYMS]


def words(text: str) -> set[str]:
    """Lower-case alphabetic words of ``text``."""
    return set(re.findall(r"[a-z]+", text.lower()))


def stem(word: str) -> str:
    """A crude stem, so that word forms (heel/heeled, strap/strappy, toes/toed) count as one."""
    for suffix in ("ing", "ed", "es", "s", "y"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def shared_words(query: str, vocab: set[str]) -> set[str]:
    """Content words of ``query`` that are (forms of) words in ``vocab``."""
    stems = {stem(v) for v in vocab}
    leaked = set()
    for w in words(query) - STOPWORDS:
        s = stem(w)
        if w in vocab or any(s.startswith(v) or v.startswith(s) for v in stems if min(len(s), len(v)) >= 3):
            leaked.add(w)
    return leaked


def load_eval_queries(path: Path, strict: bool = False) -> dict[str, list[str]]:
    """Held-out queries {class slug: [phrasings]}, checked to be disjoint from training text.

    Every phrasing must differ from every training caption and use no training template.
    ``strict`` sets (``reference_eval_queries_strict.json``) must also share no content word
    with any training caption: they measure how far the frozen MiniLM text tower carries
    meaning on its own, and that bounds what any image tower can reach on them.
    """
    queries: dict[str, list[str]] = json.loads(path.read_text(encoding="utf-8"))
    if sorted(queries) != sorted(CLASS_SLUGS):
        raise SystemExit(f"{path}: keys must be exactly the class slugs {CLASS_SLUGS}")
    captions = {c.lower() for caps in training_captions() for c in caps}
    vocab = set().union(*(words(c) for c in captions)) - STOPWORDS
    skeletons = [t.replace("{}", "").strip().lower() for t in TEMPLATES if t != "{}"]
    for slug, phrasings in queries.items():
        if len(phrasings) < 3:
            raise SystemExit(f"{path}: class {slug} needs at least 3 held-out phrasings")
        for q in phrasings:
            if q.lower() in captions:
                raise SystemExit(f"held-out query {q!r} is a training caption")
            if any(s in q.lower() for s in skeletons):
                raise SystemExit(f"held-out query {q!r} uses a training template")
            leaked = shared_words(q, vocab) if strict else set()
            if leaked:
                raise SystemExit(f"strict held-out query {q!r} shares training words {sorted(leaked)}")
    return queries


@torch.no_grad()
def encode_texts(model: Any, tokenizer: Any, texts: list[str], batch: int = 256) -> torch.Tensor:
    """L2-normalised text embeddings through the model's own (frozen MiniLM) text tower."""
    model.eval()
    return torch.cat([model.encode_text(tokenizer(texts[i : i + batch]), normalize=True)
                      for i in range(0, len(texts), batch)])


@torch.no_grad()
def encode_images(model: Any, pixels: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """L2-normalised image embeddings."""
    model.eval()
    return torch.cat([model.encode_image(pixels[i : i + batch], normalize=True)
                      for i in range(0, len(pixels), batch)])


# ------------------------------------------------------------------------ evaluation


def retrieval_metrics(
    image_emb: torch.Tensor,
    image_labels: torch.Tensor,
    query_emb: dict[int, torch.Tensor],
    k: int = TOP_K,
) -> dict[str, Any]:
    """Text->image and image->image precision@k (cosine similarity on normalised embeddings).

    text->image: for every held-out phrasing, the share of the top-k images that are of
    its class; averaged over the phrasings of a class, then over the classes.
    image->image: every image is a query against the others (itself excluded).
    """
    per_class: dict[str, float] = {}
    for c, q in query_emb.items():
        top = (q @ image_emb.T).topk(k, dim=1).indices
        per_class[CLASS_SLUGS[c]] = float((image_labels[top] == c).float().mean())
    sims = image_emb @ image_emb.T
    sims.fill_diagonal_(-math.inf)
    top = sims.topk(k, dim=1).indices
    hits = (image_labels[top] == image_labels[:, None]).float().mean(dim=1)
    i2i_per_class = {CLASS_SLUGS[c]: float(hits[image_labels == c].mean()) for c in range(len(CLASS_SLUGS))}
    return {
        "text_to_image_p10": float(np.mean(list(per_class.values()))),
        "image_to_image_p10": float(hits.mean()),
        "text_to_image_p10_per_class": per_class,
        "image_to_image_p10_per_class": i2i_per_class,
    }


def evaluate(
    model: Any, tokenizer: Any, pixels: torch.Tensor, labels: torch.Tensor, queries: dict[str, list[str]]
) -> dict[str, Any]:
    """Both retrieval metrics of ``model`` on preprocessed images with the held-out queries."""
    query_emb = {CLASS_SLUGS.index(slug): encode_texts(model, tokenizer, qs) for slug, qs in queries.items()}
    return retrieval_metrics(encode_images(model, pixels), labels, query_emb)


@torch.no_grad()
def zero_shot_accuracy(model: Any, class_emb: torch.Tensor, pixels: torch.Tensor, labels: torch.Tensor) -> float:
    """Classification accuracy of nearest class prototype (mean training-caption embedding)."""
    pred = (encode_images(model, pixels) @ class_emb.T).argmax(dim=1)
    return float((pred == labels).float().mean())


def export_samples(images: np.ndarray, labels: np.ndarray, indices: np.ndarray, out_dir: Path) -> int:
    """Write the evaluation subset as lossless grey PNGs: ``out_dir/<slug>/<test index>.png``."""
    from PIL import Image

    for i in indices:
        target = out_dir / CLASS_SLUGS[int(labels[i])] / f"{int(i)}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(target, format="PNG", optimize=True)
    return len(indices)


# -------------------------------------------------------------------------- training


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a torch generator for data sampling."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def lr_at(step: int, total: int, warmup: int, base_lr: float) -> float:
    """Linear warm-up then cosine decay to zero."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def train(args: argparse.Namespace, model: Any, tokenizer: Any, preprocess: Any,
          images: np.ndarray, labels: np.ndarray, gen: torch.Generator) -> dict[str, Any]:
    """Train ``model.visual`` in place; returns timing and loss statistics."""
    from open_clip.transformer import PatchDropout

    t0 = time.time()
    log(f"preprocessing {len(images)} training images with the production transform ...")
    pixels = preprocess_images(images, preprocess)
    background = preprocess_images(np.zeros((1, 28, 28), dtype=np.uint8), preprocess)[0, :, 0, 0]
    y = torch.from_numpy(labels)
    t_pre = time.time() - t0
    log(f"  done in {t_pre:.1f}s")

    captions = training_captions()
    flat = [c for caps in captions for c in caps]
    caption_emb = encode_texts(model, tokenizer, flat)  # frozen text tower: computed once
    per_class = len(captions[0])
    caption_emb = caption_emb.view(len(CLASS_NAMES), per_class, -1)
    log(f"encoded {len(flat)} training captions ({per_class} per class)")

    for p in model.parameters():
        p.requires_grad_(False)
    visual = model.visual
    for p in visual.parameters():
        p.requires_grad_(True)
    log_scale = torch.nn.Parameter(torch.tensor(math.log(args.init_scale)))
    decay = [p for n, p in visual.named_parameters() if p.ndim >= 2 and "positional" not in n]
    no_decay = [p for n, p in visual.named_parameters() if not (p.ndim >= 2 and "positional" not in n)]
    optim = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay},
         {"params": no_decay + [log_scale], "weight_decay": 0.0}],
        lr=args.lr, betas=(0.9, 0.98),
    )

    steps_per_epoch = len(pixels) // BATCH_SIZE
    total = steps_per_epoch * args.epochs
    warmup = max(1, int(0.05 * total))
    masked_epochs = max(0, args.epochs - args.full_epochs)
    step = 0
    t_train = time.time()
    history = []
    for epoch in range(args.epochs):
        masked = epoch < masked_epochs and args.patch_dropout > 0
        if hasattr(visual, "patch_dropout"):  # ViT towers only
            visual.patch_dropout = PatchDropout(args.patch_dropout) if masked else torch.nn.Identity()
        visual.train()
        order = torch.randperm(len(pixels), generator=gen)
        running, correct, seen = 0.0, 0, 0
        for b in range(steps_per_epoch):
            idx = order[b * BATCH_SIZE : (b + 1) * BATCH_SIZE]
            x = augment(pixels[idx], background, args.max_shift, gen)
            target = y[idx]
            # one caption per class, sampled every step from its templates x synonyms
            pick = torch.randint(0, per_class, (len(CLASS_NAMES),), generator=gen)
            protos = caption_emb[torch.arange(len(CLASS_NAMES)), pick]
            for group in optim.param_groups:
                group["lr"] = lr_at(step, total, warmup, args.lr)
            emb = F.normalize(visual(x), dim=-1)
            sims = emb @ protos.T
            scale = log_scale.exp().clamp(max=100.0)
            loss = F.cross_entropy(scale * sims, target)
            if args.align_weight > 0:
                # pull images onto their class's caption cloud, not only away from the others
                loss = loss + args.align_weight * (1.0 - sims.gather(1, target[:, None])).mean()
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            step += 1
            running += float(loss.detach()) * len(idx)
            correct += int((sims.argmax(1) == target).sum())
            seen += len(idx)
            if (b + 1) % 50 == 0 or b + 1 == steps_per_epoch:
                log(f"epoch {epoch + 1}/{args.epochs} step {b + 1}/{steps_per_epoch} "
                    f"loss {running / seen:.4f} acc {correct / seen:.3f} scale {float(scale):.1f} "
                    f"{'masked ' if masked else ''}elapsed {time.time() - t0:.0f}s")
        history.append({"epoch": epoch + 1, "loss": running / seen, "train_acc": correct / seen})
    if hasattr(visual, "patch_dropout"):
        visual.patch_dropout = torch.nn.Identity()
    visual.eval()
    return {
        "preprocess_s": t_pre,
        "train_s": time.time() - t_train,
        "total_s": time.time() - t0,
        "steps": total,
        "history": history,
        "final_scale": float(log_scale.exp().clamp(max=100.0)),
        "tower": type(visual).__name__,
        "tower_params": sum(p.numel() for p in visual.parameters()),
        "class_emb": F.normalize(caption_emb.mean(dim=1), dim=-1),
    }


def save_visual(model: Any, path: Path) -> None:
    """Save ``model.visual.state_dict()`` as float32 safetensors (atomically)."""
    from safetensors.torch import save_file

    state = {k: v.detach().to(torch.float32).contiguous().clone() for k, v in model.visual.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(state, str(tmp))
    tmp.replace(path)


def write_report(path: Path, args: argparse.Namespace, stats: dict[str, Any], metrics: dict[str, Any],
                 zs_acc: float, weights: Path, command: str) -> None:
    """Write TRAINING.md: how the weights were made and how good they are."""
    t2i, i2i = metrics["text_to_image_p10_per_class"], metrics["image_to_image_p10_per_class"]
    rows = "\n".join(f"| {s} | {t2i[s]:.3f} | {i2i[s]:.3f} |" for s in CLASS_SLUGS)
    hist = "\n".join(f"| {h['epoch']} | {h['loss']:.4f} | {h['train_acc']:.3f} |" for h in stats["history"])
    text = f"""# Reference model: training record

`visual.safetensors` is the image tower (`model.visual.state_dict()`, float32,
{weights.stat().st_size / 1e6:.2f} MB) of the reference model `imgsearch-fmnist-lit-minilm`
(see `common/models/reference.py`). It was trained by `scripts/train_reference_model.py`
against the frozen all-MiniLM-L6-v2 text tower, on the Fashion-MNIST training split
(60,000 images, Debian package `dataset-fashion-mnist`).

## Command

```sh
{command}
```

- seed: {args.seed}
- image tower: open_clip `{stats['tower']}`, {stats['tower_params']:,} parameters
- epochs: {args.epochs} (patch dropout {args.patch_dropout} in the first \
{max(0, args.epochs - args.full_epochs)} when the tower is a ViT), {stats['steps']} steps of batch {BATCH_SIZE}
- optimiser: AdamW, lr {args.lr}, weight decay {args.weight_decay}, 5% linear warm-up then cosine
- loss: class-level contrastive (cross-entropy of the image embedding against one caption
  embedding per class, sampled each step from {len(TEMPLATES)} templates x 7 noun phrases),
  learnable temperature (init scale {args.init_scale}, final {stats['final_scale']:.1f}),
  plus {args.align_weight} x (1 - cosine to the own-class caption)
- augmentation: random horizontal flip, random shift up to {args.max_shift} px
- images: the production open_clip preprocess (28x28 grey -> PIL -> Resize 32 bicubic,
  CenterCrop, RGB, ToTensor, Normalize), precomputed once
- time: {stats['total_s']:.0f} s wall-clock in all ({stats['preprocess_s']:.0f} s preprocessing,
  {stats['train_s']:.0f} s training) on {torch.get_num_threads()} CPU threads

| epoch | train loss | train acc |
|---|---|---|
{hist}

## Evaluation

On the t10k test split, first {EVAL_PER_CLASS} images of each class (200 images, exported
as PNGs to `common/assets/fmnist_samples/`), L2-normalised embeddings, cosine similarity:

- **text->image precision@{TOP_K}: {metrics['text_to_image_p10']:.3f}** with the held-out phrasings of
  `scripts/reference_eval_queries.json` (never a training caption, no training template;
  averaged over phrasings per class, then over classes)
- text->image precision@{TOP_K} with the strict phrasings of
  `scripts/reference_eval_queries_strict.json` (no content word shared with any training
  caption; the frozen MiniLM alone puts only 19 of these 30 nearest their own class):
  {metrics.get('strict_text_to_image_p10', float('nan')):.3f}
- **image->image precision@{TOP_K}: {metrics['image_to_image_p10']:.3f}** (every image as query, itself
  excluded)
- nearest-class-prototype accuracy on the whole test split (10,000 images): {zs_acc:.3f}

| class | text->image P@{TOP_K} | image->image P@{TOP_K} |
|---|---|---|
{rows}
"""
    path.write_text(text, encoding="utf-8")


# ------------------------------------------------------------------------------ main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description=(
            "Train the image tower of the offline reference model (imgsearch-fmnist-lit-minilm) "
            "on Fashion-MNIST against the frozen all-MiniLM-L6-v2 text tower, save it to "
            "common/models/reference_model/visual.safetensors with a TRAINING.md record, and "
            "evaluate text->image (held-out phrasings) and image->image precision@10 on 200 test "
            "images. Needs the Debian package dataset-fashion-mnist; runs offline on CPU."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR,
                        help="folder with {train,t10k}-{images-idx3,labels-idx1}-ubyte.gz")
    parser.add_argument("--queries", type=Path, default=DEFAULT_QUERIES,
                        help="held-out evaluation phrasings, JSON {class slug: [phrasings]}")
    parser.add_argument("--output", type=Path, default=None,
                        help="where to write the image-tower weights (default: the path "
                             "common/models/reference.py loads, reference_model/visual.safetensors)")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE,
                        help="scratch folder for the resolved open_clip model config")
    parser.add_argument("--export-samples", type=Path, default=None, metavar="DIR",
                        help="also write the 200 evaluation test images as 28x28 grey PNGs to "
                             "DIR/<class slug>/<test index>.png (e.g. common/assets/fmnist_samples)")
    parser.add_argument("--eval-only", action="store_true",
                        help="do not train: evaluate the existing weights (and export, if asked)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (python, numpy, torch)")
    parser.add_argument("--epochs", type=int, default=4, help="passes over the 60,000 training images")
    parser.add_argument("--full-epochs", type=int, default=1,
                        help="final epochs trained without patch dropout (the others drop patches)")
    parser.add_argument("--patch-dropout", type=float, default=0.5,
                        help="share of image patches dropped while training (speed, regularisation)")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate")
    parser.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay")
    parser.add_argument("--init-scale", type=float, default=10.0, help="initial logit scale (1/temperature)")
    parser.add_argument("--align-weight", type=float, default=1.0,
                        help="weight of the pull towards the own-class caption embedding")
    parser.add_argument("--max-shift", type=int, default=2, help="largest random shift in pixels (0: none)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--no-report", action="store_true", help="do not (re)write TRAINING.md")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Train (or just evaluate), save, evaluate, export."""
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    gen = seed_everything(args.seed)
    ref = reference_module()
    weights = args.output or ref.VISUAL_WEIGHTS

    queries = load_eval_queries(args.queries)
    strict_queries = load_eval_queries(STRICT_QUERIES, strict=True) if STRICT_QUERIES.is_file() else None
    test_images, test_labels = load_split(args.data_dir, "t10k")
    subset = eval_subset(test_labels)

    import open_clip

    ref.register_config(args.cache_dir)
    model, _, preprocess = open_clip.create_model_and_transforms(
        ref.REFERENCE_MODEL, pretrained=None, pretrained_text=True
    )
    tokenizer = open_clip.get_tokenizer(ref.REFERENCE_MODEL)

    stats: dict[str, Any] | None = None
    if args.eval_only:
        from safetensors.torch import load_file

        model.visual.load_state_dict(load_file(str(weights)), strict=True)
    else:
        train_images, train_labels = load_split(args.data_dir, "train")
        stats = train(args, model, tokenizer, preprocess, train_images, train_labels, gen)
        save_visual(model, weights)
        log(f"saved {weights} ({weights.stat().st_size / 1e6:.2f} MB) after {stats['total_s']:.0f}s")

    model.eval()
    eval_pixels = preprocess_images(test_images[subset], preprocess)
    metrics = evaluate(model, tokenizer, eval_pixels, torch.from_numpy(test_labels[subset]), queries)
    if strict_queries is not None:
        strict = evaluate(model, tokenizer, eval_pixels, torch.from_numpy(test_labels[subset]), strict_queries)
        metrics["strict_text_to_image_p10"] = strict["text_to_image_p10"]
    log(json.dumps({k: v for k, v in metrics.items()}, indent=2))
    if stats is not None:
        zs_acc = zero_shot_accuracy(model, stats["class_emb"], preprocess_images(test_images, preprocess),
                                    torch.from_numpy(test_labels))
        log(f"nearest-prototype accuracy on the full test split: {zs_acc:.4f}")
        if not args.no_report:
            command = "HF_HUB_OFFLINE=1 .venv/bin/python scripts/train_reference_model.py " + " ".join(
                sys.argv[1:] if argv is None else argv)
            write_report(weights.parent / "TRAINING.md", args, stats, metrics, zs_acc, weights, command.strip())
            log(f"wrote {weights.parent / 'TRAINING.md'}")
    if args.export_samples is not None:
        n = export_samples(test_images, test_labels, subset, args.export_samples)
        log(f"exported {n} PNGs to {args.export_samples}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
