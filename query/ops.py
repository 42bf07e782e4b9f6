"""Read-only collection requests beside searches (protocol v1, "op" entries).

The web page needs a few facts that only Milvus holds: the collection's size, the rows and
CLIP vectors of given ids (thumbnails, results graph) and a sample of the collection (map).
The gateway holds no Milvus connection, so these go through the same Redis stream as
searches: a stream entry ``id <id> op <json>`` (instead of ``req``), answered by any query
worker onto the same reply list. Ops are cheap lookups, never model work:

- ``{"v":1,"id":...,"deadline":...,"op":"stats"}`` -> ``{"collection","physical","count","model","dim"}``
- ``{"op":"rows","ids":[...],"vectors":bool}`` -> ``{"rows":[...],"missing":[...]}``
- ``{"op":"sample","n":N,"vectors":bool}`` -> ``{"count","rows":[...]}``

Rows carry the scalar fields of the ``images`` collection; with ``vectors`` each row has
``clip`` as base64 of little-endian float32 (4 bytes a dimension instead of ~10 in JSON).
Replies: ``{"v":1,"id","ok":true,"worker","result":{...}}`` or the search error shape.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from query.protocol import SCHEMA_VERSION, SERVER_ERROR, ProtocolError, Reply, load_envelope

OPS = ("stats", "rows", "sample")
MAX_ROWS = 1000
MAX_SAMPLE = 16384  # Milvus' largest query limit
OP_KEYS = {"v", "id", "deadline", "op", "ids", "vectors", "n"}


@dataclass
class OpRequest:
    """A validated op request."""

    id: str
    deadline: int
    op: str
    ids: list[int] = field(default_factory=list)
    vectors: bool = False
    n: int = 0

    def to_json(self) -> str:
        doc: dict[str, Any] = {"v": SCHEMA_VERSION, "id": self.id, "deadline": self.deadline, "op": self.op}
        if self.op == "rows":
            doc.update(ids=self.ids, vectors=self.vectors)
        elif self.op == "sample":
            doc.update(n=self.n, vectors=self.vectors)
        return json.dumps(doc, separators=(",", ":"))


@dataclass
class OpReply:
    """An op's answer; duck-types :class:`query.protocol.Reply` for the worker's sender."""

    id: str
    result: dict
    worker: str = ""
    batch: int = 0
    took_ms: float = 0.0

    def to_json(self) -> str:
        return json.dumps({"v": SCHEMA_VERSION, "id": self.id, "ok": True, "worker": self.worker,
                           "result": self.result}, separators=(",", ":"))


def parse_op(raw: bytes | str) -> OpRequest:
    """JSON text -> :class:`OpRequest`, or :class:`ProtocolError` naming the problem."""
    doc = load_envelope(raw, OP_KEYS, "op request")
    req_id, deadline, op = doc["id"], doc["deadline"], doc.get("op")
    if op not in OPS:
        raise ProtocolError(f"unknown op {op!r}; use one of: {', '.join(OPS)}")
    vectors = doc.get("vectors", False)
    if not isinstance(vectors, bool):
        raise ProtocolError("vectors must be true or false")
    req = OpRequest(req_id, deadline, op, vectors=vectors)
    if op == "rows":
        ids = doc.get("ids")
        if (not isinstance(ids, list) or not 1 <= len(ids) <= MAX_ROWS
                or not all(isinstance(i, int) and not isinstance(i, bool) and 0 < i < 2**63 for i in ids)):
            raise ProtocolError(f"ids must be a list of 1 to {MAX_ROWS} image ids (positive 64-bit integers)")
        req.ids = ids
    elif op == "sample":
        n = doc.get("n")
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_SAMPLE:
            raise ProtocolError(f"n must be an integer from 1 to {MAX_SAMPLE}")
        req.n = n
    return req


def answer_op(store, req: OpRequest) -> dict:
    """The result of one op against an :class:`common.store.ImageStore` (raises on Milvus faults)."""
    if req.op == "stats":
        spec = store.model_spec()
        # the name callers use (an alias), and the versioned collection now behind it
        return {"collection": store.settings.collection, "physical": store.physical_name() or store.alias,
                "count": store.count(), "model": spec.label(), "dim": spec.dim}
    if req.op == "rows":
        rows = [_row(r) for r in store.rows(req.ids, with_vector=req.vectors)]
        found = {r["id"] for r in rows}
        return {"rows": rows, "missing": [i for i in req.ids if i not in found]}
    count, rows = store.sample(req.n, with_vector=req.vectors)
    return {"count": count, "rows": [_row(r) for r in rows]}


def answer_entry(store, raw: bytes, request_id: str, now: int) -> Reply | OpReply | None:
    """A worker's reply to one op entry (None: expired, the caller gave up)."""
    try:
        req = parse_op(raw)
        if req.id != request_id:
            raise ProtocolError(f"request id {req.id!r} differs from the entry's id {request_id!r}")
    except ProtocolError as exc:
        return Reply.error(request_id, exc.code, str(exc))
    if now > req.deadline:
        return None
    try:
        return OpReply(req.id, answer_op(store, req))
    except Exception as exc:  # Milvus down, no collection: an error reply, never a crash
        return Reply.error(req.id, SERVER_ERROR, f"{req.op} failed: {type(exc).__name__}: {exc}")


def parse_op_reply(raw: bytes | str) -> tuple[bool, dict]:
    """(True, result) or (False, {"code", "message"}); ProtocolError(server_error) if broken."""
    try:
        doc = json.loads(raw)
        if doc.get("v") != SCHEMA_VERSION:
            raise ValueError(f"reply schema version {doc.get('v')!r}")
        if doc["ok"]:
            return True, dict(doc["result"])
        return False, {"code": str(doc["error"]["code"]), "message": str(doc["error"]["message"])}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ProtocolError(f"malformed op reply from a worker: {exc}", SERVER_ERROR) from None


def _row(row: dict) -> dict:
    out = {k: (int(v) if isinstance(v, np.integer) else v) for k, v in row.items() if k != "clip"}
    if "clip" in row:
        out["clip"] = encode_vector(row["clip"])
    return out


def encode_vector(vector) -> str:
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")


def decode_vectors(rows: list[dict]) -> np.ndarray:
    """The ``clip`` fields of rows -> an (n, d) float32 matrix."""
    if not rows:
        return np.zeros((0, 0), dtype=np.float32)
    try:
        return np.stack([np.frombuffer(base64.b64decode(r["clip"]), dtype="<f4") for r in rows])
    except (KeyError, ValueError, TypeError) as exc:
        raise ProtocolError(f"malformed vectors in an op reply: {exc}", SERVER_ERROR) from None

