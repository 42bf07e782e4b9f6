"""The evaluation sets, measured: the perceptual hash and every search channel, in one run.

Part 1, hashes (exact, in numpy, no Milvus): over ``evalsets/neardup`` (12 photos x 12
copies + distractors), the textbook DCT pHash, this project's windowed zigzag hash, and that
hash with the query-time variants (what the ``phash`` channel does), side by side: mAP with
every copy as query, the closest pair of distinct photos, and at the duplicate threshold
the share of true pairs found and the number of false ones.

Part 2, channels (the real system): each set is ingested into a fresh Milvus Lite
collection with the configured model and scored by the code of `imgsearch eval` per
channel (and fused where the search service fuses); the near-duplicate set is also listed
by `imgsearch duplicates`' code and its groups checked for false duplicates.

Not a test: nothing here asserts; ``--record`` writes the rows to bench/RESULTS.md.

    python bench/eval.py --record
    python bench/eval.py --sets ocr,mixed --channels clip
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from bench.harness import machine  # noqa: E402
from bench.results import record_row  # noqa: E402
from common.models.phash import _DCT, _N, phash_bits, query_variants  # noqa: E402
from common.settings import Settings  # noqa: E402
from common.store import close_clients  # noqa: E402
from imgsearch.evalsets import IMAGE_GLOBS, load_dataset  # noqa: E402
from imgsearch.evaluate import evaluate_dataset, temporary_settings  # noqa: E402
from imgsearch.metrics import average_precision  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SETS = {"neardup": ROOT / "evalsets" / "neardup", "ocr": ROOT / "evalsets" / "ocr", "mixed": ROOT / "evalsets"}
HASH_SECTION = """## bench/eval.py — perceptual hash on the near-duplicate set

`evalsets/neardup`: 12 photos x (original + 11 Copydays-style copies) + 41 distractors; every
image of a group is a query, the other 11 are relevant. Exact hamming distances in numpy.
textbook = sign of the 8x8 lowest DCT coefficients vs their median; windowed = this
project's hash (Hann window, 64 zigzag AC coefficients, sign); +variants = the query also
hashed as 18 shifted crops and 4 small rotations, best match kept (the `phash` channel).

| date | command | hash | mAP | AP crop70 / rotate10 / watermark | closest distinct pair (bits) \
| at threshold T: true pairs found, false pairs | machine |
|---|---|---|---|---|---|---|---|
"""
CHANNEL_SECTION = """## bench/eval.py — evaluation sets per channel

Each set ingested into a fresh Milvus Lite collection and scored by `imgsearch eval`'s code
(P/R/F1 at k=10, mAP and PR-AUC over the top 100). The text channels (BM25, dense) and the
fused row come with the OCR/fusion branch of issue 5; rows here have what this tree has.

| date | command | set | model | channel | queries | P@10 | R@10 | F1@10 | mAP | PR-AUC | hit@1 | hit@5 \
| by kind | machine |
|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|
"""

def textbook_phash(image: Image.Image) -> np.ndarray:
    """The classic pHash (what common/models/phash.py computed before issue 5)."""
    grey = np.asarray(image.convert("L").resize((_N, _N), Image.Resampling.LANCZOS), dtype=np.float64)
    coeffs = (_DCT @ grey @ _DCT.T)[:8, :8].ravel()
    return coeffs > np.median(coeffs)


def hash_study(threshold: int) -> list[list[object]]:
    """One row of cells per hash variant (see HASH_SECTION)."""
    paths = sorted(SETS["neardup"].rglob("*.jpg"))
    groups = [None if p.parent.name.startswith("_") else p.parent.name for p in paths]
    images = [Image.open(p).convert("RGB") for p in paths]
    rows = []
    for name, fn, expand in [("textbook", textbook_phash, False), ("textbook +variants", textbook_phash, True),
                             ("windowed", phash_bits, False), ("windowed +variants", phash_bits, True)]:
        stored = np.array([fn(im) for im in images])
        pairwise = (stored[:, None, :] != stored[None, :, :]).sum(-1)
        per_copy: dict[str, list[float]] = {}
        for i, path in enumerate(paths):
            if groups[i] is None:
                continue
            if expand:
                variants = np.array([fn(v) for v in query_variants(images[i])])
                distances = (variants[:, None, :] != stored[None, :, :]).sum(-1).min(0)
            else:
                distances = pairwise[i]
            order = [j for j in np.argsort(distances, kind="stable") if j != i]
            relevant = {j for j in range(len(paths)) if j != i and groups[j] == groups[i]}
            per_copy.setdefault(path.stem, []).append(average_precision(order, relevant))
        same = np.array([[g is not None and g == h for h in groups] for g in groups])
        upper = np.triu(np.ones_like(same), 1).astype(bool)
        true_pairs, other_pairs = pairwise[same & upper], pairwise[~same & upper]
        mean = np.mean([a for v in per_copy.values() for a in v])
        hard = " / ".join(f"{np.mean(per_copy[c]):.3f}" for c in ("crop70", "rotate10", "watermark"))
        rows.append([name, f"{mean:.3f}", hard, int(other_pairs.min()),
                     f"T={threshold}: {np.mean(true_pairs <= threshold):.2f}, {int((other_pairs <= threshold).sum())}"])
    return rows


def channel_rows(set_name: str, settings: Settings, channels: str | None, k: int) -> list[list[object]]:
    """Ingest one set into a temporary collection, score it, list its duplicates."""
    from ingest.runner import run_ingest
    from query.duplicates import find_duplicates
    from query.search import SearchService

    root = SETS[set_name]
    with tempfile.TemporaryDirectory(prefix="bench-eval-") as tmp:
        run_settings = temporary_settings(settings, Path(tmp), "bench")
        try:
            summary = run_ingest(str(root), run_settings, IMAGE_GLOBS, progress=False)
            report = evaluate_dataset(root, run_settings, channels, k=k, depth=100, existing=True)
            print(report.render())
            extra = ""
            if set_name == "neardup":
                listing = find_duplicates(SearchService(run_settings).store, run_settings.duplicate_threshold)
                mixed = sum(1 for g in listing.groups
                            if len({Path(i["uri"]).parent.name for i in g.images}) > 1
                            or any("/_distractors/" in i["uri"] for i in g.images))
                extra = (f"; `duplicates` at T={listing.threshold}: {len(listing.groups)} groups, "
                         f"{sum(g.size for g in listing.groups)} of {summary.indexed} images, {mixed} false")
                print(extra.lstrip("; "))
        finally:
            close_clients()
    model = settings.clip_model + (f"@{settings.clip_pretrained}" if settings.clip_pretrained else "")
    rows = []
    for result in report.channels:
        mean = result.mean()
        by_kind = ", ".join(f"{kind} hit@1 {result.mean(ids)['hit@1']:.2f} hit@5 {result.mean(ids)['hit@5']:.2f} "
                            f"mAP {result.mean(ids)['map']:.2f}" for kind, ids in report.kinds.items())
        rows.append([set_name, model, result.name, f"{len(result.per_query)} ({result.answered} answered)",
                     *(f"{mean[m]:.3f}" for m in ("p@k", "r@k", "f1@k", "map", "pr_auc", "hit@1", "hit@5")),
                     by_kind + extra])
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", default="neardup,ocr,mixed", help="comma-separated: neardup, ocr, mixed")
    parser.add_argument("--channels", help="comma-separated channels (default: all the search service has)")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--skip-hashes", action="store_true", help="leave out part 1")
    parser.add_argument("--record", action="store_true", help="append the rows to bench/RESULTS.md")
    args = parser.parse_args()
    settings = Settings.from_env(clip_model=os.environ.get("IMGSEARCH_CLIP_MODEL", "imgsearch-fmnist-lit-minilm"))
    where = machine()
    if not args.skip_hashes:
        for cells in hash_study(settings.duplicate_threshold):
            print(" | ".join(map(str, cells)))
            if args.record:
                record_row("## bench/eval.py — perceptual hash", [*cells, where], HASH_SECTION)
    for set_name in [s.strip() for s in args.sets.split(",") if s.strip()]:
        load_dataset(SETS[set_name])  # a malformed set fails before any ingest
        for cells in channel_rows(set_name, settings, args.channels, args.k):
            print(" | ".join(map(str, cells)))
            if args.record:
                record_row("## bench/eval.py — evaluation sets", [*cells, where], CHANNEL_SECTION)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
