"""Exec probes for Kubernetes (or any supervisor): is this worker alive and serving?

    python -m imgsearch.probe worker [--max-age S]
        a Celery ingest worker: its heartbeat file (IMGSEARCH_WORKER_HEARTBEAT_FILE, written
        by ingest/health.py while the consumer runs) is at most S seconds old
    python -m imgsearch.probe query-worker [--name NAME] [--max-age S]
        a query worker: its Redis heartbeat (the sorted set the gateway's /readyz reads) is at
        most S seconds old; NAME is the worker's consumer name (default: this host's name,
        which in a pod is the pod name the Deployment passes as `query-worker --name`)

Exit 0: healthy. Exit 1: not, with one line on stderr saying why (kubelet shows it in the
pod's events). Cheap on purpose: no model, no Milvus, no Celery app, so it can run every few
seconds. Redis credentials never appear in the output.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from pathlib import Path

EXIT_OK, EXIT_UNHEALTHY, EXIT_USAGE = 0, 1, 2


def query_heartbeat_key(stream: str) -> str:
    """The query workers' heartbeat set; equal to ``query.protocol.heartbeat_key`` (a test
    keeps them equal) without importing the query stack into a probe."""
    return f"{stream}:workers"


def check_worker(settings, max_age: float) -> str | None:
    """None when the Celery worker's heartbeat file is fresh, else the reason."""
    from ingest.health import heartbeat_age

    if not settings.worker_heartbeat_file:
        return "IMGSEARCH_WORKER_HEARTBEAT_FILE is not set: the worker writes no heartbeat"
    path = Path(settings.worker_heartbeat_file)
    age = heartbeat_age(path)
    if age is None:
        return f"no heartbeat file at {path} (worker starting, stopping, or not consuming)"
    if age > max_age:
        return f"heartbeat {age:.0f}s old (limit {max_age:g}s): the worker stopped consuming"
    return None


def check_query_worker(settings, name: str, max_age: float) -> str | None:
    """None when the query worker ``name`` sent a heartbeat within ``max_age`` s, else the reason."""
    import redis

    if not settings.redis_url:
        return "IMGSEARCH_REDIS_URL is not set"
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=3, socket_connect_timeout=3)
    try:
        score = client.zscore(query_heartbeat_key(settings.query_stream), name)
    except redis.RedisError as exc:
        return f"redis unavailable: {type(exc).__name__}"
    finally:
        client.close()
    if score is None:
        return f"query worker {name!r} has no heartbeat (starting: the model loads before the first one)"
    age = time.time() - score / 1000
    if age > max_age:
        return f"query worker {name!r}: heartbeat {age:.0f}s old (limit {max_age:g}s)"
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m imgsearch.probe", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="kind", required=True, metavar="KIND")
    w = sub.add_parser("worker", help="Celery ingest worker: heartbeat file age")
    w.add_argument("--max-age", type=float, default=60.0, help="seconds (default 60)")
    q = sub.add_parser("query-worker", help="query worker: Redis heartbeat age")
    q.add_argument("--name", default="", help="consumer name (default: this host's name)")
    q.add_argument("--max-age", type=float, default=30.0, help="seconds (default 30)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from common.errors import ConfigError
    from common.settings import Settings

    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"imgsearch probe: {exc}", file=sys.stderr)
        return EXIT_UNHEALTHY
    if args.kind == "worker":
        problem = check_worker(settings, args.max_age)
    else:
        problem = check_query_worker(settings, args.name or socket.gethostname(), args.max_age)
    if problem:
        print(f"imgsearch probe: {args.kind}: {problem}", file=sys.stderr)
        return EXIT_UNHEALTHY
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
