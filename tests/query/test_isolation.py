"""One bad request never fails another: 15 good requests batched with hostile neighbours get
exactly the answers they get batched alone, on every path (hybrid, clip-only, image, like,
ops), and every neighbour gets its own typed error. Real worker, Redis, Milvus Lite server.
"""

from __future__ import annotations

import pytest
import redis

from query.search import SearchService
from tests.query.hostile import add_as_one_batch, b64, entry, huge_png, op_doc, replies, search_doc

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def good_requests(samples_dir, ids: list[int]) -> list[dict]:
    bag, coat = (sorted((samples_dir / c).glob("*.png"))[0].read_bytes() for c in ("bag", "coat"))
    clip = {"channels": ["clip"]}
    return [
        search_doc({"text": "a sneaker"}),                                    # hybrid (default channels)
        search_doc({"text": "a warm winter coat"}),
        search_doc({"text": "blue jeans"}, filters=[{"field": "width", "op": ">=", "value": 1}]),
        search_doc({"text": "warm clothes"}, must=["coat"]),
        search_doc({"text": "a summer dress"}, channels=["bm25", "dense"]),
        search_doc({"image": b64(bag)}),                                      # image, hybrid (phash, OCR)
        search_doc({"image": b64(coat)}, channels=["clip", "phash"]),
        search_doc({"like": ids[0]}),                                         # like, hybrid
        search_doc({"like": ids[1]}, channels=["phash", "clip"]),
        search_doc({"text": "a leather handbag"}, **clip),                    # clip-only path
        search_doc({"image": b64(bag)}, **clip),
        search_doc({"like": ids[2]}, **clip),
        search_doc({"text": "sandals"}, k=3, **clip),
        op_doc("stats"),                                                      # ops
        op_doc("rows", ids=ids[:3]),
    ]


def bad_neighbours() -> list[tuple[dict, str]]:
    """(entry, expected error code): what once failed whole batches, and more."""
    return [
        (entry(search_doc({"like": 2**70})), "bad_request"),                  # out-of-range id
        (entry(search_doc({"like": 2**70}, channels=["clip"])), "bad_request"),
        (entry(search_doc({"like": -1})), "bad_request"),
        (entry(search_doc({"like": 4242})), "not_found"),                     # in range, not indexed
        (entry(search_doc({"text": "a \ud800 coat"})), "bad_request"),        # lone surrogates
        (entry(search_doc({"text": "x"}, filters=[{"field": "uri", "op": "==", "value": "\udc80"}])), "bad_request"),
        (entry(search_doc({"like": "s3://b/\udcff.png"})), "bad_request"),
        (entry(search_doc({"text": "x"}, must=["\ud83d"])), "bad_request"),
        (entry(search_doc({"image": b64(b"<html>not an image</html>")})), "bad_request"),
        (entry(search_doc({"image": b64(huge_png())})), "too_large"),          # 100 MP bomb
        (entry(search_doc({"image_uri": "s3://not-allowed/q.png"})), "not_found"),
        (entry(search_doc({"text": "x"}, k="10")), "bad_request"),
        (entry('{"v": 1, "id": "broken-json", "query": '), "bad_request"),
        (entry(op_doc("rows", ids=[2**64])), "bad_request"),
    ]


def test_bad_neighbours_never_change_good_answers(queue_settings, start_worker, samples_dir):
    start_worker(queue_settings)
    service = SearchService(queue_settings)
    rows = service.store.client.query(service.store.alias, filter="id >= 0", output_fields=["id"], limit=3)
    goods = good_requests(samples_dir, sorted(int(r["id"]) for r in rows))
    r = redis.Redis.from_url(queue_settings.redis_url)
    stream = queue_settings.query_stream

    alone_entries = [entry(d) for d in goods]
    add_as_one_batch(r, stream, alone_entries)
    alone = replies(r, stream, alone_entries)
    assert all(a["ok"] for a in alone.values()), [a for a in alone.values() if not a["ok"]]

    # The same 15 again, with new ids, in ONE batch with every bad neighbour.
    again = [dict(d, id=d["id"] + "-again") for d in goods]
    bad = bad_neighbours()
    mixed = [entry(d) for d in again]
    mixed[7:7] = [e for e, _ in bad]  # neighbours in the middle of the batch
    add_as_one_batch(r, stream, mixed)
    got = replies(r, stream, mixed)

    searches = sum("req" in e for e in alone_entries)
    for before, doc in zip(goods, again):
        a, b = alone[before["id"]], got[doc["id"]]
        assert b["ok"], (doc, b)
        if "hits" in a:
            assert b["batch"] > searches, "the neighbours were not in the same batch"
            assert [(h["id"], round(h["score"], 5)) for h in b["hits"]] == [
                (h["id"], round(h["score"], 5)) for h in a["hits"]], doc["query"]
        else:
            assert b["result"] == a["result"]
    for fields, code in bad:
        reply = got[fields["id"]]
        assert reply["ok"] is False and reply["error"]["code"] == code, (fields, reply)
    assert r.xlen(stream) == 0
