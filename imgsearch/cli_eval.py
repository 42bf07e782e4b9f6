"""CLI pieces of issue 5's measuring side: ``imgsearch eval`` and ``imgsearch duplicates``.

Kept apart from :mod:`imgsearch.cli`, which only registers them.
Exit codes as everywhere: 0 ok, 1 error (message on stderr), 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_parsers(sub) -> None:
    e = sub.add_parser(
        "eval", help="precision/recall/mAP/F1/PR-AUC of a labelled dataset, per channel and fused",
        description="Ingests DATASET's images into a fresh temporary collection (embedded mode, the "
        "configured model) and runs its queries on each channel alone and, with several channels, "
        "fused; prints precision@k, recall@k, F1@k, mAP, PR-AUC, MRR and hit@1/@5 over all queries "
        "and per query kind. DATASET is a folder with queries.jsonl, or a folder per class "
        "(README: Evaluation). With --existing it searches the configured collection instead.")
    e.add_argument("dataset", type=Path, help="dataset folder (e.g. evalsets/ocr, evalsets/neardup, evalsets)")
    e.add_argument("-k", "--k", type=int, default=10, help="cut-off of precision/recall/F1 (default 10)")
    e.add_argument("--depth", type=int, default=100,
                   help="results ranked per query for mAP and PR-AUC (default 100, >= k)")
    e.add_argument("--channels", help="comma-separated channels (default: all the service has)")
    e.add_argument("--existing", action="store_true",
                   help="search the configured collection (IMGSEARCH_COLLECTION / --collection) "
                   "instead of ingesting DATASET into a temporary one")
    e.add_argument("--uri-prefix", default="", help="with --existing: the URI the dataset folder was "
                   "ingested from (e.g. s3://bucket/evalsets/ocr/); default its file:// URI")
    e.add_argument("--collection", default=argparse.SUPPRESS, help="override IMGSEARCH_COLLECTION")
    e.add_argument("--json", action="store_true", help="print the report as JSON")
    e.add_argument("--plot", type=Path, metavar="FILE.png",
                   help="also draw precision-recall curves to FILE.png: one panel per query kind (and all "
                   "queries), one curve per channel and fused")
    e.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")

    d = sub.add_parser(
        "duplicates", help="list groups of near-duplicate images in a collection",
        description="Searches every indexed image's perceptual hash against the collection and "
        "prints the groups of images linked by hashes at most THRESHOLD bits apart (of 64), "
        "largest first. Exit 0 whether or not duplicates were found.")
    d.add_argument("--collection", default=argparse.SUPPRESS, help="override IMGSEARCH_COLLECTION")
    d.add_argument("--threshold", type=int, help="override IMGSEARCH_DUPLICATE_THRESHOLD (bits, 0-32)")
    d.add_argument("--json", action="store_true", help="print the groups as JSON")
    d.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def _progress(total: int, desc: str, enabled: bool):
    if not enabled or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img" if "scan" in desc else "query", file=sys.stderr,
                dynamic_ncols=True, leave=False)


def cmd_duplicates(args, settings) -> int:
    from common.store import ImageStore
    from query.duplicates import find_duplicates

    settings = settings.with_overrides(duplicate_threshold=args.threshold)
    store = ImageStore(settings)
    bar = _progress(store.count() if store.exists() else 0, "scanning hashes", not args.no_progress)
    try:
        report = find_duplicates(store, settings.duplicate_threshold,
                                 progress=bar.update if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    in_groups = sum(g.size for g in report.groups)
    print(f"collection {report.collection!r}: {report.scanned} images scanned, {len(report.groups)} "
          f"duplicate groups ({in_groups} images), threshold {report.threshold} bits of 64")
    for number, group in enumerate(report.groups, 1):
        print(f"\ngroup {number}: {group.size} images")
        for image in group.images:
            print(f"  {image['nearest']:>2} bits  {image['id']:>20}  {image['uri']}")
    return 0


def cmd_eval(args, settings) -> int:
    from imgsearch.evaluate import evaluate_dataset

    if args.plot is not None:  # a bad path is refused before minutes of ingest, not after
        from imgsearch.plots import check_plot_path

        check_plot_path(args.plot)
    bar = None

    def progress(total: int):
        nonlocal bar
        bar = _progress(total, "querying", not args.no_progress)
        return bar.update if bar is not None else None

    try:
        report = evaluate_dataset(args.dataset, settings, args.channels, args.k, args.depth,
                                  existing=args.existing, uri_prefix=args.uri_prefix,
                                  ingest_progress=not args.no_progress and sys.stderr.isatty(),
                                  query_progress=progress)
    finally:
        if bar is not None:
            bar.close()
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.render())
    if args.plot is not None:
        from imgsearch.plots import plot_pr_curves

        written = plot_pr_curves(report, args.plot)
        print(f"precision-recall curves written to {written}", file=sys.stderr)
    return 0


COMMANDS = {"eval": cmd_eval, "duplicates": cmd_duplicates}
