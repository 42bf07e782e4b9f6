"""Hybrid channels through Redis and a real query worker: same fused answers as in-process
(also when batched), evidence in replies, must-words, and clear errors for bad channels."""

from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from query.client import BadRequest, SearchClient
from query.protocol import SCHEMA_VERSION, now_ms, reply_key
from query.search import SearchService

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def approx_evidence(evidence: dict) -> dict:
    """Evidence with scores to 4 decimals and no ranks: two processes may differ in a float's
    last digit, and so order a channel's exactly tied hits (images sharing a tag) differently."""
    return {name: {**{k: v for k, v in ev.items() if k != "rank"}, "score": round(ev["score"], 4)}
            for name, ev in evidence.items()}


def test_hybrid_requests_match_the_in_process_service(queue_settings, start_worker, samples_dir):
    start_worker(queue_settings)
    service = SearchService(queue_settings)
    client = SearchClient(settings=queue_settings)
    image = sorted((samples_dir / "bag").glob("*.png"))[0].read_bytes()
    calls = [dict(text="a sneaker"), dict(text="a sneaker", channels=["bm25", "dense"]),
             dict(text="warm clothes", must=["coat"]), dict(image=image), dict(image=image, channels=["phash"])]

    def same(kwargs, got):
        expected = service.search(k=5, **kwargs)
        assert [h.id for h in got.hits] == [h.id for h in expected], kwargs
        assert [approx_evidence(h.evidence) for h in got.hits] == [approx_evidence(h.evidence) for h in expected]

    for kwargs in calls:
        same(kwargs, client.search(k=5, **kwargs))
    default = client.search(text="a sneaker", k=5).hits
    assert {"clip", "bm25"} <= set(default[0].evidence) and default[0].evidence["bm25"]["kind"] == "tag"
    itself = client.search(image=image, k=1).hits[0]
    assert itself.evidence["phash"] == {"rank": 1, "score": 64.0, "tier": True} and itself.evidence["clip"]["rank"] == 1
    assert all(any(r["text"] == "coat" for r in service.texts.rows_of(h.id))
               for h in client.search(text="warm clothes", must=["coat"], k=10).hits)

    with ThreadPoolExecutor(10) as pool:  # batched together by the worker: answers do not change
        results = list(pool.map(lambda kw: client.search(k=5, **kw), calls * 2))
    for kwargs, got in zip(calls * 2, results):
        same(kwargs, got)
    assert max(r.batch for r in results) > 1, "concurrent hybrid requests were never batched"
    with pytest.raises(BadRequest, match="unknown channels"):
        client.search(text="a coat", channels=["bm42"])
    client.close()


def test_bad_channels_and_must_get_error_replies(queue_settings, start_worker):
    start_worker(queue_settings)
    r = redis.Redis.from_url(queue_settings.redis_url)
    stream = queue_settings.query_stream
    cases = {"unknown": ({"channels": ["clip", "bm42"]}, "unknown channels ['bm42']"),
             "phash_text": ({"channels": ["phash"]}, "phash channel needs an image query"),
             "must_type": ({"must": "coat"}, "must takes a list"),
             "empty": ({"channels": []}, "non-empty list")}
    for name, (extra, _) in cases.items():
        doc = {"v": SCHEMA_VERSION, "id": f"{name}-{uuid.uuid4().hex[:6]}", "deadline": now_ms() + 30_000,
               "query": {"text": "a coat"}, "k": 3, **extra}
        cases[name] = (doc["id"], cases[name][1])
        r.xadd(stream, {"id": doc["id"], "req": json.dumps(doc)})
    for name, (request_id, message) in cases.items():
        popped = r.blpop([reply_key(stream, request_id)], timeout=60)
        assert popped is not None, name
        reply = json.loads(popped[1])
        assert reply["ok"] is False and reply["error"]["code"] == "bad_request", reply
        assert message in reply["error"]["message"], (name, reply)


def test_a_ready_worker_loads_nothing_more_for_any_channel(queue_settings, start_worker, samples_dir):
    """Warm-up covers every channel the worker serves: once it is ready, the first answers on
    every channel and query kind (a sign's OCR included) load no model; the first answer is
    as fast as the tenth."""
    from tests.text_images import png, text_image

    settings = queue_settings.with_overrides(log_level="INFO")
    worker = start_worker(settings)
    before = worker.log_path.read_text(errors="replace")
    assert before.count("model loaded") >= 3, before[-3000:]  # clip, the text model, OCR
    service = SearchService(settings)
    some_id = int(service.store.client.query(service.store.alias, filter="id >= 0", output_fields=["id"],
                                             limit=1)[0]["id"])
    client = SearchClient(settings=settings)
    sign = png(text_image(["SERIAL XK-4471-B", "made in Germany"]))
    small = sorted((samples_dir / "bag").glob("*.png"))[0].read_bytes()
    for kwargs in (dict(text="a sneaker"), dict(image=sign), dict(image=small), dict(like=some_id),
                   dict(text="a coat", channels=["dense"]), dict(image=sign, channels=["bm25"])):
        assert client.search(k=3, **kwargs).hits is not None
    client.close()
    after = worker.log_path.read_text(errors="replace")
    assert after.count("model loaded") == before.count("model loaded"), after[len(before):][-3000:]
