"""``bench/query.py --scale 10000,100000,1000000``: the CLIP channel's latency curve by size.

For each size N, the same N vectors and the same queries go through

- ``numpy``: an exact scan (``vectors @ q``, ``argpartition``): the truth for recall@10, and
  the exact-scan latency;
- ``faiss``: raw faiss ``IndexHNSWFlat`` (inner product, the build and search parameters
  our HNSW collections get: M, efConstruction, ef);
- ``lite``: ``ImageStore.search`` on an embedded Milvus Lite file in this process (the
  store's fast executor, ``common.lite_search``), for each ``--lite-index`` (HNSW, FLAT);
- ``lite-own``: the same collection with Milvus Lite's own executor (a few queries: slow);
- ``server``: ``ImageStore.search`` against a ``milvus-lite server`` subprocess with the
  Milvus-server index default (IVF_FLAT, ``vector_nprobe``), up to ``--server-max`` rows;
- ``hybrid`` (``--hybrid``): ``SearchService.search(text=..., channels=clip,bm25,dense)``,
  end to end (CLIP text tower, text encoder, three channels, the configured fusion, uris), on an
  embedded collection of N images (HNSW) and N text rows (a tag from a 1000-word vocabulary
  on every image, a unique OCR line on every tenth); text vectors are random unit vectors
  (the latency does not depend on what they mean). No recall: there is no exact fused truth.
  ``--hybrid-only`` measures only this cell; ``--hybrid-dir DIR`` keeps each size's collection
  in ``DIR/N`` and reuses it once complete (re-time a code change without the build).

Each cell prints p50/p99 latency in ms with recall@10 against numpy beside it. The vectors
are clustered (``--data clustered``: points around N/1000 random centres, queries near data
points), as embeddings of real images are; ``--data random`` gives uniform points on the
sphere, the worst case of every ANN index (no neighbourhood structure at all).
"""

from __future__ import annotations

import contextlib
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from common import lite_search
from common.models.clip import ModelSpec
from common.settings import Settings
from common.store import ImageStore, close_clients
from common.vector_index import _BUILD, search_params

DIM = 512
K = 10
ROWS_PER_UPSERT = 4096


@contextlib.contextmanager
def scratch_dir(prefix: str):
    """A temporary folder for one collection, removed afterwards even when Milvus Lite's
    background thread (compaction, index builds) still writes into it for a moment after
    the client closed (TemporaryDirectory then fails with "Directory not empty")."""
    path = tempfile.mkdtemp(prefix=prefix)
    try:
        yield path
    finally:
        close_clients()
        until = time.monotonic() + 120
        while True:
            try:
                shutil.rmtree(path)
                break
            except FileNotFoundError:
                break
            except OSError:
                if time.monotonic() > until:
                    print(f"could not remove {path}: Milvus Lite still writes there", flush=True)
                    break
                time.sleep(1)


BUILT = "BUILT"  # written into a kept hybrid collection's folder once it is complete


@contextlib.contextmanager
def hybrid_dir(root: str, n: int):
    """(folder, already built?) for the hybrid collection of size ``n``: a scratch folder
    removed afterwards, or with ``--hybrid-dir`` ``root/n``, kept, and reused when an earlier
    run completed it (a half-built one is started afresh)."""
    if not root:
        with scratch_dir("imgsearch-hybrid-") as tmp:
            yield tmp, False
        return
    path = Path(root) / str(n)
    built = (path / BUILT).exists()
    if not built and path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    try:
        yield path, built
    finally:
        close_clients()


def make_vectors(n: int, dim: int, kind: str, rng: np.random.Generator) -> np.ndarray:
    if kind == "random":
        v = rng.normal(size=(n, dim)).astype(np.float32)
    else:
        centres = rng.normal(size=(max(10, n // 1000), dim)).astype(np.float32)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        v = np.empty((n, dim), dtype=np.float32)
        for s in range(0, n, 65536):
            m = min(65536, n - s)
            v[s:s + m] = centres[rng.integers(0, len(centres), m)] + \
                rng.normal(scale=0.7 / np.sqrt(dim), size=(m, dim)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v


def make_queries(vectors: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    q = vectors[rng.integers(0, len(vectors), count)] + \
        rng.normal(scale=0.3 / np.sqrt(vectors.shape[1]), size=(count, vectors.shape[1])).astype(np.float32)
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def exact_topk(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Row indexes of the exact top-k by inner product, best first (chunked over rows)."""
    best_s = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(queries), k), dtype=np.int64)
    for s in range(0, len(vectors), 262144):
        scores = queries @ vectors[s:s + 262144].T
        idx = np.argpartition(-scores, min(k, scores.shape[1] - 1), axis=1)[:, :k]
        cand_s = np.concatenate([best_s, np.take_along_axis(scores, idx, 1)], axis=1)
        cand_i = np.concatenate([best_i, idx + s], axis=1)
        top = np.argsort(-cand_s, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(cand_s, top, 1), np.take_along_axis(cand_i, top, 1)
    return best_i


def recall(found: list[list[int]], truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(f[:k]) & set(t.tolist())) / k for f, t in zip(found, truth)]))


def timed(fn, queries) -> tuple[dict, list]:
    fn(queries[0])  # warm
    times, found = [], []
    for q in queries:
        t0 = time.perf_counter()
        found.append(fn(q))
        times.append(time.perf_counter() - t0)
    lat = sorted(times)
    return {"p50": statistics.median(lat) * 1000, "p99": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000}, found


def build_store(settings: Settings, vectors: np.ndarray) -> tuple[ImageStore, float]:
    store = ImageStore(settings)
    store.ensure(ModelSpec("bench-vectors", "none", "bench", vectors.shape[1]))
    t0 = time.perf_counter()
    for s in range(0, len(vectors), ROWS_PER_UPSERT):
        store.upsert([{"id": s + i + 1, "uri": f"s3://bench/{s + i + 1}.jpg", "etag": "e", "source": "s3://bench/",
                       "width": 28, "height": 28, "bytes": 1000, "mime": "image/jpeg", "indexed_at": 0,
                       "model": "bench-vectors", "clip": v, "phash": [1.0] * 64}
                      for i, v in enumerate(vectors[s:s + ROWS_PER_UPSERT])])
    store.flush()
    if settings.vector_index != "FLAT":
        wait_for_indexes(settings, store.physical_name(), "clip")
    store.search([vectors[0]], K)  # first search loads/builds what is lazy
    return store, time.perf_counter() - t0


def wait_for_indexes(settings: Settings, name: str, field: str) -> None:
    """Embedded: until Milvus Lite's background thread has built ``field``'s index on every
    sealed segment of ``name`` (until then those segments are scanned, and timing would
    measure the build)."""
    until = time.monotonic() + 3600
    while lite_search.indexes_ready(settings.effective_milvus_uri(), name, field) is False:
        if time.monotonic() > until:
            raise SystemExit("Milvus Lite did not finish building its indexes in an hour")
        time.sleep(1)


def segment_sizes(settings: Settings, store: ImageStore) -> list[int]:
    """Rows per sealed segment of an embedded collection: an HNSW search is one graph search
    per segment (Milvus Lite flushes at 128 MB and compacts up to 100k rows a segment)."""
    coll = lite_search.local_collection(settings.effective_milvus_uri(), store.physical_name())
    return [s.num_rows for s in coll._segments_snapshot() if s.num_rows > 0] if coll is not None else []


def store_fn(store: ImageStore):
    return lambda q: [h.id - 1 for h in store.search([q], K)[0]]


def run_size(n: int, args, rng: np.random.Generator, out) -> dict:
    import faiss

    row: dict = {"n": n}
    if args.hybrid_only:
        row["hybrid"] = run_hybrid(n, args, rng, out)
        return row
    vectors = make_vectors(n, DIM, args.data, rng)
    queries = make_queries(vectors, args.queries, rng)
    truth = exact_topk(vectors, queries, K)

    def np_search(q):
        s = vectors @ q
        top = np.argpartition(-s, K)[:K]
        return top[np.argsort(-s[top])].tolist()

    row["numpy"], found = timed(np_search, queries[:max(5, args.queries // 5)])
    row["numpy"]["recall"] = recall(found, truth)
    out(f"N={n:>8} numpy exact        p50 {row['numpy']['p50']:8.2f} ms p99 {row['numpy']['p99']:8.2f} ms")

    hnsw = _BUILD["HNSW"]
    ef = search_params("HNSW", Settings.from_env({}), K)["params"]["ef"]
    t0 = time.perf_counter()
    index = faiss.IndexHNSWFlat(DIM, hnsw["M"], faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = hnsw["efConstruction"]
    index.add(vectors)
    index.hnsw.efSearch = ef
    build = time.perf_counter() - t0
    row["faiss"], found = timed(lambda q: index.search(q[None, :], K)[1][0].tolist(), queries)
    row["faiss"]["recall"], row["faiss"]["build_s"] = recall(found, truth), build
    out(f"N={n:>8} faiss HNSW M={hnsw['M']} efC={hnsw['efConstruction']} ef={ef} p50 {row['faiss']['p50']:8.2f} ms "
        f"p99 {row['faiss']['p99']:8.2f} ms recall@10 {row['faiss']['recall']:.3f} (build {build:.0f} s)")
    index.reset()  # frees its memory before the Milvus Lite builds

    for kind in args.lite_index:
        with scratch_dir("imgsearch-scale-") as tmp:
            settings = Settings.from_env({}, data_dir=Path(tmp), collection="bench", vector_index=kind)
            store, build = build_store(settings, vectors)
            cell, found = timed(store_fn(store), queries)
            cell["recall"], cell["build_s"] = recall(found, truth), build
            row[f"lite-{kind}"] = cell
            segments = segment_sizes(settings, store)
            out(f"N={n:>8} lite {kind:<8} (fast) p50 {cell['p50']:8.2f} ms p99 {cell['p99']:8.2f} ms "
                f"recall@10 {cell['recall']:.3f} (build {build:.0f} s) x{cell['p50'] / row['faiss']['p50']:.1f} faiss; "
                f"{len(segments)} sealed segments of {min(segments, default=0)}-{max(segments, default=0)} rows")
            if args.own_queries:
                lite_search.uninstall()
                try:
                    own, found = timed(store_fn(store), queries[:args.own_queries])
                finally:
                    lite_search.install()
                own["recall"] = recall(found, truth[:args.own_queries])
                row[f"lite-{kind}-own"] = own
                out(f"N={n:>8} lite {kind:<8} (own)  p50 {own['p50']:8.2f} ms p99 {own['p99']:8.2f} ms "
                    f"recall@10 {own['recall']:.3f} ({args.own_queries} queries: Milvus Lite's own executor)")

    if n <= args.server_max:
        from tests.servers import MilvusLiteServer

        with scratch_dir("imgsearch-scale-") as tmp, MilvusLiteServer() as ms:
            settings = Settings.from_env({}, data_dir=Path(tmp), collection="bench", milvus_uri=ms.uri,
                                         vector_index="IVF_FLAT")
            store, build = build_store(settings, vectors)
            cell, found = timed(store_fn(store), queries[:max(5, args.queries // 4)])
            cell["recall"], cell["build_s"] = recall(found, truth), build
            row["server-IVF_FLAT"] = cell
            out(f"N={n:>8} server IVF_FLAT nlist={_BUILD['IVF_FLAT']['nlist']} nprobe={settings.vector_nprobe} "
                f"p50 {cell['p50']:8.2f} ms p99 {cell['p99']:8.2f} ms recall@10 {cell['recall']:.3f} "
                f"(build {build:.0f} s)")
    if args.hybrid:
        row["hybrid"] = run_hybrid(n, args, rng, out)
    return row


PHRASES = ["a red sneaker", "warm winter coat", "a leather handbag", "summer dress", "ankle boots",
           "denim trousers", "a knitted pullover", "beach sandals", "a plain t-shirt", "code XK123"]


def run_hybrid(n: int, args, rng: np.random.Generator, out) -> dict:
    from common.models.clip import load_clip
    from common.models.text import load_text_encoder
    from common.texts import TextItem, TextStore, vectors_name
    from query.search import SearchService

    with hybrid_dir(args.hybrid_dir, n) as (tmp, built):
        settings = Settings.from_env({}, clip_model="imgsearch-fmnist-lit-minilm",  # bundled: no weights to fetch
                                     data_dir=Path(tmp), collection="bench", vector_index="HNSW",
                                     clip_pretrained=args.pretrained)
        model = load_clip(settings.clip_model, settings.clip_pretrained, settings)
        store = ImageStore(settings)
        store.ensure(model.spec)
        encoder = load_text_encoder(settings)
        texts = TextStore(settings)
        texts.ensure(encoder.label, encoder.dim)
        t0 = time.perf_counter()
        vocab = _unit_rows(rng.normal(size=(1000, encoder.dim)))
        for s in range(0, 0 if built else n, ROWS_PER_UPSERT):
            m = min(ROWS_PER_UPSERT, n - s)
            vecs = make_vectors(m, model.spec.dim, args.data, rng)
            store.upsert([{"id": s + i + 1, "uri": f"s3://bench/{s + i + 1}.jpg", "etag": "e", "source": "s3://bench/",
                           "width": 28, "height": 28, "bytes": 1000, "mime": "image/jpeg", "indexed_at": 0,
                           "model": model.spec.name, "clip": v, "phash": [1.0] * 64} for i, v in enumerate(vecs)])
            per_image = {}
            for i in range(s + 1, s + m + 1):
                items, tv = [TextItem("tag", f"tag{i % 1000} {PHRASES[i % 9]}")], [vocab[i % 1000]]
                if i % 10 == 0:
                    items.append(TextItem("ocr", f"code XK{i}"))
                    tv.append(_unit_rows(rng.normal(size=(1, encoder.dim)))[0])
                per_image[i] = (items, tv)
            texts.replace_many(per_image)
        store.flush()
        texts.flush()
        wait_for_indexes(settings, store.physical_name(), "clip")
        wait_for_indexes(settings, vectors_name(texts.physical_name()), "dense")
        build = time.perf_counter() - t0
        if args.hybrid_dir and not built:
            (Path(tmp) / BUILT).write_text(f"{n} images, built in {build:.0f} s\n")
        service = SearchService(settings)
        channels = ["clip", "bm25", "dense"]
        for p in PHRASES[:3]:
            service.search(text=p, k=K, channels=channels)  # warm: models, indexes, caches
        cell, _ = timed(lambda p: service.search(text=p, k=K, channels=channels),
                        [PHRASES[j % len(PHRASES)] for j in range(args.hybrid_queries)])
        if not built:
            cell["build_s"] = build
        out(f"N={n:>8} hybrid clip+bm25+dense (embedded, HNSW) p50 {cell['p50']:8.2f} ms p99 {cell['p99']:8.2f} ms "
            f"({n} images, {n + n // 10} text rows; {'reused ' + str(tmp) if built else f'build {build:.0f} s'})")
    return cell


def _unit_rows(a: np.ndarray) -> np.ndarray:
    return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)


def cells(row: dict) -> str:
    """One size's results for RESULTS.md: 'name p50/p99 ms r@10' per path."""
    parts = []
    for name, c in row.items():
        if name == "n":
            continue
        r = f" r@10 {c['recall']:.3f}" if "recall" in c else ""
        parts.append(f"{name} {c['p50']:.1f}/{c['p99']:.1f} ms{r}")
    return "; ".join(parts)


def curve(rows: list[dict]) -> list[str]:
    """The growth curve: per path, p50 at each size and its factor over the smallest size."""
    out = ["p50 by size (x = over the smallest size measured):"]
    paths = [name for name in rows[0] if name != "n"]
    for name in paths:
        cells = [(r["n"], r[name]["p50"]) for r in rows if name in r]
        if not cells:
            continue
        base = cells[0][1]
        out.append(f"  {name:<18} " + "  ".join(f"{n:>8}: {v:8.2f} ms (x{v / base:.1f})" for n, v in cells))
    return out
