"""Fixtures for distributed ingest: a dedicated Redis, real Celery worker subprocesses.

Workers run ``python -m imgsearch worker`` (the operator's command) in their own process
group, with settings passed as ``IMGSEARCH_*`` environment variables exactly as an
operator would, and are killed (whole group) at teardown.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.settings import PREFIX, Settings
from tests.servers import imgsearch_env

ROOT = Path(__file__).resolve().parents[2]


def png_bytes(seed: int, size: int = 48) -> bytes:
    """A distinct small picture per seed (blocks of colour plus noise)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)
    img = np.kron(base, np.ones((size // 4, size // 4, 1), dtype=np.uint8))
    img = np.clip(img.astype(int) + rng.integers(-20, 20, img.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def dist_redis():
    """A Redis of our own with AOF on: queues and job state survive its restart."""
    from tests.servers import RedisServer

    with RedisServer(appendonly=True) as server:
        yield server


@pytest.fixture(scope="session")
def warm_model(model_cache):
    """Assemble the reference checkpoint once, before worker processes race to do it."""
    from common.models.clip import load_clip

    settings = Settings.from_env({}, clip_model="imgsearch-fmnist-lit-minilm",
                                 data_dir=model_cache / "warm", model_cache_dir=str(model_cache))
    return load_clip(settings.clip_model, settings.clip_pretrained, settings)


@pytest.fixture
def dist(tmp_path, model_cache, warm_model, dist_redis, milvus_server, s3_server):
    """Environment, settings and worker control for one distributed test."""
    cluster = Cluster(tmp_path, model_cache, dist_redis, milvus_server, s3_server)
    yield cluster
    cluster.stop_all()
    from common.store import close_clients

    close_clients()


class Cluster:
    """Env + settings shared by the test process, the CLI and worker subprocesses."""

    def __init__(self, tmp_path: Path, model_cache: Path, redis, milvus, s3):
        self.tmp = tmp_path
        self.redis = redis
        self.s3 = s3
        self.collection = "t" + uuid.uuid4().hex[:10]
        self.bucket = "b" + uuid.uuid4().hex[:10]
        self.vars = {
            "REDIS_URL": redis.url, "MILVUS_URI": milvus.uri, "COLLECTION": self.collection,
            "DATA_DIR": str(tmp_path / "data"), "MODEL_CACHE_DIR": str(model_cache),
            "S3_ENDPOINT_URL": s3.endpoint_url, "S3_REGION": s3.region,
            "S3_ACCESS_KEY": s3.access_key, "S3_SECRET_KEY": s3.secret_key,
            "BATCH_SIZE": "16", "BATCHES_PER_TASK": "2", "DEVICE": "cpu", "LOG_LEVEL": "INFO",
            "CLIP_MODEL": "imgsearch-fmnist-lit-minilm",
        }
        self.workers: list[tuple[subprocess.Popen, Path]] = []
        s3.client().create_bucket(Bucket=self.bucket)

    def set(self, **values) -> None:
        self.vars.update({k.upper(): str(v) for k, v in values.items()})

    @property
    def env(self) -> dict[str, str]:
        return imgsearch_env(self.vars)

    @property
    def settings(self) -> Settings:
        return Settings.from_env({PREFIX + k: v for k, v in self.vars.items()})

    def store(self):
        """An ImageStore on a fresh Milvus connection: pymilvus' idle keepalive pings make the
        milvus-lite server drop idle channels ("Too many pings"), and tests idle while waiting."""
        from common.store import ImageStore, close_clients

        for attempt in range(6):
            close_clients()
            try:
                store = ImageStore(self.settings)
                store.count()  # the first RPC may still meet the dropped connection
                return store
            except Exception:
                if attempt == 5:
                    raise
                time.sleep(1.0)
        raise AssertionError("unreachable")

    def put(self, key: str, body: bytes) -> str:
        self.s3.client().put_object(Bucket=self.bucket, Key=key, Body=body)
        return f"s3://{self.bucket}/{key}"

    def start_worker(self, queues: str, name: str = "") -> subprocess.Popen:
        log = self.tmp / f"worker-{name or queues.replace(',', '-')}-{len(self.workers)}.log"
        fh = open(log, "wb")
        proc = subprocess.Popen([sys.executable, "-m", "imgsearch", "worker", "--queues", queues,
                                 "--concurrency", "1"], env=self.env, cwd=ROOT, stdin=subprocess.DEVNULL,
                                stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        fh.close()
        self.workers.append((proc, log))
        return proc

    def kill_worker(self, proc: subprocess.Popen) -> None:
        """SIGKILL the worker's whole process group (main process and pool children)."""
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def freeze(self, proc: subprocess.Popen) -> None:
        """SIGSTOP the worker's whole group: it holds what it holds and acknowledges nothing."""
        os.killpg(proc.pid, signal.SIGSTOP)

    def thaw(self, proc: subprocess.Popen) -> None:
        os.killpg(proc.pid, signal.SIGCONT)

    def stop_all(self) -> None:
        for proc, _ in self.workers:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGCONT)  # a frozen worker cannot act on SIGTERM
                    os.killpg(proc.pid, signal.SIGTERM)
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(10)
                except ProcessLookupError:
                    pass
            # pool children left behind by a killed parent share the group id
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def logs(self) -> str:
        return "\n".join(f"--- {log.name} ---\n{log.read_text(errors='replace')[-3000:]}"
                         for _, log in self.workers)

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "imgsearch", *args], env=self.env, cwd=ROOT,
                              capture_output=True, text=True, timeout=timeout)

    def jobs(self):
        from common.jobs import JobStore

        return JobStore.from_url(self.redis.url)

    def wait_for(self, predicate, timeout: float, what: str, interval: float = 0.2):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{self.logs()}")
