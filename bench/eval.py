"""The evaluation sets, measured: the perceptual hash and every search channel, in one run.

Part 1, hashes (exact, in numpy, no Milvus): over ``evalsets/neardup`` (12 photos x 13
copies + distractors), the textbook DCT pHash, this project's windowed zigzag hash, and that
hash with the query-time variants (what the ``phash`` channel does), side by side: mAP with
every copy as query, the closest pair of distinct photos, and at the duplicate threshold
the share of true pairs found and the number of false ones.

Part 2, channels and fusion methods (the real system): each set is ingested into a fresh
Milvus Lite collection with the configured model; each query is searched once on every
channel of its kind and each channel's ranking read back from the fused hits' evidence
(bench/fusion_lists.py); each channel alone and every fusion method of ``query.fusion``
(``--methods``) are scored from those rankings with `imgsearch eval`'s metrics, per query
kind, and a line per set, kind and method says whether the rule of issue 18 holds: fused
hit@5 and mAP >= the best single channel's minus 0.02. The near-duplicate set is also
listed by `imgsearch duplicates`' code and its groups checked for false duplicates.

Not a test: nothing here asserts; ``--record`` writes the rows to bench/RESULTS.md;
``--dump DIR`` keeps the rankings, so a second run re-scores without ingesting.

    python bench/eval.py --record
    python bench/eval.py --skip-hashes --sets ocr,mixed --methods rrf,confidence
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
from imgsearch.evaluate import temporary_settings  # noqa: E402
from imgsearch.metrics import average_precision  # noqa: E402
from query.fusion import METHODS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SETS = {"neardup": ROOT / "evalsets" / "neardup", "ocr": ROOT / "evalsets" / "ocr", "mixed": ROOT / "evalsets"}
HASH_SECTION = """## bench/eval.py — perceptual hash on the near-duplicate set

`evalsets/neardup`: 12 photos x (original + 12 Copydays-style copies, a mirror among them
since issue 18) + 41 distractors; every image of a group is a query, the other 12 are
relevant. Exact hamming distances in numpy. textbook = sign of the 8x8 lowest DCT
coefficients vs their median; windowed = this project's hash (Hann window, 64 zigzag AC
coefficients, sign); +variants = the query also hashed as 18 shifted crops and 4 small
rotations, and those 23 of its mirror, best match kept (the `phash` channel).

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


FUSION_SECTION = """## bench/eval.py — fusion methods per query kind

Each set ingested into a fresh Milvus Lite collection; one search per query with every
channel of its kind (k = 1000, so the evidence of the fused hits holds each channel's whole
ranking); each channel alone and every fusion method (`query.fusion.fuse`, as the search
service calls it: each channel's scale from its top 50, so the fused order is a k = 10
search's) scored from those rankings. Cells: hit@5 / mAP; ✓ where the rule holds
(fused hit@5 and mAP >= the best single channel's minus 0.02), ✗ where it does not.
Kinds named `copy:` (near-duplicate set only) split its one kind `class` by the kind of
copy the query is, for reading (mirrors); the rule is judged on the set's own kinds.

| date | command | set | kind | queries | best channel hit@5 | best channel mAP | rrf | wrrf | minmax \
| zscore | confidence | clearance | machine |
|---|---|---|---|---|---|---|---|---|---|---|---|---|---|
"""


def collect(set_name: str, settings: Settings, dump: Path | None) -> tuple[dict[str, dict], str]:
    """Ingest one set into a temporary collection; every query's per-channel rankings
    (bench.fusion_lists) and the `duplicates` check of the near-duplicate set."""
    import json

    from bench.fusion_lists import own_id, query_channels
    from ingest.runner import run_ingest
    from query.duplicates import find_duplicates
    from query.search import SearchService

    root = SETS[set_name]
    dataset = load_dataset(root)
    cached = dump / f"{set_name}.json" if dump else None
    if cached is not None and cached.is_file():
        doc = json.loads(cached.read_text())
        return doc["queries"], doc["extra"]
    data: dict[str, dict] = {}
    extra = ""
    with tempfile.TemporaryDirectory(prefix="bench-eval-") as tmp:
        run_settings = temporary_settings(settings, Path(tmp), "bench")
        try:
            summary = run_ingest(str(root), run_settings, IMAGE_GLOBS, progress=False)
            service = SearchService(run_settings)
            for q in dataset.queries:
                own = own_id(dataset, q)
                lists = query_channels(service, q)
                data[q.id] = {"kind": q.kind, "own": own,
                              "relevant": sorted({dataset.resolve(r) for r in q.relevant} - {own}),
                              "channels": {c: [[h.image_id, h.score] + ([h.coverage] if h.coverage is not None else [])
                                               for h in v] for c, v in lists.items()}}
            if set_name == "neardup":
                listing = find_duplicates(service.store, run_settings.duplicate_threshold)
                mixed = sum(1 for g in listing.groups
                            if len({Path(i["uri"]).parent.name for i in g.images}) > 1
                            or any("/_distractors/" in i["uri"] for i in g.images))
                extra = (f"; `duplicates` at T={listing.threshold}: {len(listing.groups)} groups, "
                         f"{sum(g.size for g in listing.groups)} of {summary.indexed} images, {mixed} false")
                print(extra.lstrip("; "))
        finally:
            close_clients()
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_text(json.dumps({"queries": data, "extra": extra}))
    return data, extra


def fusion_rows(set_name: str, data: dict[str, dict], settings: Settings, methods: list[str], k: int,
                extra: str = "") -> tuple[list[list[object]], list[list[object]], dict[str, bool]]:
    """(channel rows, fusion rows, method -> whether the rule held on every kind of the set)."""
    from bench.fusion_lists import rule, score_methods
    from common.settings import parse_weights

    weights = parse_weights(settings.fusion_weights)
    tiers = {"phash": settings.phash_tier_score}
    table = score_methods(data, methods, weights, settings.fusion_rrf_k, tiers, k=k)
    kinds = [kind for kind in next(iter(table.values())) if kind != "all"]
    counts = {kind: sum(1 for r in data.values() if r["kind"] == kind) for kind in kinds}
    model = settings.clip_model + (f"@{settings.clip_pretrained}" if settings.clip_pretrained else "")
    channel_cells = []
    for name, per_kind in table.items():
        mean = per_kind["all"]
        answered = sum(1 for r in data.values()
                       if (r["channels"] if name.startswith("fused:") else r["channels"].get(name)))
        by_kind = ", ".join(f"{kind} hit@1 {per_kind[kind]['hit@1']:.2f} hit@5 {per_kind[kind]['hit@5']:.2f} "
                            f"mAP {per_kind[kind]['map']:.2f}" for kind in kinds)
        channel_cells.append([set_name, model, name, f"{len(data)} ({answered} answered)",
                              *(f"{mean[m]:.3f}" for m in ("p@k", "r@k", "f1@k", "map", "pr_auc", "hit@1", "hit@5")),
                              by_kind + extra])
    held = {m: True for m in methods}
    fusion_cells = []

    def cells(label: str, tab: dict, kind: str, judged: bool) -> list[object]:
        singles = {n: v[kind] for n, v in tab.items() if not n.startswith("fused:") and kind in v}
        best_hit = max(singles, key=lambda c: singles[c]["hit@5"])
        best_map = max(singles, key=lambda c: singles[c]["map"])
        out: list[object] = [set_name, label, counts[kind] if judged else "",
                             f"{singles[best_hit]['hit@5']:.3f} ({best_hit})",
                             f"{singles[best_map]['map']:.3f} ({best_map})"]
        for m in methods:
            f = tab[f"fused:{m}"][kind]
            mark = ""
            if judged:
                ok, line = rule(tab, m, kind)
                held[m] &= ok
                mark = " ✓" if ok else " ✗"
                print(f"  rule {set_name} {m:<10} {line}")
            out.append(f"{f['hit@5']:.3f} / {f['map']:.3f}{mark}")
        return out

    for kind in kinds:
        fusion_cells.append(cells(kind, table, kind, True))
    if set_name == "neardup":  # the one kind split by the kind of copy, for reading
        copies = score_methods(data, methods, weights, settings.fusion_rrf_k, tiers, k=k,
                               kind_of=lambda qid, _: Path(qid).stem)
        for kind in sorted(k for k in next(iter(copies.values())) if k != "all"):
            row = cells(f"copy:{kind}", copies, kind, False)
            row[2] = sum(1 for q in data if Path(q).stem == kind)
            fusion_cells.append(row)
    return channel_cells, fusion_cells, held


VERIFY_SECTION = """## bench/eval.py — ORB + RANSAC verification of image queries

Image queries of a set re-ranked by `query/verify.py`: the top N candidates of the fused
ranking (method in the row) matched with ORB keypoints (query plain and mirrored) and a
RANSAC homography; candidates with >= MIN_INLIERS inliers move to the front. mAP per kind of
copy without / with it; cost = extra time per query (features of the query and of the N
candidates computed at query time, nothing stored), on the shared 2-core machine.

| date | command | set | method | N | mAP without / with | per copy kind: without -> with | ms per query | machine |
|---|---|---|---|---|---|---|---|---|
"""


def verify_rows(set_name: str, data: dict[str, dict], settings: Settings, method: str, top: int,
                k: int) -> list[list[object]]:
    """mAP without and with ORB verification of the top ``top`` fused candidates."""
    import time

    from bench.fusion_lists import ranked
    from common.settings import parse_weights
    from imgsearch.metrics import query_metrics
    from query.verify import MIN_INLIERS, best_inliers, features, query_features, rerank

    dataset = load_dataset(SETS[set_name])
    paths = {dataset.resolve(p.relative_to(dataset.root).as_posix()): p for p in dataset.images()}
    queries = {q.id: q for q in dataset.queries if q.image is not None}
    weights, tiers = parse_weights(settings.fusion_weights), {"phash": settings.phash_tier_score}
    before: dict[str, list[float]] = {}
    after: dict[str, list[float]] = {}
    spent = 0.0
    for qid, q in queries.items():
        rows = data[qid]
        order = ranked(rows, None, method, weights, settings.fusion_rrf_k, tiers, 100)
        started = time.perf_counter()
        query = query_features(Image.open(q.image))
        verified = {i: best_inliers(query, features(Image.open(paths[i]))) for i in order[:top] if i in paths}
        reordered = rerank(order, verified, MIN_INLIERS)
        spent += time.perf_counter() - started
        kind = Path(qid).stem if set_name == "neardup" else rows["kind"]
        for out, ids in ((before, order), (after, reordered)):
            m = query_metrics(ids, set(rows["relevant"]), k)["map"]
            out.setdefault(kind, []).append(m)
            out.setdefault("all", []).append(m)
    mean = {name: {kind: float(np.mean(v)) for kind, v in d.items()} for name, d in (("before", before),
                                                                                    ("after", after))}
    kinds = ", ".join(f"{kind} {mean['before'][kind]:.3f} -> {mean['after'][kind]:.3f}"
                      for kind in sorted(before) if kind != "all")
    return [[set_name, method, top, f"{mean['before']['all']:.3f} / {mean['after']['all']:.3f}", kinds,
             f"{1000 * spent / max(1, len(queries)):.0f}"]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", default="neardup,ocr,mixed", help="comma-separated: neardup, ocr, mixed")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated fusion methods to compare")
    parser.add_argument("--dump", type=Path, help="folder caching each set's per-channel rankings (re-scored "
                                                   "without ingest when present)")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--verify", type=int, default=0, metavar="N",
                        help="also measure ORB + RANSAC verification of the top N candidates of image queries")
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
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown fusion methods {unknown}; one of {', '.join(METHODS)}")
    names = [s.strip() for s in args.sets.split(",") if s.strip()]
    for set_name in names:
        load_dataset(SETS[set_name])  # a malformed set fails before any ingest
    everywhere = {m: True for m in methods}
    for set_name in names:
        data, extra = collect(set_name, settings, args.dump)
        channel_cells, fusion_cells, held = fusion_rows(set_name, data, settings, methods, args.k, extra)
        for m in methods:
            everywhere[m] &= held[m]
        for cells in channel_cells:
            print(" | ".join(map(str, cells)))
            if args.record:
                record_row("## bench/eval.py — evaluation sets", [*cells, where], CHANNEL_SECTION)
        for cells in fusion_cells:
            print(" | ".join(map(str, cells)))
            if args.record:
                record_row("## bench/eval.py — fusion methods", [*cells, where], FUSION_SECTION)
        if args.verify and any("phash" in r["channels"] for r in data.values()):  # image queries
            for cells in verify_rows(set_name, data, settings, settings.fusion, args.verify, args.k):
                print("verify | " + " | ".join(map(str, cells)))
                if args.record:
                    record_row("## bench/eval.py — ORB", [*cells, where], VERIFY_SECTION)
    for m in methods:
        print(f"fusion {m}: the rule {'holds on every' if everywhere[m] else 'does NOT hold on every'} "
              f"set and kind measured ({', '.join(names)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
