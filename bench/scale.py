"""Growth of planning and re-indexing with the size of the source, side by side.

For each N: N tiny PNGs are put into SeaweedFS (concurrent puts), then, each in a fresh
"plan worker" process (this script with ``--plan-job``: the plan steps of
ingest/planning.py exactly as the Celery plan task runs them, batches enqueued into
Redis; nobody consumes them):

- ingest:   list + plan all N (index empty: every object new) -> objects/s, peak RSS;
- the index is then filled with N rows as the embed stage writes them (uri, etag, model
  tag; random vectors: encoding N images is not what is measured here);
- no-change re-index: listed N, unchanged N, 0 batches, so 0 encoded, and no model
  loaded in the plan process;
- re-index after 1% deleted + 1% overwritten (new content, new ETag): the counts must be
  exact (removed = deleted, changed = overwritten, unchanged = the rest).

Milvus writes: rows/s of the embed stage's write path (``ImageStore.upsert``, 512-row
chunks) against one raw ``MilvusClient.insert`` per 10k rows of the same rows, into fresh
collections of the same schema.

``--kill-plan N`` (faults at scale): N objects, an ingest job whose plan worker is SIGKILLed
mid-listing (once ``--kill-at`` of N is listed, slices of ``--slice`` objects), then a fresh
plan worker resumes from the job's checkpoint. Batches go to a recorder instead of Celery
(batch number -> its URIs, in Redis): exact means listed = new = N, every URI in exactly one
batch number, a batch planned twice (the killed step's slice, re-listed) identical both
times, the epoch unchanged (no restart from the first key).

The largest N is what fits the machine in ``--budget-s`` (estimated from the put rate of
the first N); the reason is printed. Not a test: ``--record`` appends rows to RESULTS.md.

    flock /work/bench.lock python bench/scale.py --n 10000 100000 --record --note "shared machine"
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.results import record_row  # noqa: E402
from common.settings import PREFIX, Settings  # noqa: E402


def tiny_png(i: int) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (i % 251, (i // 251) % 251, (i // 63001) % 251)).save(buf, "PNG")
    return buf.getvalue()


# -- the plan worker (child process) -----------------------------------------------------------
def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM). Not ru_maxrss: that one survives fork+exec and so
    reports the parent's peak (the bench process holds a CLIP model)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def recorder(redis_url: str, key: str):
    """An enqueue function that records each batch (number -> its sorted URIs) in Redis
    instead of sending it to Celery: a batch number planned twice must bring the same URIs."""
    import redis

    r = redis.Redis.from_url(redis_url)

    def enqueue(spec) -> None:
        uris = json.dumps(sorted(m["uri"] for m in spec["manifest"]))
        if not r.hsetnx(key, str(spec["batch"]), uris) and r.hget(key, str(spec["batch"])).decode() != uris:
            r.incr(key + ":conflicts")
        r.incr(key + ":enqueued")

    return enqueue


def plan_worker(job_id: str, resume: bool = False, record_key: str = "") -> int:
    """Run every plan step of the job here, as the Celery plan task does; print a JSON line.
    ``resume``: start at the job's checkpointed step (what a redelivered plan task does)."""
    from common.jobs import JobStore
    from common.models.base import MODELS
    from ingest.dispatch import enqueue_batch
    from ingest.planning import JobPlanState, plan_step

    settings = Settings.from_env()
    jobs = JobStore.from_url(settings.redis_url)
    if record_key:
        enqueue_batch = recorder(settings.redis_url, record_key)  # noqa: F811 (no Celery in the kill bench)
    started = time.perf_counter()
    step, steps = (jobs.get(job_id).planning()["step"] if resume else 0), 0
    while True:
        job = jobs.get(job_id)
        result = plan_step(job, step, settings, JobPlanState(jobs, job, settings), enqueue_batch)
        steps += 1
        if result.next_step is None:
            break
        step = result.next_step
    seconds = time.perf_counter() - started
    job = jobs.get(job_id)
    print(json.dumps({"seconds": seconds, "steps": steps, "listed": job.listed, "unchanged": job.unchanged,
                      "new": job.new, "changed": job.changed, "removed": job.removed,
                      "batches": job.batches_total,
                      "peak_rss_mb": peak_rss_mb(),
                      "models_loaded": [str(i) for i in MODELS.loaded()],
                      "torch_imported": "torch" in sys.modules}))
    return 0


def run_plan(env: dict, jobs, location: str, collection: str, kind: str) -> dict:
    job_id = jobs.create(location, collection, kind=kind)
    out = subprocess.run([sys.executable, __file__, "--plan-job", job_id], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- index filling and Milvus write rates ---------------------------------------------------------
def rows_for(objects, spec, root: str, rng) -> list[dict]:
    import numpy as np

    from common.ids import image_id

    vecs = rng.standard_normal((len(objects), spec.dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    ph = np.where(rng.standard_normal((len(objects), 64)) > 0, 1.0, -1.0).astype(np.float32)
    tag = f"{spec.name}@{spec.digest}"
    return [{"id": image_id(o.uri), "uri": o.uri, "etag": o.etag, "source": root, "width": 4, "height": 4,
             "bytes": o.size, "mime": "image/png", "indexed_at": int(time.time()), "model": tag,
             "clip": v.tolist(), "phash": p.tolist()} for o, v, p in zip(objects, vecs, ph)]


def fill_index(settings: Settings, spec, source, rng) -> float:
    """Write one row per listed object through the embed stage's upsert; returns rows/s."""
    from common.store import ImageStore
    from ingest.listing import chunks

    store = ImageStore(settings)
    store.ensure(spec)
    n, spent = 0, 0.0
    for page in chunks(source.list(), 2048):
        rows = rows_for(page, spec, source.root, rng)
        t = time.perf_counter()
        store.upsert(rows)
        spent += time.perf_counter() - t
        n += len(rows)
    store.flush()
    return n / spent


def raw_insert_rate(settings: Settings, spec, source, rng, limit: int) -> float:
    """The same rows with one raw pymilvus insert per 10k rows into a fresh collection."""
    from itertools import islice

    from common.store import ImageStore

    store = ImageStore(settings.with_overrides(collection=settings.collection + "_raw"))
    store.ensure(spec)
    name = store.physical_name()
    rows = rows_for(list(islice(source.list(), limit)), spec, source.root, rng)
    t = time.perf_counter()
    for start in range(0, len(rows), 10_000):
        store.client.insert(name, rows[start:start + 10_000])
    return len(rows) / (time.perf_counter() - t)


# -- one N -------------------------------------------------------------------------------------------
def one_size(n: int, env: dict, settings: Settings, s3, spec, rng, put_workers: int) -> dict:
    from common.jobs import JobStore
    from common.sources import open_source

    bucket = f"scale{n}"
    client = s3.client()
    client.create_bucket(Bucket=bucket)
    body = [tiny_png(i) for i in range(256)]
    t = time.perf_counter()

    def put(i: int) -> None:
        c = clients[i % put_workers]
        c.put_object(Bucket=bucket, Key=f"p/{i % 97:02d}/{i:08d}.png", Body=body[i % 256])

    clients = [s3.client() for _ in range(put_workers)]
    with ThreadPoolExecutor(put_workers) as pool:
        list(pool.map(put, range(n), chunksize=256))
    put_rate = n / (time.perf_counter() - t)
    location = f"s3://{bucket}/p/"
    collection = f"scale{n}"
    run_settings = settings.with_overrides(collection=collection)
    jobs = JobStore.from_url(settings.redis_url)
    env = {**env, PREFIX + "COLLECTION": collection}

    ingest = run_plan(env, jobs, location, collection, "ingest")
    assert (ingest["listed"], ingest["new"], ingest["unchanged"]) == (n, n, 0), ingest
    source = open_source(location, run_settings)
    upsert_rate = fill_index(run_settings, spec, source, rng)
    raw_rate = raw_insert_rate(run_settings, spec, source, rng, min(n, 20_000))

    same = run_plan(env, jobs, location, collection, "reindex")
    assert (same["listed"], same["unchanged"], same["batches"], same["removed"]) == (n, n, 0, 0), same
    assert not same["models_loaded"], same

    k = n // 100  # delete 1%, overwrite 1% with other content (a new ETag)
    keys = [f"p/{i % 97:02d}/{i:08d}.png" for i in range(n)]
    gone, changed = keys[0:n:100][:k], keys[50:n:100][:k]
    for start in range(0, k, 1000):
        client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": x} for x in gone[start:start + 1000]]})
    def overwrite(j: int) -> None:
        clients[j % put_workers].put_object(Bucket=bucket, Key=changed[j], Body=b"other " + changed[j].encode())

    with ThreadPoolExecutor(put_workers) as pool:
        list(pool.map(overwrite, range(len(changed))))
    diff = run_plan(env, jobs, location, collection, "reindex")
    expect = (n - k, k, n - 2 * k, 0, k)
    got = (diff["listed"], diff["changed"], diff["unchanged"], diff["new"], diff["removed"])
    return {"n": n, "put_rate": put_rate, "ingest": ingest, "same": same, "diff": diff, "exact": got == expect,
            "expect": expect, "got": got, "upsert_rate": upsert_rate, "raw_rate": raw_rate}


def put_objects(s3, bucket: str, n: int, put_workers: int) -> float:
    """N tiny PNGs under ``p/`` with concurrent puts; returns puts/s."""
    client = s3.client()
    client.create_bucket(Bucket=bucket)
    body = [tiny_png(i) for i in range(256)]
    clients = [s3.client() for _ in range(put_workers)]

    def put(i: int) -> None:
        clients[i % put_workers].put_object(Bucket=bucket, Key=f"p/{i % 97:02d}/{i:08d}.png", Body=body[i % 256])

    t = time.perf_counter()
    with ThreadPoolExecutor(put_workers) as pool:
        list(pool.map(put, range(n), chunksize=256))
    return n / (time.perf_counter() - t)


def kill_plan(n: int, env: dict, settings: Settings, s3, put_workers: int, slice_objects: int,
              kill_at: float) -> dict:
    """Faults at scale: SIGKILL the plan worker mid-listing, resume, check exact counts."""
    import signal

    import redis

    from common.jobs import JobStore

    bucket = f"kill{n}"
    put_rate = put_objects(s3, bucket, n, put_workers)
    collection = f"kill{n}"
    env = {**env, PREFIX + "COLLECTION": collection, PREFIX + "PLAN_SLICE_OBJECTS": str(slice_objects)}
    jobs = JobStore.from_url(settings.redis_url)
    job_id = jobs.create(f"s3://{bucket}/p/", collection, kind="ingest")
    key = f"bench:kill:{job_id}"
    cmd = [sys.executable, __file__, "--plan-job", job_id, "--record-batches", key]
    child = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    r = redis.Redis.from_url(settings.redis_url)

    def mid_slice() -> bool:
        """Past kill_at of N, and inside a slice: batches enqueued beyond the last checkpoint."""
        job = jobs.get(job_id)
        committed = int(job.plan.get("batches", 0))  # the checkpoint's next batch number
        return job.planning()["listed"] >= kill_at * n and int(r.get(key + ":enqueued") or 0) > committed

    while not mid_slice():  # an observed state, not a guessed time
        if child.poll() is not None:
            raise RuntimeError(f"the plan worker ended before the kill: {child.stderr.read()[-2000:]}")
        time.sleep(0.002)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    at_kill = jobs.get(job_id)
    killed = {"listed": at_kill.planning()["listed"], "step": at_kill.planning()["step"], "epoch": at_kill.epoch,
              "uncommitted_batches": int(r.get(key + ":enqueued") or 0) - int(at_kill.plan.get("batches", 0))}
    out = subprocess.run(cmd + ["--resume"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    resumed = json.loads(out.stdout.strip().splitlines()[-1])
    job = jobs.get(job_id)
    batches = {int(b): json.loads(u) for b, u in r.hgetall(key).items()}
    uris = [u for us in batches.values() for u in us]
    checks = {
        "listed = new = N": (job.listed, job.new) == (n, n),
        "every URI in one batch": len(uris) == len(set(uris)) == n,
        "batches numbered 0..B-1 = batches_total": sorted(batches) == list(range(job.batches_total)),
        "re-planned batches identical": int(r.get(key + ":conflicts") or 0) == 0,
        "epoch unchanged (resumed, not restarted)": job.epoch == killed["epoch"],
        "killed mid-listing, inside a slice": 0 < killed["listed"] < n and killed["uncommitted_batches"] > 0,
    }
    return {"n": n, "put_rate": put_rate, "slice": slice_objects, "killed": killed, "resumed": resumed,
            "enqueued": int(r.get(key + ":enqueued") or 0), "batches": len(batches), "checks": checks,
            "exact": all(checks.values())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plan-job", help=argparse.SUPPRESS)
    parser.add_argument("--resume", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--record-batches", default="", help=argparse.SUPPRESS)
    parser.add_argument("--kill-plan", type=int, default=0, metavar="N",
                        help="faults at scale instead: SIGKILL the plan worker mid-listing of N objects, resume")
    parser.add_argument("--kill-at", type=float, default=0.4, help="fraction of N listed when the kill strikes")
    parser.add_argument("--slice", type=int, default=5000, help="plan slice (objects) of the kill run")
    parser.add_argument("--n", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--budget-s", type=float, default=900, help="time one N may take (estimated)")
    parser.add_argument("--put-workers", type=int, default=32)
    parser.add_argument("--note", default="")
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    if args.plan_job:
        return plan_worker(args.plan_job, args.resume, args.record_batches)

    import numpy as np

    from bench.harness import machine
    from common.models.clip import load_clip
    from tests.servers import MilvusLiteServer, RedisServer, S3Server

    rng = np.random.default_rng(0)
    results = []
    with tempfile.TemporaryDirectory(prefix="imgsearch-scale-") as tmp, RedisServer() as redis, \
            MilvusLiteServer() as milvus, S3Server(Path(tmp) / "s3") as s3:
        values = {"REDIS_URL": redis.url, "MILVUS_URI": milvus.uri, "DATA_DIR": str(Path(tmp) / "data"),
                  "MODEL_CACHE_DIR": str(Path(tmp) / "models"), "S3_ENDPOINT_URL": s3.endpoint_url,
                  "S3_REGION": s3.region, "S3_ACCESS_KEY": s3.access_key, "S3_SECRET_KEY": s3.secret_key,
                  "COLLECTION": "scale", "OCR_ENABLED": "false", "CAPTION_BACKEND": "off",
                  "CLIP_MODEL": "imgsearch-fmnist-lit-minilm"}  # the bundled model: no weights to fetch
        os.environ.update({PREFIX + k: v for k, v in values.items()})
        settings = Settings.from_env()
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        if args.kill_plan:
            return kill_main(args, env, settings, s3)
        spec = load_clip(settings.clip_model, settings.clip_pretrained, settings).spec  # the collection's model
        per_object = None
        for n in sorted(args.n):
            if per_object is not None and per_object * n > args.budget_s:
                print(f"N={n} skipped: estimated {per_object * n:.0f}s at {1 / per_object:.0f} objects/s "
                      f"(puts, plan x3, index fill) exceeds --budget-s {args.budget_s:.0f}s on this machine")
                continue
            t = time.perf_counter()
            r = one_size(n, env, settings, s3, spec, rng, args.put_workers)
            per_object = (time.perf_counter() - t) / n
            results.append(r)
            print(json.dumps(r))
    where = machine() + (f", {args.note}" if args.note else "")
    base = results[0] if results else None
    print(f"machine {where}")
    print("N | puts/s | list+plan obj/s | µs/obj | plan peak RSS MB | no-change reindex obj/s (encoded 0, "
          "models loaded) | 1%+1% reindex exact | upsert rows/s | raw insert rows/s")
    for r in results:
        ing, same = r["ingest"], r["same"]
        cost = ing["seconds"] / r["n"] * 1e6
        ratio = cost / (base["ingest"]["seconds"] / base["n"] * 1e6)
        print(f"{r['n']} | {r['put_rate']:.0f} | {r['n'] / ing['seconds']:.0f} | {cost:.0f} ({ratio:.2f}x of first) | "
              f"{ing['peak_rss_mb']:.0f} / {same['peak_rss_mb']:.0f} / {r['diff']['peak_rss_mb']:.0f} | "
              f"{r['n'] / same['seconds']:.0f} ({same['batches']} batches, {len(same['models_loaded'])}) | "
              f"{r['exact']} {r['got']} | {r['upsert_rate']:.0f} | {r['raw_rate']:.0f}")
        if args.record:
            header = ("\n## bench/scale.py — planning and re-index growth with N\n\n"
                      "Plan steps (ingest/planning.py) in a fresh plan-worker process per run against "
                      "SeaweedFS + Redis + milvus-lite server; tiny PNGs. list+plan = ingest of N new "
                      "objects; no-change = re-index of an unchanged source (0 batches => 0 encoded); "
                      "1%+1% = re-index after deleting 1% and overwriting 1% (got = listed, changed, "
                      "unchanged, new, removed). RSS = peak of the plan process (ingest / no-change / "
                      "1%+1%). Milvus writes: the embed stage's `ImageStore.upsert` vs raw "
                      "`MilvusClient.insert` of the same rows.\n\n"
                      "| date | command | N | list+plan obj/s | µs/obj (vs first N) | plan peak RSS MB | "
                      "no-change reindex obj/s | 1%+1% exact | upsert rows/s | raw insert rows/s | machine |\n"
                      "|---|---|---|---|---|---|---|---|---|---|---|\n")
            record_row("## bench/scale.py", [
                r["n"], f"{r['n'] / ing['seconds']:.0f}", f"{cost:.0f} ({ratio:.2f}x)",
                f"{ing['peak_rss_mb']:.0f} / {same['peak_rss_mb']:.0f} / {r['diff']['peak_rss_mb']:.0f}",
                f"{r['n'] / same['seconds']:.0f} (batches {same['batches']}, models {len(same['models_loaded'])})",
                f"{r['exact']} {r['got']}", f"{r['upsert_rate']:.0f}", f"{r['raw_rate']:.0f}", where], header)
    return 0 if all(r["exact"] for r in results) else 1


def kill_main(args, env: dict, settings: Settings, s3) -> int:
    from bench.harness import machine

    r = kill_plan(args.kill_plan, env, settings, s3, args.put_workers, args.slice, args.kill_at)
    print(json.dumps(r))
    where = machine() + (f", {args.note}" if args.note else "")
    k, res = r["killed"], r["resumed"]
    failed = [name for name, ok in r["checks"].items() if not ok]
    verdict = "exact" if r["exact"] else "NOT exact: " + ", ".join(failed)
    print(f"N={r['n']}: killed in step {k['step']} ({k['listed']} listed at its checkpoint, "
          f"{k['uncommitted_batches']} batches of the slice enqueued, not committed); "
          f"the resumed worker ran {res['steps']} steps to listed {res['listed']}, new {res['new']}; "
          f"{r['batches']} batches ({r['enqueued']} enqueues incl. the re-listed slice): {verdict}")
    if args.record:
        header = ("\n## bench/scale.py --kill-plan — plan worker SIGKILLed mid-listing, resumed\n\n"
                  "An ingest job of N new objects in SeaweedFS, planned in slices by a plan-worker process "
                  "that is SIGKILLed once the job shows the given share listed; a fresh plan worker resumes "
                  "at the job's checkpointed step. Batches are recorded (batch number -> URIs) instead of "
                  "sent to Celery. exact = listed = new = N, every URI in exactly one batch, re-planned "
                  "batches identical, epoch unchanged.\n\n"
                  "| date | command | N | slice | killed | resumed: steps, listed, new | "
                  "batches (enqueues) | result | machine |\n|---|---|---|---|---|---|---|---|---|\n")
        record_row("## bench/scale.py --kill-plan", [
            r["n"], r["slice"],
            f"in step {k['step']}: {k['listed']} checkpointed, {k['uncommitted_batches']} batches uncommitted",
            f"{res['steps']}, {res['listed']}, {res['new']}",
            f"{r['batches']} ({r['enqueued']})", verdict, where], header)
    return 0 if r["exact"] else 1


if __name__ == "__main__":
    sys.exit(main())
