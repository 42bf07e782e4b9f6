"""Protocol v1: strict parsing, clear messages, round trips between client and worker sides."""

from __future__ import annotations

import base64
import json

import pytest

from common.store import Hit
from query.client import BadRequest, build_request
from query.protocol import SCHEMA_VERSION, ProtocolError, Reply, now_ms, parse_reply, parse_request

LIMIT = 1000


def doc(**overrides) -> dict:
    base = {"v": SCHEMA_VERSION, "id": "abc123", "deadline": now_ms() + 5000, "query": {"text": "a red shoe"},
            "k": 5, "filters": [], "channels": ["clip"]}
    base.update(overrides)
    return base


def parse(d) -> object:
    return parse_request(json.dumps(d) if not isinstance(d, str | bytes) else d, LIMIT)


def test_client_request_round_trips_through_the_worker_parser():
    for query in ({"text": "boots"}, {"image": b"\x89PNG..."}, {"like": 42}, {"like": "s3://b/k.png"},
                  {"image": "s3://bucket/q.jpg"}):
        req = build_request(k=7, filters=[{"field": "width", "op": ">=", "value": 28}], timeout_s=3, **query)
        back = parse_request(req.to_json(), LIMIT)
        assert (back.id, back.kind, back.k, back.deadline) == (req.id, req.kind, 7, req.deadline)
        assert (back.text, back.image, back.image_uri, back.like) == (req.text, req.image, req.image_uri, req.like)
        assert back.filter_expr == "(width >= 28)"


@pytest.mark.parametrize("raw, fragment", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "must be a JSON object"),
    (doc(extra=1), "unknown request fields: extra"),
    (doc(v=2), "unsupported schema version 2"),
    (doc(id="bad id with spaces"), "id must be"),
    (doc(deadline="soon"), "deadline must be"),
    (doc(k=0), "k must be an integer from 1 to 1000"),
    (doc(k=True), "k must be an integer"),
    (doc(channels=["bm42"]), "unknown channels"),
    (doc(channels=[]), "channels must be a non-empty list"),
    (doc(channels="clip"), "channels must be a non-empty list"),
    (doc(channels=["phash"]), "phash channel needs an image query"),
    (doc(must="word"), "must takes a list"),
    (doc(must=[""]), "must takes a list"),
    (doc(must=["--"]), "at least one letter or digit"),
    (doc(query={"text": "a", "like": 1}), "exactly one of"),
    (doc(query={"sql": "drop"}), "unknown query kind 'sql'"),
    (doc(query={"text": "   "}), "non-empty string"),
    (doc(query={"image": "!!notbase64!!"}), "not valid base64"),
    (doc(query={"image_uri": "file:///etc/passwd"}), "s3:// URI"),
    (doc(query={"like": "not-a-uri"}), "URI of an indexed image"),
    (doc(filters=[{"field": "model", "op": "==", "value": "x"}]), "unknown filter field 'model'"),
    (doc(filters={"field": "uri"}), "filters must be a list"),
])
def test_malformed_requests_are_refused_with_a_clear_message(raw, fragment):
    with pytest.raises(ProtocolError, match=fragment) as info:
        parse(raw)
    assert info.value.code == "bad_request"


def test_oversized_image_is_refused_as_too_large():
    with pytest.raises(ProtocolError, match="larger than the limit") as info:
        parse(doc(query={"image": base64.b64encode(b"x" * (LIMIT + 1)).decode()}))
    assert info.value.code == "too_large"


def test_image_at_the_limit_is_accepted():
    req = parse(doc(query={"image": base64.b64encode(b"x" * LIMIT).decode()}))
    assert req.image == b"x" * LIMIT


def test_deadline_decides_expiry():
    assert parse(doc(deadline=now_ms() - 1)).expired()
    assert not parse(doc(deadline=now_ms() + 60_000)).expired()


def test_replies_round_trip_and_broken_replies_are_server_errors():
    ok = parse_reply(Reply("r1", True, [Hit(5, "s3://b/x.png", 0.25)], worker="w", batch=3).to_json())
    assert ok.ok and ok.hits == [Hit(5, "s3://b/x.png", 0.25)] and ok.batch == 3 and ok.worker == "w"
    err = parse_reply(Reply.error("r2", "not_found", "no such image").to_json())
    assert (err.ok, err.error_code, err.error_message) == (False, "not_found", "no such image")
    with pytest.raises(ProtocolError) as info:
        parse_reply(b'{"v": 1, "id": "x"}')
    assert info.value.code == "server_error"


@pytest.mark.parametrize("kwargs, fragment", [
    ({}, "exactly one of text, image, like"),
    ({"text": "a", "like": 3}, "exactly one of"),
    ({"image": "/etc/passwd"}, "the client never reads files"),
    ({"text": "a", "filters": [{"field": "uri", "op": "like", "value": "%"}]}, "operator 'like' is not allowed"),
])
def test_client_refuses_bad_calls_before_sending(kwargs, fragment):
    with pytest.raises(BadRequest, match=fragment):
        build_request(**kwargs)


def test_channels_and_must_round_trip_and_default_to_the_query_kind():
    req = build_request(text="XK-4471", channels=["bm25", "dense"], must=["XK"], timeout_s=3)
    back = parse_request(req.to_json(), LIMIT)
    assert (back.channels, back.must, back.plain_clip) == (("bm25", "dense"), ("XK",), False)
    assert parse(doc()).plain_clip  # channels ["clip"], no must: the plain CLIP path
    without = doc()
    del without["channels"]
    assert parse(without).channels is None  # the worker uses the query kind's defaults
    img = build_request(image=b"\x89PNG...", channels=["phash", "clip"], timeout_s=3)
    assert parse_request(img.to_json(), LIMIT).channels == ("phash", "clip")


@pytest.mark.parametrize("kwargs, fragment", [
    ({"text": "a", "channels": ["nope"]}, "unknown channels"),
    ({"text": "a", "channels": ["phash"]}, "needs an image query"),
    ({"text": "a", "must": ["  "]}, "must takes a list"),
])
def test_client_refuses_bad_channels_and_must(kwargs, fragment):
    with pytest.raises(BadRequest, match=fragment):
        build_request(**kwargs)


def test_reply_hits_carry_their_evidence():
    from query.fusion import FusedHit

    hit = FusedHit(7, "s3://b/sign.png", 0.032, {"bm25": {"rank": 1, "score": 4.1, "text": "XK-4471", "kind": "ocr"},
                                                 "clip": {"rank": 3, "score": 0.21}})
    back = parse_reply(Reply("r3", True, [hit]).to_json())
    assert back.hits == [FusedHit(7, "s3://b/sign.png", 0.032, hit.evidence)]


@pytest.mark.parametrize("overrides, fragment", [
    ({"query": {"text": "a red \ud800 shoe"}}, "lone surrogate"),
    ({"query": {"like": "s3://b/\udcff.png"}}, "lone surrogate"),
    ({"filters": [{"field": "uri", "op": "==", "value": "\udc80"}]}, "lone surrogate"),
    ({"must": ["ok", "\ud83d"]}, "lone surrogate"),
    ({"query": {"like": 2**63}}, "query.like must be an integer from 1 to"),
    ({"query": {"like": 0}}, "query.like must be an integer from 1 to"),
    ({"query": {"like": -5}}, "query.like must be an integer from 1 to"),
    ({"query": {"like": True}}, "indexed image id"),
    ({"query": {"like": 1.5}}, "indexed image id"),
    ({"k": "10"}, "k must be an integer"),
    ({"k": 10.0}, "k must be an integer"),
    ({"v": 1.0}, "unsupported schema version"),
    ({"v": True}, "unsupported schema version"),
    ({"deadline": 2**80}, "deadline must be"),
    ({"query": {"image_uri": "s3://../etc/passwd"}}, "valid bucket name"),
    ({"query": {"image_uri": "s3://bucket"}}, "valid bucket name and a key"),
    ({"query": {"image_uri": "/proc/self/environ"}}, "s3:// URI"),
    ({"filters": [{"field": "width", "op": ">", "value": 2**64}]}, "64-bit integers"),
    ({"filters": [{"field": "width", "op": ">", "value": True}]}, "64-bit integers"),
    ({"channels": [["clip"]]}, "channels must be a non-empty list"),
])
def test_every_field_is_checked_when_parsed(overrides, fragment):
    """What once passed the parser and then failed a whole batch deep in the model or Milvus."""
    with pytest.raises(ProtocolError, match=fragment) as info:
        parse(doc(**overrides))
    assert info.value.code == "bad_request"


def test_hostile_documents_get_a_protocol_error_not_a_crash():
    for raw in ("[" * 100_000, '{"v": 1, "id": "x", "deadline": 1, "query": ' + "[" * 5000 + "]" * 5000 + "}",
                b"\xff\xfe\x00", '{"v": 1, "id": "a", "deadline": 5, "query": {"text": "x"}, "\\ud800": 1}'):
        with pytest.raises(ProtocolError):
            parse(raw)


def test_the_client_refuses_what_the_worker_refuses():
    """build_request runs the protocol's own parser: the same strictness on both sides."""
    for kwargs in ({"like": True}, {"like": 2**63}, {"text": "\ud800"}, {"text": "a", "k": "10"},
                   {"text": "a", "filters": [{"field": "uri", "op": "==", "value": "\udc00"}]},
                   {"image": "s3://Bad_Bucket/k"}):
        with pytest.raises(BadRequest):
            build_request(**kwargs)
    with pytest.raises(BadRequest) as info:
        build_request(image=b"x" * 101, max_image_bytes=100)
    assert info.value.code == "too_large"
    from pathlib import Path

    for local in ("/etc/passwd", "/dev/zero", "/proc/self/environ", Path("/etc/hostname"), "file:///etc/passwd"):
        with pytest.raises(BadRequest, match="never reads files"):
            build_request(image=local)


def test_vocabulary_is_the_one_source_of_codes_and_limits():
    import common.errors as errors
    from query import client, gateway, protocol, search, vocabulary

    assert protocol.MAX_K is vocabulary.MAX_K and search.MAX_K is vocabulary.MAX_K
    assert protocol.CHANNELS is vocabulary.CHANNELS is search.CHANNELS
    assert gateway.STATUS is vocabulary.STATUS
    typed = [errors.QueryError, errors.QueryNotFound, errors.QueryTooLarge, errors.BadQueryImage,
             errors.QueryOverloaded, client.SearchTimeout, client.ServerError, client.Overloaded]
    assert all(cls.code in vocabulary.ERROR_CODES for cls in typed)
    assert set(vocabulary.ERROR_CODES) <= set(vocabulary.STATUS) | {"unprocessable"}
