"""Fuzzing the query side with hypothesis, against a real worker, real Redis and Milvus Lite.

Every input gets a typed error or a valid answer, never a 5xx, a crash or a hang:

- the protocol parser (pure): any JSON document -> a Request that round-trips, or a
  ProtocolError with a reply code;
- the filter compiler against Milvus Lite: every filter the validator accepts compiles to an
  expression Milvus runs, and selects exactly the rows Python's reading of it selects;
- the gateway's JSON and multipart endpoints (in-process app, real worker behind it);
- batching: a good request added in ONE batch with fuzzed raw entries gets the same hits
  as alone, and every fuzzed entry gets its own well-formed reply.

Example counts are bounded (``IMGSEARCH_FUZZ_SCALE`` multiplies them for a longer soak) and
derandomized, so the suite is a test (tens of seconds), not a soak, and CI is repeatable.
"""

from __future__ import annotations

import base64
import json
import math
import os
import uuid

import pytest
import redis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.store import ImageStore
from query.filters import FIELDS, INT_OPS, STRING_OPS, FilterError, compile_filters, parse_filters
from query.gateway import FORM_FIELDS, create_app
from query.protocol import REQUEST_KEYS, ProtocolError, parse_request
from query.vocabulary import CHANNELS, ERROR_CODES, QUERY_KINDS, REPLY_CODES, STATUS
from tests.query.hostile import add_as_one_batch, entry, replies, search_doc
from tests.query.web_stack import running_worker

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

SCALE = float(os.environ.get("IMGSEARCH_FUZZ_SCALE", "1"))
KEY = "fuzz-key"


def fuzz(examples: int):
    return settings(max_examples=max(1, int(examples * SCALE)), deadline=None, derandomize=SCALE == 1,
                    database=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                          HealthCheck.too_slow, HealthCheck.data_too_large])


# -- strategies ------------------------------------------------------------------------------
ANY_CHAR = st.characters(exclude_categories=())  # surrogates and control characters included
texts = st.one_of(st.text(ANY_CHAR, max_size=12), st.sampled_from(["", " ", "a coat", "sneaker", "\\", '"', "s3://"]))
ints = st.one_of(st.integers(-3, 1100), st.integers(-(2**70), 2**70), st.sampled_from([0, 2**63 - 1, 2**63, -(2**63)]))
json_scalars = st.one_of(st.none(), st.booleans(), ints, st.floats(allow_nan=False), texts)
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(texts, inner, max_size=4)), max_leaves=12)


def filter_values(field: str):
    base = st.integers(-(2**64), 2**64) if FIELDS.get(field) is int else texts
    return st.one_of(base, st.lists(base, max_size=4), json_values)


filters = st.builds(lambda f, op, v: {"field": f, "op": op, "value": v},
                    st.one_of(st.sampled_from(sorted(FIELDS)), texts),
                    st.sampled_from(sorted(set(STRING_OPS + INT_OPS)) + ["like", "=", ""]),
                    st.sampled_from(sorted(FIELDS)).flatmap(filter_values))
filter_lists = st.one_of(st.lists(st.one_of(filters, json_values), max_size=3), json_values)
channel_lists = st.one_of(st.none(), st.lists(st.one_of(st.sampled_from(CHANNELS), texts), max_size=4), json_values)
must_lists = st.one_of(st.none(), st.lists(texts, max_size=3), json_values)
b64_images = st.binary(max_size=64).map(lambda b: base64.b64encode(b).decode())
query_values = {
    "text": st.one_of(texts, json_values),
    "image": st.one_of(b64_images, texts, json_values),
    "image_uri": st.one_of(st.sampled_from(["s3://qfuzz/x.png", "s3://Bad/x", "s3:///etc/passwd", "/etc/passwd"]),
                           texts, json_values),
    "like": st.one_of(ints, texts, st.sampled_from(["s3://b/k.png", "file:///etc/passwd"]), json_values),
}
queries = st.one_of(st.sampled_from(QUERY_KINDS).flatmap(lambda kind: query_values[kind].map(lambda v: {kind: v})),
                    st.dictionaries(st.one_of(st.sampled_from(QUERY_KINDS), texts), json_values, max_size=2),
                    json_values)


valid_queries = st.one_of(st.sampled_from(["a coat", "sneaker", "bag", "warm clothes"]).map(lambda t: {"text": t}),
                          st.sampled_from([1, 4242, 2**63 - 1]).map(lambda i: {"like": i}),
                          b64_images.map(lambda b: {"image": b}))
valid_fields = {"query": valid_queries, "k": st.integers(1, 50),
                "filters": st.just([{"field": "width", "op": ">=", "value": 1}]),
                "channels": st.sampled_from([["clip"], ["bm25", "dense"], ["clip", "phash"]]),
                "must": st.just(["coat"])}


@st.composite
def request_docs(draw) -> dict:
    """Search documents, each field valid or fuzzed (about one in three fuzzed): mostly deep
    enough to pass the envelope and reach the search path, with its neighbours' strangeness."""
    doc = search_doc({"text": "a coat"})
    fuzzed = {"query": queries, "k": st.one_of(ints, json_values), "filters": filter_lists,
              "channels": channel_lists, "must": must_lists}
    # (hypothesis favours the ends of a range, so the rare cases sit in its middle)
    for name in sorted(fuzzed):
        pick = draw(st.integers(0, 5))
        if pick in (2, 3):
            value = draw(fuzzed[name])
            if value is None and name in ("channels", "must"):
                doc.pop(name, None)
            else:
                doc[name] = value
        elif pick in (0, 1):
            doc[name] = draw(valid_fields[name])
    if draw(st.integers(0, 9)) == 5:  # the envelope, now and then
        doc[draw(st.sampled_from(["v", "deadline", "id"]))] = draw(json_values)
    if draw(st.integers(0, 9)) == 6:  # an unknown field now and then
        doc[draw(texts)] = draw(json_values)
    return doc


# -- the protocol parser (pure) ---------------------------------------------------------------
@fuzz(400)
@given(st.one_of(request_docs(), json_values, st.binary(max_size=64), st.text(ANY_CHAR, max_size=40)))
def test_protocol_parser_gives_a_request_or_a_typed_error(doc):
    raw = doc if isinstance(doc, bytes | str) else json.dumps(doc)
    try:
        req = parse_request(raw, 1000)
    except ProtocolError as exc:
        assert exc.code in REPLY_CODES
        return
    again = parse_request(req.to_json(), 1000)  # what a worker accepts, a worker accepts again, unchanged
    assert (again.kind, again.text, again.image, again.image_uri, again.like, again.k, again.filter_expr,
            again.channels, again.must) == (req.kind, req.text, req.image, req.image_uri, req.like, req.k,
                                             req.filter_expr, req.channels, req.must)
    assert set(json.loads(req.to_json())) <= REQUEST_KEYS


# -- the filter compiler against Milvus Lite ---------------------------------------------------
def python_match(row: dict, f: dict) -> bool:
    value, op, want = row[f["field"]], f["op"], f["value"]
    return {"==": lambda: value == want, "!=": lambda: value != want, "<": lambda: value < want,
            "<=": lambda: value <= want, ">": lambda: value > want, ">=": lambda: value >= want,
            "in": lambda: value in want, "not_in": lambda: value not in want,
            "prefix": lambda: str(value).startswith(want)}[op]()


@pytest.fixture(scope="module")
def indexed_rows(served_samples) -> tuple[ImageStore, list[dict]]:
    store = ImageStore(served_samples)
    rows = store.client.query(store.alias, filter="id >= 0", output_fields=sorted(FIELDS), limit=16384)
    assert len(rows) == 200
    return store, rows


def test_filter_compiler_matches_milvus_lite(indexed_rows):
    store, rows = indexed_rows
    seen = {name: sorted({r[name] for r in rows}, key=repr) for name in FIELDS}

    def near(name: str):  # values that hit rows, their prefixes and neighbours, and strangers
        kind = FIELDS[name]
        real = st.sampled_from(seen[name])
        if kind is int:
            return st.one_of(real, real.map(lambda v: v + 1), st.integers(-(2**63), 2**63 - 1))
        return st.one_of(real, real.flatmap(lambda v: st.integers(0, len(v)).map(lambda n: v[:n])),
                         st.text(ANY_CHAR, max_size=8))

    def one_filter(name: str):
        ops = STRING_OPS if FIELDS[name] is str else INT_OPS
        return st.sampled_from(ops).flatmap(lambda op: (st.lists(near(name), min_size=1, max_size=4)
                                                        if op in ("in", "not_in") else near(name)).map(
            lambda v: {"field": name, "op": op, "value": v}))

    @fuzz(150)
    @given(st.lists(st.sampled_from(sorted(FIELDS)).flatmap(one_filter), max_size=3))
    def check(flt):
        try:
            expr = compile_filters(parse_filters(flt))
        except FilterError:
            return  # refused (control characters, lone surrogates, empty prefix): typed, never sent
        got = store.client.query(store.alias, filter=expr or "id >= 0", output_fields=["id"], limit=16384)
        want = {r["id"] for r in rows if all(python_match(r, f) for f in flt)}
        assert {int(r["id"]) for r in got} == want, expr

    check()


# -- the gateway, with a real worker behind it ---------------------------------------------------
@pytest.fixture(scope="module")
def fuzz_settings(served_samples, redis_server):
    return served_samples.with_overrides(redis_url=redis_server.url, query_stream=f"fuzz:{uuid.uuid4().hex[:8]}",
                                         query_timeout_ms=60_000, gateway_api_key=KEY, query_max_image_bytes=50_000)


@pytest.fixture(scope="module")
def worker(fuzz_settings, tmp_path_factory):
    """One warm worker for the module (model loading is the expensive part)."""
    with running_worker(fuzz_settings, tmp_path_factory.mktemp("fuzz-worker-logs")) as w:
        yield w


@pytest.fixture
def gateway(fuzz_settings, worker):
    with TestClient(create_app(fuzz_settings), headers={"X-API-Key": KEY}) as http:
        yield http


def assert_typed(resp) -> None:
    assert resp.status_code < 500 or resp.status_code == 503, resp.text  # 503 only for overloaded
    doc = resp.json()
    if resp.status_code == 200:
        assert set(doc) == {"hits", "worker", "batch", "took_ms"}
        assert all(set(h) == {"id", "uri", "score", "evidence"} for h in doc["hits"])
        assert all(math.isfinite(h["score"]) for h in doc["hits"])
    else:
        assert doc["error"]["code"] in ERROR_CODES and STATUS[doc["error"]["code"]] == resp.status_code, doc


body_fields = {"text": query_values["text"], "image_base64": query_values["image"],
               "image_uri": query_values["image_uri"], "like": query_values["like"],
               "k": st.one_of(st.integers(1, 50), ints, json_values), "filters": filter_lists,
               "channels": channel_lists, "must": must_lists, "timeout_ms": st.sampled_from([60_000, "60000", 0])}


valid_body_fields = {"text": st.sampled_from(["a coat", "sneaker", "warm clothes"]),
                     "like": st.sampled_from([1, 4242, "s3://b/k.png"]), "k": st.integers(1, 20),
                     "channels": valid_fields["channels"], "must": valid_fields["must"],
                     "filters": valid_fields["filters"], "timeout_ms": st.just(60_000)}


@st.composite
def json_bodies(draw):
    kind = draw(st.sampled_from(["text", "image_base64", "image_uri", "like"]))
    valid = valid_body_fields.get(kind)
    body = {kind: draw(valid if valid is not None and draw(st.booleans()) else body_fields[kind])}
    for name in draw(st.lists(st.sampled_from(sorted(body_fields)), max_size=3, unique=True)):
        if name in valid_body_fields and draw(st.booleans()):
            body[name] = draw(valid_body_fields[name])
        else:
            body[name] = draw(body_fields[name])
    return body


def test_gateway_json_endpoint_answers_everything_with_a_typed_status(gateway):
    @fuzz(50)
    @given(st.one_of(json_bodies(), json_values))
    def check(body):
        assert_typed(gateway.post("/v1/search", content=json.dumps(body),
                                  headers={"Content-Type": "application/json"}))

    check()
    assert gateway.post("/v1/search", json={"text": "a coat", "k": 3}).status_code == 200


def test_gateway_multipart_endpoint_answers_everything_with_a_typed_status(gateway, samples_dir):
    png = sorted((samples_dir / "coat").glob("*.png"))[0].read_bytes()
    names = [f for f in FORM_FIELDS if f not in ("file", "timeout_ms")]  # a short timeout_ms is a fair 504
    form_values = st.one_of(st.text(ANY_CHAR, max_size=12).map(lambda t: t.encode("utf-8", "surrogatepass")),
                            st.sampled_from([b"5", b"0", b"10.5", b"[]", b"clip,phash", b"coat", b'[{"field":1}]']))

    @fuzz(40)
    @given(file=st.one_of(st.just(png), st.binary(max_size=200), st.just(png[:60])),
           fields=st.dictionaries(st.one_of(st.sampled_from(names), st.text(max_size=6)), form_values, max_size=4),
           raw=st.one_of(st.none(), st.binary(max_size=120)))
    def check(file, fields, raw):
        if raw is not None:  # a body that is not even a well-formed form
            resp = gateway.post("/v1/search/image", content=raw,
                                headers={"Content-Type": "multipart/form-data; boundary=xyz"})
        else:
            resp = gateway.post("/v1/search/image", files={"file": ("q.png", file, "image/png")},
                                data={k: v.decode("utf-8", "replace") for k, v in fields.items()})
        assert_typed(resp)

    check()


def test_a_good_request_batched_with_fuzzed_ones_gets_the_same_hits(fuzz_settings, worker):
    queue_settings = fuzz_settings
    r = redis.Redis.from_url(queue_settings.redis_url)
    stream = queue_settings.query_stream

    def good() -> dict:
        return search_doc({"text": "a warm winter coat"}, k=10)

    first = entry(good())
    add_as_one_batch(r, stream, [first])
    baseline = [(h["id"], round(h["score"], 5)) for h in replies(r, stream, [first])[first["id"]]["hits"]]
    assert baseline

    @fuzz(25)
    @given(st.lists(request_docs(), min_size=1, max_size=6))
    def check(docs):
        fuzzed = []
        for doc in docs:
            rid = f"f-{uuid.uuid4().hex[:10]}"
            fields = entry(json.dumps({**doc, "id": rid}), rid)
            try:  # what the worker will do with it: reply, or drop it unanswered (expired)
                req = parse_request(fields["req"], queue_settings.query_max_image_bytes)
                answered = not req.expired()
            except ProtocolError:
                answered = True
            fuzzed.append((fields, answered))
        mine = entry(good())
        batch = [f for f, _ in fuzzed[:2]] + [mine] + [f for f, _ in fuzzed[2:]]
        add_as_one_batch(r, stream, batch)
        got = replies(r, stream, [mine] + [f for f, answered in fuzzed if answered])
        assert [(h["id"], round(h["score"], 5)) for h in got[mine["id"]]["hits"]] == baseline
        for fields, answered in fuzzed:
            if answered:
                reply = got[fields["id"]]
                assert reply["ok"] is True or reply["error"]["code"] in REPLY_CODES, reply

    check()
    assert r.xlen(stream) == 0
