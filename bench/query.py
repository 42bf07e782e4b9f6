"""Search latency and throughput: in-process vs through the Redis queue, in one run.

Builds a collection of ``--vectors`` random unit vectors (the model's dimension) in a
``milvus-lite server``, starts a real Redis and real ``imgsearch query-worker``
subprocesses, then runs the same text queries

- in-process: ``SearchService.search(text=..., channels=["clip"])`` from N threads;
- queue:      ``SearchClient.search`` from N threads, one worker (dynamic batching);

at each concurrency of ``--concurrency`` (default 1, 8, 32), and finally the queue at
``--batch-concurrency`` (default 16) with batching on vs ``query_max_batch=1``.
Prints p50/p99 latency and QPS side by side; ``--record`` appends to bench/RESULTS.md.
Not a test: nothing here asserts a speed.

What the queue adds is measured two ways, because on a small shared CPU a Milvus search
varies by more than the hop itself: (1) at concurrency 1 the two paths run *interleaved*
(in-process, queue, queue, in-process, ...), so drift hits both alike, and the p50 of each
is compared; (2) per queued request, ``hop`` = round trip seen by the caller minus the
worker's own time for that request (``took_ms`` in the reply: parse, encode, search). The
hop is what the queue costs (XADD, the worker's wake-up, the reply push, the caller's
BLPOP wake-up) and does not contain the search's noise.

    python bench/query.py --vectors 100000 --record
    python bench/query.py --scale 10000,100000,1000000 --record   # the CLIP channel by size
    python bench/query.py --pretrained none --vectors 20000     # random weights, any time
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import fields
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bench.harness import machine, stop_cleanly_on_sigterm  # noqa: E402
from bench.results import record_row  # noqa: E402
from common.models.clip import load_clip  # noqa: E402
from common.settings import PREFIX, Settings  # noqa: E402
from common.store import ImageStore  # noqa: E402
from query.client import SearchClient, SearchResult  # noqa: E402
from query.search import SearchService  # noqa: E402
from tests.servers import MilvusLiteServer, RedisServer  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
CHANNELS = ["clip"]  # the bench collection has vectors only (no texts): both paths search CLIP alone
PHRASES = ["a red sneaker", "warm winter coat", "a leather handbag", "summer dress", "ankle boots",
           "denim trousers", "a knitted pullover", "beach sandals", "a plain t-shirt", "a formal shirt"]


def build_collection(settings: Settings, n: int) -> None:
    """``n`` random unit vectors with plausible scalar fields, recorded as built by the model."""
    model = load_clip(settings.clip_model, settings.clip_pretrained, settings)
    store = ImageStore(settings)
    store.ensure(model.spec)
    rng = np.random.default_rng(0)
    chunk = 2048
    for start in range(0, n, chunk):
        vecs = rng.normal(size=(min(chunk, n - start), model.spec.dim)).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        store.upsert([{"id": start + i, "uri": f"s3://bench/{start + i}.jpg", "etag": "e", "source": "s3://bench/",
                       "width": 28, "height": 28, "bytes": 1000, "mime": "image/jpeg", "indexed_at": 0,
                       "model": model.spec.name, "clip": v.tolist(), "phash": [1.0] * 64}
                      for i, v in enumerate(vecs)])
    store.flush()
    print(f"collection: {store.count()} vectors of {model.spec.dim}-d", flush=True)


def measure(search, concurrency: int, requests: int) -> dict:
    """Closed loop: ``concurrency`` threads issue ``requests`` searches in total.

    When ``search`` returns a client ``SearchResult``, the per-request hop (round trip minus
    the worker's ``took_ms``) is collected too."""
    latencies: list[float] = []
    hops: list[float] = []
    lock = threading.Lock()
    counter = iter(range(requests))

    def loop() -> None:
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            t0 = time.perf_counter()
            result = search(PHRASES[i % len(PHRASES)])
            dt = time.perf_counter() - t0
            with lock:
                latencies.append(dt)
                if isinstance(result, SearchResult):
                    hops.append(dt * 1000 - result.took_ms)

    for p in PHRASES[:3]:  # warm-up
        search(p)
    started = time.perf_counter()
    threads = [threading.Thread(target=loop) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    out = summary(latencies)
    out["qps"] = len(latencies) / wall
    if hops:
        out["hop"] = summary([h / 1000 for h in hops])
    return out


def summary(seconds: list[float]) -> dict:
    """p50/p99 in milliseconds of a list of durations in seconds."""
    lat = sorted(seconds)
    return {"p50": statistics.median(lat) * 1000, "p99": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000}


def interleaved(local, queued, requests: int) -> tuple[dict, dict]:
    """Concurrency 1 with the two paths alternating (ABBA), so slow drift of the machine
    lands on both alike; returns (in-process, queue) summaries, the queue's with its hop."""
    for p in PHRASES[:3]:
        local(p), queued(p)
    times: dict[str, list[float]] = {"local": [], "queue": []}
    hops: list[float] = []
    for i in range(requests):
        q = PHRASES[i % len(PHRASES)]
        order = (("local", local), ("queue", queued)) if i % 2 == 0 else (("queue", queued), ("local", local))
        for name, fn in order:
            t0 = time.perf_counter()
            result = fn(q)
            dt = time.perf_counter() - t0
            times[name].append(dt)
            if isinstance(result, SearchResult):
                hops.append(dt - result.took_ms / 1000)
    lo, qu = summary(times["local"]), summary(times["queue"])
    qu["hop"] = summary(hops)
    return lo, qu


def _cell(c: int, local: dict, queued: dict) -> str:
    """One concurrency level for the results table: both paths, their p50 gap, the hop."""
    def qps(d: dict) -> str:
        return f" {d['qps']:.0f} qps" if "qps" in d else ""

    label = f"c={c}" + (" interleaved" if "qps" not in local else "")
    return (f"{label}: {local['p50']:.1f}/{local['p99']:.1f} ms{qps(local)} vs "
            f"{queued['p50']:.1f}/{queued['p99']:.1f} ms{qps(queued)} ({queued['p50'] - local['p50']:+.1f} ms p50; "
            f"hop {queued['hop']['p50']:.2f}/{queued['hop']['p99']:.2f} ms)")


def env_for(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(PREFIX)}
    env.update({PREFIX + f.name.upper(): str(getattr(settings, f.name)) for f in fields(settings)})
    env["PYTHONPATH"] = str(ROOT)
    return env


class Worker:
    def __init__(self, settings: Settings, name: str):
        self.proc = subprocess.Popen([sys.executable, "-m", "imgsearch", "query-worker", "--name", name],
                                     env=env_for(settings), cwd=ROOT, start_new_session=True)
        client = SearchClient(settings=settings)
        until = time.monotonic() + 180
        while name not in client.ready_workers():
            if self.proc.poll() is not None or time.monotonic() > until:
                raise SystemExit(f"worker {name} did not become ready")
            time.sleep(0.1)
        client.close()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--pretrained", default="", help="'' = bundled reference weights, 'none' = random")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--batch-concurrency", type=int, default=16)
    parser.add_argument("--requests", type=int, default=300, help="searches per measurement")
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--record", action="store_true", help="append the result to bench/RESULTS.md")
    scale_args = parser.add_argument_group("--scale mode (bench/query_scale.py)")
    scale_args.add_argument("--scale", default="", help="comma-separated sizes, e.g. 10000,100000,1000000")
    scale_args.add_argument("--data", choices=["clustered", "random"], default="clustered")
    scale_args.add_argument("--queries", type=int, default=200, help="queries per size")
    scale_args.add_argument("--lite-index", default="HNSW,FLAT", help="embedded index types to measure")
    scale_args.add_argument("--own-queries", type=int, default=5,
                            help="queries with Milvus Lite's own executor (0: skip)")
    scale_args.add_argument("--server-max", type=int, default=100_000,
                            help="largest size also measured through a milvus-lite server")
    scale_args.add_argument("--hybrid", action="store_true",
                            help="also the fused text search (clip+bm25+dense) through SearchService")
    scale_args.add_argument("--hybrid-queries", type=int, default=40)
    scale_args.add_argument("--hybrid-only", action="store_true",
                            help="only the fused text search (no numpy/faiss/lite/server cells); implies --hybrid")
    scale_args.add_argument("--hybrid-dir", default="",
                            help="keep the hybrid collection of size N in DIR/N and reuse it when it is "
                                 "complete (re-time after a code change without the build: ~50 min at 1M)")
    args = parser.parse_args()
    stop_cleanly_on_sigterm()
    if args.scale:
        return scale_main(args)
    levels = [int(c) for c in args.concurrency.split(",")]

    with tempfile.TemporaryDirectory(prefix="imgsearch-qbench-") as tmp, RedisServer() as rs, \
            MilvusLiteServer() as ms:
        settings = Settings.from_env({}, clip_model="imgsearch-fmnist-lit-minilm",
                                     data_dir=Path(tmp), clip_pretrained=args.pretrained, milvus_uri=ms.uri,
                                     redis_url=rs.url, collection="bench", query_timeout_ms=60_000)
        build_collection(settings, args.vectors)
        service = SearchService(settings)
        rows = []
        worker = Worker(settings, "bench-batched")
        client = SearchClient(settings=settings)
        try:
            def local_fn(q):
                return service.search(text=q, k=args.k, channels=CHANNELS)

            def queue_fn(q):
                return client.search(text=q, k=args.k, channels=CHANNELS)

            for c in levels:
                if c == 1:
                    local, queued = interleaved(local_fn, queue_fn, args.requests)
                    qps = "interleaved"
                else:
                    local = measure(local_fn, c, args.requests)
                    queued = measure(queue_fn, c, args.requests)
                    qps = f"{local['qps']:.1f} vs {queued['qps']:.1f} qps"
                rows.append((c, local, queued))
                hop = queued["hop"]
                print(f"c={c:<3} in-process p50 {local['p50']:7.2f} ms p99 {local['p99']:7.2f} ms | "
                      f"queue p50 {queued['p50']:7.2f} ms p99 {queued['p99']:7.2f} ms | "
                      f"{queued['p50'] - local['p50']:+.2f} ms p50 | hop p50 {hop['p50']:.2f} ms "
                      f"p99 {hop['p99']:.2f} ms | {qps}", flush=True)
            batched = measure(queue_fn, args.batch_concurrency, args.requests)
        finally:
            worker.stop()
        single_settings = settings.with_overrides(query_max_batch=1, query_stream="imgsearch:query:b1")
        worker = Worker(single_settings, "bench-batch1")
        client1 = SearchClient(settings=single_settings)
        try:
            single = measure(lambda q: client1.search(text=q, k=args.k, channels=CHANNELS), args.batch_concurrency,
                             args.requests)
        finally:
            worker.stop()
        gain = batched["qps"] / single["qps"]
        print(f"c={args.batch_concurrency} queue batched {batched['qps']:.1f} qps (p50 {batched['p50']:.2f} ms) vs "
              f"batch-size 1 {single['qps']:.1f} qps (p50 {single['p50']:.2f} ms): x{gain:.2f}")
        where = machine()
        print(f"machine {where}")

    if args.record:
        cells = "; ".join(_cell(c, lo, q) for c, lo, q in rows)
        batching = f"c={args.batch_concurrency}: {batched['qps']:.0f} vs {single['qps']:.0f} qps (x{gain:.2f})"
        record_row("## bench/query.py", [args.vectors, cells, batching, where], (
            "## bench/query.py — search in-process vs through the Redis queue\n\n"
            "Latency p50/p99 and QPS of the same text searches (k=10), in-process vs through Redis + one "
            "query worker; then the queue at one concurrency with dynamic batching vs batch size 1.\n\n"
            "| date | command | vectors | in-process vs queue (p50/p99, QPS) | batching vs batch-size 1 | "
            "machine |\n|---|---|---|---|---|---|\n"))
        print(f"recorded in {RESULTS}")
    return 0


def scale_main(args) -> int:
    """The CLIP channel at each size of ``--scale`` (see bench/query_scale.py)."""
    from bench import query_scale as scale

    args.lite_index = [k.strip() for k in args.lite_index.split(",") if k.strip()]
    rng = np.random.default_rng(0)
    rows = []
    for n in [int(x) for x in args.scale.split(",")]:
        rows.append(scale.run_size(n, args, rng, lambda line: print(line, flush=True)))
        load = "load average {:.1f}/{:.1f}/{:.1f}".format(*os.getloadavg())
        print(f"N={n:>8} measured at {load}", flush=True)
        if args.record:  # one row per size, as soon as it is measured
            record_row("## bench/query.py --scale", [rows[-1]["n"], args.data, scale.cells(rows[-1]),
                                                     f"{machine()}; {load}"], (
                "## bench/query.py --scale — the CLIP channel by collection size\n\n"
                "Per size: p50/p99 ms of one k=10 query and recall@10 against an exact numpy scan of the same "
                "vectors: numpy itself, raw faiss HNSW, `ImageStore.search` on embedded Milvus Lite (fast "
                "executor; `-own`: Milvus Lite's own), through a `milvus-lite server` (IVF_FLAT), and "
                "`hybrid`: SearchService text search fused over clip+bm25+dense (embedded).\n\n"
                "| date | command | vectors | data | p50/p99 ms and recall@10 per path | machine |\n"
                "|---|---|---|---|---|---|\n"))
    if len(rows) > 1:
        print("\n".join(scale.curve(rows)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
