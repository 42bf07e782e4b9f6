"""Web page costs on the gateway: collection map (t-SNE + k-means) and thumbnails cold vs cached.

Why: the map is computed once per collection count and cached, and thumbnails are cached by
(URI, ETag, size); this shows what a cache miss costs next to a hit, side by side in one run.
In-process (no servers): the map over synthetic clustered vectors of the given dimension,
thumbnails rendered from local JPEGs through the same code the endpoint runs.

    python bench/web.py --points 500 2000 --dim 512 --thumbs 50 [--record]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import machine, smooth_jpeg  # noqa: E402
from bench.results import record_row  # noqa: E402
from common.settings import Settings  # noqa: E402
from query import explore  # noqa: E402
from query.thumbnails import ThumbnailCache, thumbnail  # noqa: E402

HEADING = "## bench/web.py"
SECTION = f"""{HEADING} — web page: collection map and thumbnails

Map = t-SNE (PCA to 50 first) + k-means over synthetic clustered vectors (computed on a
cache miss only, then reused until the collection count changes). Thumbnails = fetch a
local 1024x768 JPEG, decode with the ingest limits, shrink to 256 px, JPEG-encode (miss)
vs the memory cache (hit); median ms per thumbnail.

| date | command | map (points: seconds) | thumbnail miss ms | hit ms | miss/hit | machine |
|---|---|---|---|---|---|---|
"""


def clustered(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, dim))
    return centres[np.arange(n) % 20] + 0.6 * rng.normal(size=(n, dim))


def time_map(n: int, dim: int) -> float:
    rows = [{"id": i + 1, "uri": f"file:///bench/{i % 20}/{i}.jpg"} for i in range(n)]
    start = time.perf_counter()
    explore.collection_map(rows, clustered(n, dim), n)
    return time.perf_counter() - start


def time_thumbs(count: int) -> tuple[float, float]:
    settings = Settings.from_env({}, clip_model="imgsearch-fmnist-lit-minilm")
    cache = ThumbnailCache(64 * 1024 * 1024)
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for i in range(count):
            path = Path(tmp) / f"{i}.jpg"
            path.write_bytes(smooth_jpeg(i, (1024, 768)))
            rows.append({"uri": path.as_uri(), "etag": "1"})
        misses, hits = [], []
        for row in rows:
            start = time.perf_counter()
            thumbnail(row, 256, settings, cache)
            misses.append(time.perf_counter() - start)
        for row in rows:
            start = time.perf_counter()
            thumbnail(row, 256, settings, cache)
            hits.append(time.perf_counter() - start)
    return statistics.median(misses) * 1000, statistics.median(hits) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, nargs="+", default=[500, 2000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--thumbs", type=int, default=50)
    parser.add_argument("--record", action="store_true", help="add the row to bench/RESULTS.md")
    args = parser.parse_args()
    time_map(60, args.dim)  # warm-up: imports and first-call costs are not the map's
    maps = [(n, time_map(n, args.dim)) for n in args.points]
    for n, seconds in maps:
        print(f"map {n} points x {args.dim}-d: {seconds:.2f} s")
    miss, hit = time_thumbs(args.thumbs)
    print(f"thumbnail miss {miss:.2f} ms, hit {hit:.4f} ms, x{miss / hit:.0f}")
    if args.record:
        record_row(HEADING, [", ".join(f"{n}: {s:.1f} s" for n, s in maps), f"{miss:.1f}", f"{hit:.3f}",
                             f"x{miss / hit:.0f}", machine()], SECTION)


if __name__ == "__main__":
    main()
