"""Distributed CLI errors are clear and exit 1; nothing here needs a worker or a model."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.ingest.conftest import ROOT

pytestmark = pytest.mark.integration


def cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("IMGSEARCH_")}
    return subprocess.run([sys.executable, "-m", "imgsearch", *args], env={**base, "PYTHONPATH": str(ROOT), **env},
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_distributed_commands_need_redis():
    for args in (["jobs", "list"], ["dead-letters", "list", "abc"], ["worker"]):
        proc = cli(*args)
        assert proc.returncode == 1 and "needs IMGSEARCH_REDIS_URL" in proc.stderr, args


def test_unknown_job_bad_queue_and_bad_source_are_clear(redis_server, tmp_path):
    env = {"IMGSEARCH_REDIS_URL": redis_server.url, "IMGSEARCH_DATA_DIR": str(tmp_path)}
    status = cli("jobs", "status", "nope", **env)
    assert status.returncode == 1 and "no ingest job 'nope'" in status.stderr and "Traceback" not in status.stderr
    worker = cli("worker", "--queues", "embed,gpu", **env)
    assert worker.returncode == 1 and "unknown queue(s) ['gpu']" in worker.stderr
    missing = cli("ingest", str(tmp_path / "nope"), "--wait", **env)
    assert missing.returncode == 1 and "folder not found" in missing.stderr
    assert cli("jobs", "list", **env).returncode == 0
