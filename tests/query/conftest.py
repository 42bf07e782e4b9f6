"""Fixtures for queue tests: samples indexed into a shared Milvus Lite server, worker subprocesses.

Workers are real ``imgsearch query-worker`` processes (same interpreter, this checkout on
PYTHONPATH); each test gets its own stream name so tests never see each other's requests.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import fields
from pathlib import Path

import pytest
import redis

from common.settings import Settings
from query.protocol import HEARTBEAT_FRESH_MS, heartbeat_key
from tests.servers import imgsearch_env

ROOT = Path(__file__).resolve().parents[2]


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a subprocess read exactly ``settings``."""
    return imgsearch_env({f.name.upper(): str(getattr(settings, f.name)) for f in fields(settings)})


class WorkerProcess:
    """One ``imgsearch query-worker`` subprocess in its own process group."""

    def __init__(self, settings: Settings, name: str, log_dir: Path, *args: str):
        self.settings, self.name = settings, name
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "imgsearch", "query-worker", "--name", name, *args],
                                     cwd=ROOT, env=settings_env(settings), stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def wait_ready(self, timeout: float = 120) -> None:
        """Until the worker's heartbeat appears (it is written only once the model is warm)."""
        client = redis.Redis.from_url(self.settings.redis_url)
        until = time.monotonic() + timeout
        while time.monotonic() < until:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker {self.name} exited {self.proc.returncode}:\n{self.log()}")
            score = client.zscore(heartbeat_key(self.settings.query_stream), self.name)
            if score is not None and score > time.time() * 1000 - HEARTBEAT_FRESH_MS:
                return
            time.sleep(0.1)
        raise AssertionError(f"worker {self.name} not ready after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM the group, SIGKILL if it lingers; returns the exit code."""
        if self.proc.poll() is None:
            self.signal(signal.SIGCONT)
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode


@pytest.fixture(scope="session")
def served_samples(tmp_path_factory, model_cache, samples_dir, milvus_server) -> Settings:
    """The 200 bundled samples ingested into the shared Milvus Lite server (collection qsamples)."""
    from ingest.runner import run_ingest

    settings = Settings.from_env({}, clip_model="imgsearch-fmnist-lit-minilm",
                                 data_dir=tmp_path_factory.mktemp("served"), model_cache_dir=str(model_cache),
                                 milvus_uri=milvus_server.uri, collection="qsamples", batch_size=64)
    summary = run_ingest(str(samples_dir), settings, progress=False)
    assert summary.failed == 0, summary.render()
    return settings


@pytest.fixture
def queue_settings(served_samples, redis_server) -> Settings:
    """Settings for one test: its own stream, a short claim timeout, the shared Redis."""
    return served_samples.with_overrides(redis_url=redis_server.url, query_stream=f"test:{uuid.uuid4().hex[:8]}",
                                         query_claim_timeout_ms=1500, query_timeout_ms=30_000)


@pytest.fixture
def start_worker(tmp_path):
    """Start worker subprocesses; every one is stopped (and its process group reaped) afterwards."""
    started: list[WorkerProcess] = []

    def start(settings: Settings, name: str | None = None, *args: str, ready: bool = True) -> WorkerProcess:
        worker = WorkerProcess(settings, name or f"w{len(started) + 1}", tmp_path, *args)
        started.append(worker)
        if ready:
            worker.wait_ready()
        return worker

    yield start
    for worker in started:
        worker.stop()
