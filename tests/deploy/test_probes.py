"""The pods' exec probes against real workers: `python -m imgsearch.probe worker` follows a real
Celery worker's heartbeat file (ingest/health.py), `... query-worker` a query worker's
heartbeat in a real Redis. Each probe is run as the kubelet runs it: a subprocess, judged by
its exit code."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common.settings import Settings
from tests.servers import imgsearch_env

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def probe(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "imgsearch.probe", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def mtime(path: Path) -> float:
    """The file's mtime, 0 while it does not exist (the worker replaces it atomically)."""
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def wait_for(condition, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    tail = (lambda: log.read_text()[-3000:]) if log else (lambda: "")
    while not condition():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"worker exited with {proc.returncode} before {what}:\n{tail()}")
        if time.monotonic() > deadline:
            pytest.fail(f"not seen within {timeout:g}s: {what}\n{tail()}")
        time.sleep(0.1)


@pytest.fixture
def own_redis():
    """A Redis of this test's own: it is stopped and started again mid-test."""
    from tests.servers import RedisServer

    with RedisServer() as server:
        yield server


def test_worker_probe_follows_the_heartbeat_a_real_celery_worker_writes(own_redis, tmp_path):
    from ingest.health import HEARTBEAT_EVERY_S

    redis_server = own_redis

    heartbeat = tmp_path / "run" / "heartbeat"
    env = imgsearch_env({"REDIS_URL": redis_server.url, "MILVUS_URI": "http://127.0.0.1:9",  # never contacted
                         "DATA_DIR": str(tmp_path / "data"), "WORKER_HEARTBEAT_FILE": str(heartbeat)})
    heartbeat.parent.mkdir()
    heartbeat.write_text("left by a previous container\n")
    os.utime(heartbeat, (time.time() - 3600, time.time() - 3600))
    stale = probe(env, "worker", "--max-age", "60")
    assert stale.returncode == 1 and "old" in stale.stderr, stale.stderr

    log = tmp_path / "worker.log"
    started = time.time()
    with open(log, "wb") as fh:  # a queue whose worker loads no model: the heartbeat is what is under test
        worker = subprocess.Popen([sys.executable, "-m", "imgsearch", "worker", "--queues", "finish"], env=env,
                                  cwd=ROOT, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        wait_for(lambda: mtime(heartbeat) >= started, 120,
                 "the first heartbeat of the new worker", worker, log)
        alive = probe(env, "worker", "--max-age", "60")
        assert alive.returncode == 0, alive.stderr
        first = mtime(heartbeat)
        wait_for(lambda: mtime(heartbeat) > first, 6 * HEARTBEAT_EVERY_S,
                 "the heartbeat rewritten on the worker's timer", worker, log)
        redis_server.kill()  # the broker goes away: the consumer stops, and so does its heartbeat
        wait_for(lambda: not heartbeat.exists(), 60, "the heartbeat removed while the broker is gone", worker, log)
        lost = probe(env, "worker")
        assert lost.returncode == 1 and "no heartbeat file" in lost.stderr, lost.stderr
        redis_server.start()  # same port: the worker reconnects and beats again
        wait_for(lambda: heartbeat.exists(), 120, "the heartbeat back after the reconnect", worker, log)
        assert probe(env, "worker").returncode == 0
        os.killpg(worker.pid, signal.SIGTERM)  # what the kubelet sends: Celery's warm shutdown
        assert worker.wait(60) == 0
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(10)
    assert not heartbeat.exists(), "a stopped consumer leaves no heartbeat behind"
    gone = probe(env, "worker")
    assert gone.returncode == 1 and "no heartbeat file" in gone.stderr, gone.stderr


def test_worker_probe_without_a_heartbeat_setting_says_so(tmp_path):
    result = probe(imgsearch_env({"DATA_DIR": str(tmp_path)}), "worker")
    assert result.returncode == 1 and "IMGSEARCH_WORKER_HEARTBEAT_FILE is not set" in result.stderr


def test_query_worker_probe_reads_the_heartbeat_the_worker_writes(redis_server, tmp_path):
    from imgsearch.probe import query_heartbeat_key
    from query.protocol import heartbeat_key
    from query.worker import QueryWorker

    stream = "probe-test:query"
    assert query_heartbeat_key(stream) == heartbeat_key(stream)
    env = imgsearch_env({"REDIS_URL": redis_server.url, "QUERY_STREAM": stream, "DATA_DIR": str(tmp_path)})
    settings = Settings.from_env({f"IMGSEARCH_{k}": v for k, v in
                                  {"REDIS_URL": redis_server.url, "QUERY_STREAM": stream}.items()})
    missing = probe(env, "query-worker", "--name", "pod-a")
    assert missing.returncode == 1 and "no heartbeat" in missing.stderr

    worker = QueryWorker(settings, name="pod-a")
    worker._heartbeat(force=True)  # the worker's own heartbeat write (each second while it serves)
    beat_at = time.time()
    fresh = probe(env, "query-worker", "--name", "pod-a", "--max-age", "30")
    assert fresh.returncode == 0, fresh.stderr
    wait_for(lambda: time.time() - beat_at > 0.5, 5, "half a second without a heartbeat")
    late = probe(env, "query-worker", "--name", "pod-a", "--max-age", "0.2")
    assert late.returncode == 1 and "old" in late.stderr, late.stderr
    other = probe(env, "query-worker", "--name", "pod-b")
    assert other.returncode == 1, "a pod never passes on another pod's heartbeat"
    worker.redis.close()

    down = probe(imgsearch_env({"REDIS_URL": "redis://:pw@127.0.0.1:9/0", "DATA_DIR": str(tmp_path)}),
                 "query-worker", "--name", "pod-a")
    assert down.returncode == 1 and "redis unavailable" in down.stderr and "pw" not in down.stderr
