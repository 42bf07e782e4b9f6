"""The query side's vocabulary: channels, query kinds, limits, hit fields and error codes.

One module so that the protocol (what a worker accepts), the client (what it sends), the
gateway (what HTTP callers may say and which status each error gets), the web page's
capabilities and the search service never disagree. Pure data and pure validation; it
imports nothing heavier than :mod:`common.errors` (the gateway loads no model through it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from common.errors import QueryError

SCHEMA_VERSION = 1

# -- what a request may ask for ---------------------------------------------------------
QUERY_KINDS = ("text", "image", "image_uri", "like")
CHANNELS = ("clip", "bm25", "dense", "phash")  # search channels, fused by RRF (query.fusion)
# channels=None means these, per query kind; phash needs a query image (or an indexed one)
DEFAULT_CHANNELS = {"text": ("clip", "bm25", "dense"), "image": ("clip", "phash", "bm25", "dense"),
                    "like": ("clip", "phash", "bm25", "dense")}
IMAGE_ONLY_CHANNELS = ("phash",)
TEXT_KINDS = ("ocr", "caption", "tag")  # evidence "kind" of the text channels' hits
HIT_FIELDS = ("id", "uri", "score", "evidence")  # a hit in a reply, in this order

# -- limits (the same everywhere a request is checked) -----------------------------------
MAX_K = 1000
MAX_TEXT_CHARS = 2000
MAX_URI_CHARS = 4096
MAX_MUST = 16
MAX_MUST_CHARS = 100
MAX_IMAGE_ID = 2**63 - 1  # ids are 63-bit URI hashes (common.ids): 1 .. 2**63 - 1
MAX_TIMEOUT_MS = 600_000
ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"
S3_BUCKET_PATTERN = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"  # S3's bucket naming rules

# -- error codes (replies and HTTP bodies) and the HTTP status of each -------------------
BAD_REQUEST = "bad_request"      # malformed request, bad filter, bad query image, bad k
NOT_FOUND = "not_found"          # like names no indexed image; image_uri unreadable or not allowed
TOO_LARGE = "too_large"          # query image (bytes or pixels) or request body over its limit
OVERLOADED = "overloaded"        # the request backlog is over IMGSEARCH_QUERY_MAX_BACKLOG
SERVER_ERROR = "server_error"    # Milvus or a model failed; retrying may help
TIMEOUT = "timeout"              # no answer before the deadline (the caller's, never in a reply)
UNAUTHORIZED = "unauthorized"    # gateway: missing or wrong X-API-Key
NOT_READY = "not_ready"          # gateway: Redis down or no warm worker
UNPROCESSABLE = "unprocessable"  # web page: an indexed image whose source no longer decodes
REPLY_CODES = (BAD_REQUEST, NOT_FOUND, TOO_LARGE, SERVER_ERROR)  # what a worker may answer
ERROR_CODES = REPLY_CODES + (OVERLOADED, TIMEOUT, UNAUTHORIZED, NOT_READY, UNPROCESSABLE)
STATUS = {BAD_REQUEST: 400, UNAUTHORIZED: 401, NOT_FOUND: 404, TOO_LARGE: 413, UNPROCESSABLE: 422,
          SERVER_ERROR: 502, OVERLOADED: 503, NOT_READY: 503, TIMEOUT: 504}
CALLER_CODES = (BAD_REQUEST, NOT_FOUND, TOO_LARGE)  # the request's fault: retrying will not help
RETRY_AFTER_S = 1  # Retry-After of an overloaded answer


def status_of(code: str) -> int:
    """HTTP status for an error code (an unknown code is the server's fault)."""
    return STATUS.get(code, 502)


def resolve_channels(kind: str, channels: Sequence[str] | None) -> tuple[str, ...]:
    """The channels to run for a query of ``kind``; QueryError for unknown or unusable ones."""
    kind = "image" if kind == "image_uri" else kind
    if channels is None:
        return DEFAULT_CHANNELS[kind]
    if isinstance(channels, str) or not channels or not all(isinstance(c, str) for c in channels):
        raise QueryError("channels must be a non-empty list of channel names")
    unknown = [c[:20] for c in channels if c not in CHANNELS]
    if unknown:
        raise QueryError(f"unknown channels {unknown[:5]}; available: {', '.join(CHANNELS)}")
    if kind == "text" and any(c in IMAGE_ONLY_CHANNELS for c in channels):
        raise QueryError("the phash channel needs an image query (image or like), not text")
    return tuple(dict.fromkeys(channels))


def check_must(must: Sequence[str] | None) -> tuple[str, ...]:
    """``must`` words: a list of 1-100 character strings, at most MAX_MUST of them."""
    if not must:
        return ()
    if isinstance(must, str) or not isinstance(must, list | tuple) or len(must) > MAX_MUST or not all(
            isinstance(w, str) and w.strip() and len(w) <= MAX_MUST_CHARS for w in must):
        raise QueryError(f"must takes a list of up to {MAX_MUST} non-empty words (<= {MAX_MUST_CHARS} "
                         "characters each)")
    check_text(must, "must")
    from common.texts import TOKEN_RE

    if not any(TOKEN_RE.findall(w) for w in must):
        raise QueryError("must words need at least one letter or digit")
    return tuple(w.strip() for w in must)


def check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise QueryError(f"k must be an integer from 1 to {MAX_K}, got {_short(k)}")
    return k


def check_image_id(value: Any, what: str = "image id") -> int:
    """An indexed image id: an integer from 1 to 2**63 - 1 (never a bool, never a string)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_IMAGE_ID:
        raise QueryError(f"{what} must be an integer from 1 to {MAX_IMAGE_ID}, got {_short(value)}")
    return value


def check_text(value: Any, what: str) -> None:
    """Every string in ``value`` (nested lists and dicts included) must encode as UTF-8.

    JSON and argv can carry lone surrogates (``"\\ud800"``, undecodable bytes on a command
    line); Python keeps them in ``str`` but the tokenizer, Milvus and Redis fail on them, so
    they are refused where a request is parsed, never deep inside a batch."""
    stack = [value]
    while stack:  # iterative: a deeply nested document must not overflow the stack
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise QueryError(f"{what} is not valid Unicode text (it holds a lone surrogate)") from None
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
