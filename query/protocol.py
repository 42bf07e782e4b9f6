"""The query protocol over Redis, schema version 1 (documented in README "Query over Redis").

``channels`` and ``must`` are optional fields of v1 (absent: the query kind's default
channels, no keyword refinement); hits then carry per-channel ``evidence``.

A request is one stream entry with two fields: ``id`` (repeated outside the JSON so that
even a request whose JSON is broken can be answered) and ``req`` (the JSON below). The
answer is pushed onto the list ``<stream>:reply:<id>`` (with a TTL), at most once per id.

Parsing is strict on purpose: unknown keys, wrong types, oversized images and unknown
schema versions are refused with a :class:`ProtocolError` naming the problem, so a caller
learns about a typo instead of getting silently different results.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

from common.errors import QueryError
from common.store import Hit
from query.filters import Filter, compile_filters, parse_filters
from query.fusion import FusedHit
from query.vocabulary import (  # noqa: F401  (re-exported: the protocol's names)
    BAD_REQUEST,
    CHANNELS,
    ERROR_CODES,
    MAX_K,
    MAX_TEXT_CHARS,
    MAX_URI_CHARS,
    NOT_FOUND,
    QUERY_KINDS,
    REPLY_CODES,
    S3_BUCKET_PATTERN,
    SCHEMA_VERSION,
    SERVER_ERROR,
    TOO_LARGE,
    check_image_id,
    check_k,
    check_must,
    check_text,
    resolve_channels,
)
from query.vocabulary import ID_PATTERN as _ID_PATTERN

ID_RE = re.compile(_ID_PATTERN)
BUCKET_RE = re.compile(S3_BUCKET_PATTERN)
REQUEST_KEYS = {"v", "id", "deadline", "query", "k", "filters", "channels", "must"}
HEARTBEAT_FRESH_MS = 5000  # a worker whose last heartbeat is older is not counted as ready


class ProtocolError(QueryError):
    """A request (or reply) does not follow the schema; ``code`` goes into the error reply."""

    def __init__(self, message: str, code: str = BAD_REQUEST):
        super().__init__(message)
        self.code = code


def now_ms() -> int:
    return int(time.time() * 1000)


def reply_key(stream: str, request_id: str) -> str:
    return f"{stream}:reply:{request_id}"


def done_key(stream: str, request_id: str) -> str:
    """Set (NX) by whoever settles a request first: a worker's reply or the caller's timeout."""
    return f"{stream}:done:{request_id}"


def heartbeat_key(stream: str) -> str:
    """Sorted set: worker name -> last heartbeat (unix ms) of warm, serving workers."""
    return f"{stream}:workers"


@dataclass
class Request:
    """A validated search request. Exactly one of text, image, image_uri, like is set."""

    id: str
    deadline: int  # unix milliseconds
    kind: str
    text: str | None = None
    image: bytes | None = None
    image_uri: str | None = None
    like: int | str | None = None
    k: int = 10
    filters: list[Filter] = field(default_factory=list)
    channels: tuple[str, ...] | None = None  # None: the defaults of the query kind
    must: tuple[str, ...] = ()

    @property
    def plain_clip(self) -> bool:
        """Only the CLIP channel and no keyword refinement (answered on the one search path,
        :meth:`query.search.SearchService.search_many`, like every other request)."""
        return self.channels == ("clip",) and not self.must

    @property
    def filter_expr(self) -> str:
        return compile_filters(self.filters)

    def expired(self, at_ms: int | None = None) -> bool:
        return (now_ms() if at_ms is None else at_ms) > self.deadline

    def to_json(self) -> str:
        return json.dumps(self.to_doc(), separators=(",", ":"))

    def to_doc(self) -> dict:
        query: dict[str, Any]
        if self.kind == "image":
            query = {"image": base64.b64encode(self.image or b"").decode("ascii")}
        else:
            query = {self.kind: getattr(self, self.kind)}
        doc = {"v": SCHEMA_VERSION, "id": self.id, "deadline": self.deadline, "query": query,
               "k": self.k, "filters": [f.to_dict() for f in self.filters]}
        if self.channels is not None:
            doc["channels"] = list(self.channels)
        if self.must:
            doc["must"] = list(self.must)
        return doc


def load_envelope(raw: bytes | str, allowed_keys: set[str], what: str = "request") -> dict:
    """JSON text -> a dict with only ``allowed_keys``, this schema version, a valid id and
    deadline (shared by search requests and the read-only ops of :mod:`query.ops`)."""
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ProtocolError(f"{what} is not valid JSON: {str(exc)[:200]}") from None
    return check_envelope(doc, allowed_keys, what)


def check_envelope(doc: Any, allowed_keys: set[str], what: str = "request") -> dict:
    """The checks of :func:`load_envelope` on an already parsed document."""
    if not isinstance(doc, dict):
        raise ProtocolError(f"{what} must be a JSON object")
    try:
        check_text(doc, what)
    except QueryError as exc:
        raise ProtocolError(str(exc)) from None
    unknown = set(doc) - allowed_keys
    if unknown:
        raise ProtocolError(f"unknown {what} fields: {', '.join(sorted(repr(k)[1:-1][:40] for k in unknown))}")
    if type(doc.get("v")) is not int or doc.get("v") != SCHEMA_VERSION:
        raise ProtocolError(f"unsupported schema version {repr(doc.get('v'))[:20]}; "
                            f"this worker speaks v{SCHEMA_VERSION}")
    request_id = doc.get("id")
    if not isinstance(request_id, str) or not ID_RE.match(request_id):
        raise ProtocolError("id must be 1-128 characters of letters, digits, _ . : -")
    deadline = doc.get("deadline")
    if isinstance(deadline, bool) or not isinstance(deadline, int) or not 0 < deadline < 2**53:
        raise ProtocolError("deadline must be a positive integer (unix time in milliseconds)")
    return doc


def parse_request(raw: bytes | str, max_image_bytes: int) -> Request:
    """JSON text -> :class:`Request`, or :class:`ProtocolError` saying exactly what is wrong."""
    return request_from_doc(load_envelope(raw, REQUEST_KEYS), max_image_bytes)


def request_from_doc(doc: Any, max_image_bytes: int) -> Request:
    """A parsed request document -> :class:`Request`; every field is checked here, so a
    request that gets past this point cannot fail its batch neighbours with bad input
    (ids in range, text that encodes, typed filter values, known channels)."""
    doc = check_envelope(doc, REQUEST_KEYS)
    try:
        return _request(doc, max_image_bytes)
    except ProtocolError:
        raise
    except QueryError as exc:
        raise ProtocolError(str(exc), exc.code) from None


def _request(doc: dict, max_image_bytes: int) -> Request:
    k = check_k(doc.get("k", 10))
    channels = doc.get("channels")
    if channels is not None and not isinstance(channels, list):
        raise ProtocolError("channels must be a non-empty list of channel names")
    filters = parse_filters(doc.get("filters", []))
    must = check_must(doc.get("must"))
    req = Request(id=doc["id"], deadline=doc["deadline"], kind="", k=k, filters=filters,
                  channels=tuple(channels) if channels is not None else None, must=must)
    _parse_query(req, doc.get("query"), max_image_bytes)
    resolve_channels(req.kind, req.channels)
    return req


def _parse_query(req: Request, query: Any, max_image_bytes: int) -> None:
    if not isinstance(query, dict) or len(query) != 1:
        raise ProtocolError(f"query must be an object with exactly one of: {', '.join(QUERY_KINDS)}")
    (kind, value), = query.items()
    if kind not in QUERY_KINDS:
        raise ProtocolError(f"unknown query kind {kind[:40]!r}; use one of: {', '.join(QUERY_KINDS)}")
    req.kind = kind
    if kind == "text":
        if not isinstance(value, str) or not value.strip():
            raise ProtocolError("query.text must be a non-empty string")
        if len(value) > MAX_TEXT_CHARS:
            raise ProtocolError(f"query.text is longer than {MAX_TEXT_CHARS} characters")
        req.text = value.strip()
    elif kind == "image":
        req.image = decode_image_field(value, max_image_bytes)
    elif kind == "image_uri":
        req.image_uri = check_image_uri(value)
    else:
        req.like = check_like(value)


def check_image_uri(value: Any) -> str:
    """``s3://bucket/key`` with a valid bucket name and a key; whether the bucket is allowed
    is the worker's decision (IMGSEARCH_QUERY_URI_BUCKETS), made when it fetches."""
    if not isinstance(value, str) or not value.startswith("s3://") or len(value) > MAX_URI_CHARS:
        raise ProtocolError("query.image_uri must be an s3:// URI (workers never read their own files)")
    bucket, _, key = value[len("s3://"):].partition("/")
    if not BUCKET_RE.match(bucket) or not key or any(ord(ch) < 32 for ch in value):
        raise ProtocolError("query.image_uri must be s3://bucket/key with a valid bucket name and a key")
    return value


def check_like(value: Any) -> int | str:
    """An indexed image id (1 .. 2**63 - 1) or the URI it was indexed under."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ProtocolError("query.like must be an indexed image id (integer) or its URI (string)")
    if isinstance(value, int):
        return check_image_id(value, "query.like")
    if "://" not in value or len(value) > MAX_URI_CHARS or any(ord(ch) < 32 for ch in value):
        raise ProtocolError("query.like as a string must be the URI of an indexed image")
    return value


def decode_image_field(value: Any, max_image_bytes: int) -> bytes:
    """Base64 text -> bytes, refusing oversized input (code too_large) before decoding it."""
    if not isinstance(value, str) or not value:
        raise ProtocolError("query.image must be non-empty base64 text")
    if len(value) > 4 * ((max_image_bytes + 2) // 3) + 4:
        raise ProtocolError(f"query image is larger than the limit of {max_image_bytes} bytes", TOO_LARGE)
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError("query.image is not valid base64") from None
    if len(data) > max_image_bytes:
        raise ProtocolError(f"query image is larger than the limit of {max_image_bytes} bytes", TOO_LARGE)
    if not data:
        raise ProtocolError("query.image must be non-empty base64 text")
    return data


# -- replies ------------------------------------------------------------------------------
@dataclass
class Reply:
    """What a worker answers: hits (ok) or an error code and message."""

    id: str
    ok: bool
    hits: list[Hit | FusedHit] = field(default_factory=list)
    error_code: str = ""
    error_message: str = ""
    worker: str = ""
    batch: int = 0
    took_ms: float = 0.0

    def to_json(self) -> str:
        doc: dict[str, Any] = {"v": SCHEMA_VERSION, "id": self.id, "ok": self.ok, "worker": self.worker}
        if self.ok:
            doc.update(hits=[h.to_dict() for h in self.hits], batch=self.batch, took_ms=round(self.took_ms, 3))
        else:
            doc["error"] = {"code": self.error_code, "message": self.error_message}
        return json.dumps(doc, separators=(",", ":"))

    @classmethod
    def error(cls, request_id: str, code: str, message: str, worker: str = "") -> "Reply":
        return cls(request_id, False, error_code=code, error_message=message, worker=worker)

    @classmethod
    def failed(cls, request_id: str, exc: BaseException) -> "Reply":
        """The error reply for ``exc``: a QueryError's own code (by type, never by message),
        anything else a server_error."""
        if isinstance(exc, QueryError):
            return cls.error(request_id, exc.code if exc.code in REPLY_CODES else BAD_REQUEST, str(exc))
        return cls.error(request_id, SERVER_ERROR, f"{type(exc).__name__}: {str(exc)[:500]}")


def parse_reply(raw: bytes | str) -> Reply:
    """A worker's JSON reply -> :class:`Reply` (ProtocolError with code server_error if broken)."""
    try:
        doc = json.loads(raw)
        if doc.get("v") != SCHEMA_VERSION:
            raise ValueError(f"reply schema version {doc.get('v')!r}")
        if doc["ok"]:
            hits = [FusedHit.from_dict(h) if "evidence" in h else Hit(int(h["id"]), str(h["uri"]), float(h["score"]))
                    for h in doc["hits"]]
            return Reply(doc["id"], True, hits, worker=doc.get("worker", ""), batch=int(doc.get("batch", 0)),
                         took_ms=float(doc.get("took_ms", 0.0)))
        err = doc["error"]
        code = str(err["code"])
        return Reply.error(doc["id"], code if code in ERROR_CODES else SERVER_ERROR, str(err["message"]),
                           doc.get("worker", ""))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ProtocolError(f"malformed reply from a worker: {exc}", SERVER_ERROR) from None
