"""Distributed ingest vs raw encoder throughput, side by side in one run on one device.

raw:          preprocessed tensors through the encoder's forward pass (the ceiling).
distributed:  `imgsearch ingest s3://... --wait` semantics against real servers started
              here (redis-server, SeaweedFS S3, milvus-lite server) and two real worker
              processes (`imgsearch worker --queues embed` and `--queues
              ocr,caption,finish,plan`): plan, fetch from S3, decode, preprocess, phash,
              encode, upsert, chain hops, job counters. Timed from submit to job done,
              after a warm-up job (models already loaded, as in a running cluster).
overhead:     Celery/Redis cost of one batch: chains with empty manifests
              (embed | ocr | caption | finish, four queue hops and the counter script),
              wall time / number of chains.

Not a test: nothing here asserts a speed. ``--record`` appends a row to bench/RESULTS.md.

    python bench/ingest.py --images 2048 --record
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


from bench.harness import machine, raw_encoder_rate, smooth_jpeg, stop_cleanly_on_sigterm  # noqa: E402
from bench.results import record_row  # noqa: E402
from common.models.clip import load_clip  # noqa: E402
from common.settings import PREFIX, Settings  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def wait_done(store, job_id: str, timeout: float = 1800) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = store.get(job_id)
        if job.finished:
            return job
        time.sleep(0.05)
    raise TimeoutError(f"job {job_id} not done in {timeout}s")


def run_job(env: dict, settings: Settings, location: str, collection: str):
    """Submit a job the way the CLI does and wait for it; returns (job, seconds)."""
    from common.jobs import JobStore
    from ingest.distributed import submit

    run_settings = settings.with_overrides(collection=collection)
    start = time.perf_counter()
    job_id = submit(location, run_settings)
    job = wait_done(JobStore.from_url(settings.redis_url), job_id)
    seconds = time.perf_counter() - start
    assert job.status == "done" and job.failed == 0 and job.indexed == job.listed, job.to_dict()
    return job, seconds


def embed_split(log_path: Path, job_id: str, wall_s: float) -> dict[str, float]:
    """Where the embed worker's time went in one job, as shares of the job's wall time:
    the encoder's forward passes, waiting for fetch/decode, upserts (from its
    ``embed timing`` log lines)."""
    totals = {"encode_s": 0.0, "prepare_wait_s": 0.0, "upsert_s": 0.0, "task_s": 0.0}
    for line in log_path.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("msg") == "embed timing" and rec.get("job") == job_id:
            for key in totals:
                totals[key] += float(rec.get(key, 0.0))
    return {key.removesuffix("_s"): value / wall_s for key, value in totals.items()}


def chain_overhead(settings: Settings, n: int) -> float:
    """Seconds per batch of pure Celery/Redis work: n chains with empty manifests."""
    from common.jobs import JobStore
    from ingest.dispatch import enqueue_batch
    from ingest.planning import batch_spec

    store = JobStore.from_url(settings.redis_url)
    job_id = store.create("s3://overhead/", settings.collection)
    epoch = store.begin_plan(job_id)
    start = time.perf_counter()
    for b in range(n):
        enqueue_batch(batch_spec(job_id, epoch, b, "s3://overhead/", settings.collection, []))
    store.planned(job_id, epoch, listed=0, unchanged=0, batches=n)
    wait_done(store, job_id)
    return (time.perf_counter() - start) / n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="imgsearch-fmnist-lit-minilm")
    parser.add_argument("--pretrained", default="")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--size", default="320x240", help="JPEG size WxH")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches-per-task", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each; the best counts")
    parser.add_argument("--overhead-batches", type=int, default=50)
    parser.add_argument("--text-stages", action="store_true",
                        help="also run OCR and captions in the chain (bench/stages.py measures them alone); "
                             "off by default, so the pipeline is compared with the encoder it feeds")
    parser.add_argument("--note", default="", help="appended to the machine column (e.g. 'shared')")
    parser.add_argument("--record", action="store_true", help="append the result to bench/RESULTS.md")
    args = parser.parse_args()
    stop_cleanly_on_sigterm()
    w, h = (int(v) for v in args.size.lower().split("x"))

    from tests.servers import MilvusLiteServer, RedisServer, S3Server

    workers: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="imgsearch-bench-") as tmp, RedisServer() as redis, \
            MilvusLiteServer() as milvus, S3Server(Path(tmp) / "s3") as s3:
        tmp_path = Path(tmp)
        values = {"REDIS_URL": redis.url, "MILVUS_URI": milvus.uri, "DATA_DIR": str(tmp_path / "data"),
                  "MODEL_CACHE_DIR": str(tmp_path / "models"), "CLIP_MODEL": args.model,
                  "CLIP_PRETRAINED": args.pretrained, "DEVICE": args.device,
                  "BATCH_SIZE": str(args.batch_size), "BATCHES_PER_TASK": str(args.batches_per_task),
                  "S3_ENDPOINT_URL": s3.endpoint_url, "S3_REGION": s3.region, "S3_ACCESS_KEY": s3.access_key,
                  "S3_SECRET_KEY": s3.secret_key, "COLLECTION": "bench"}
        if not args.text_stages:  # the embed pipeline against the encoder: ocr/caption pass through
            values.update({"OCR_ENABLED": "false", "CAPTION_BACKEND": "off"})
        os.environ.update({PREFIX + k: v for k, v in values.items()})
        settings = Settings.from_env()
        env = {**os.environ, "PYTHONPATH": str(ROOT)}

        client = s3.client()
        client.create_bucket(Bucket="bench")
        images = [smooth_jpeg(i, (w, h)) for i in range(args.images)]
        for i, body in enumerate(images):
            client.put_object(Bucket="bench", Key=f"imgs/{i:06d}.jpg", Body=body)
        for i in range(args.batch_size):
            client.put_object(Bucket="bench", Key=f"warm/{i:06d}.jpg", Body=images[i])

        model = load_clip(args.model, args.pretrained, settings)  # also assembles the checkpoint once
        raw = raw_encoder_rate(model, images, args.batch_size, args.repeats)

        try:
            for queues, level in (("embed", "INFO"), ("ocr,caption,finish,plan", "WARNING")):
                workers.append(subprocess.Popen(
                    [sys.executable, "-m", "imgsearch", "worker", "--queues", queues, "--loglevel", level],
                    env=env, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                    stderr=open(tmp_path / f"worker-{len(workers)}.log", "wb"), start_new_session=True))
            run_job(env, settings, "s3://bench/warm/", "warmup")  # workers up, models loaded
            best, split = 0.0, {}
            for r in range(args.repeats):
                job, seconds = run_job(env, settings, "s3://bench/imgs/", f"bench{r}")
                if job.indexed / seconds > best:
                    best = job.indexed / seconds
                    split = embed_split(tmp_path / "worker-0.log", job.id, seconds)
            overhead = chain_overhead(settings.with_overrides(collection="warmup"), args.overhead_batches)
        finally:
            for proc in workers:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGTERM)
                    try:
                        proc.wait(30)
                    except subprocess.TimeoutExpired:
                        os.killpg(proc.pid, signal.SIGKILL)
                        proc.wait()
            from common.store import close_clients

            close_clients()

    ratio = best / raw
    where = machine() + (f", {args.note}" if args.note else "")
    print(f"model        {model.spec.label()} on {model.device}")
    print(f"machine      {where}")
    print(f"images       {args.images} JPEG {w}x{h} in S3, batch {args.batch_size} x {args.batches_per_task}"
          f" per task, best of {args.repeats}")
    print(f"raw encoder  {raw:9.1f} images/s")
    print(f"distributed  {best:9.1f} images/s  (2 workers: embed + ocr,caption,finish,plan)")
    print(f"ratio        {ratio:9.2f}")
    print(f"overhead     {overhead * 1000:9.1f} ms per batch (empty chain: 4 queue hops + counters)")
    print("embed worker share of the best job's wall time: " + ", ".join(
        f"{name} {share:.0%}" for name, share in split.items()) + " (task = inside embed tasks)")
    if args.record:
        header = ("\n## bench/ingest.py — distributed ingest vs raw encoder\n\n"
                  "raw = forward pass over preprocessed batches in the bench process; distributed = "
                  "S3 -> 2 Celery workers -> milvus-lite server, submit to job done (after a warm-up "
                  "job); overhead = wall time per empty `embed | ocr | caption | finish` chain.\n\n"
                  "| date | command | model | device | images | raw img/s | distributed img/s | "
                  "distributed/raw | Celery+Redis ms/batch | machine |\n|---|---|---|---|---|---|---|---|---|---|\n")
        inputs = (f"{args.images} x {w}x{h} JPEG, batch {args.batch_size}x{args.batches_per_task}"
                  + (", with OCR + captions" if args.text_stages else ""))
        record_row("## bench/ingest.py", [model.spec.name, model.device, inputs, f"{raw:.1f}", f"{best:.1f}",
                                          f"{ratio:.2f}", f"{overhead * 1000:.1f}", where], header)
        print(f"recorded in {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
