"""Error types shared by all packages, so callers can tell user mistakes from faults.

Each per-image failure carries a short machine-readable ``reason`` (used in summaries and
dead-letter entries) and a human message.
"""

from __future__ import annotations


class ImgsearchError(Exception):
    """Base class: something the user can act on; the CLI prints it without a traceback."""


class ConfigError(ImgsearchError):
    """A setting is missing or malformed."""


class SourceError(ImgsearchError):
    """A source (folder, bucket) cannot be listed at all."""


class ModelMismatchError(ImgsearchError):
    """A collection was built with another model than the one asked for."""


class CollectionNotFoundError(ImgsearchError):
    """Nothing has been indexed into the named collection yet."""


class QueryError(ImgsearchError):
    """A query the caller must fix (empty text, bad filter, bad query image, unknown id).

    ``code`` is the error code of the reply (``query.vocabulary``): the worker and gateway map
    an error to its code and HTTP status by its type, never by its message."""

    code = "bad_request"


class QueryNotFound(QueryError):
    """Nothing to search by: ``like`` names no indexed image, or an ``image_uri`` cannot be
    read. A missing key, a missing bucket and a bucket the caller may not name all raise this
    with the same message, so the error tells nothing about what exists."""

    code = "not_found"


class QueryTooLarge(QueryError):
    """A query image (bytes or pixels) or a request body over its limit."""

    code = "too_large"


class BadQueryImage(QueryError):
    """A query image that does not decode; ``reason`` is one of :data:`IMAGE_REASONS`."""

    def __init__(self, reason: str, message: str):
        super().__init__(f"bad query image ({reason}): {message}")
        self.reason = reason


class QueryOverloaded(QueryError):
    """The request backlog is over its bound: the request was not queued; retry later."""

    code = "overloaded"


class ImageError(ImgsearchError):
    """One image cannot be indexed. ``reason`` is one of :data:`IMAGE_REASONS`."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


# reason -> what it means; the README lists these.
IMAGE_REASONS = {
    "empty": "zero-byte file",
    "too_large": "more bytes than IMGSEARCH_MAX_IMAGE_BYTES",
    "too_many_pixels": "more pixels than IMGSEARCH_MAX_IMAGE_PIXELS (decompression bomb guard)",
    "unsupported_type": "not an image format we decode (HTML, text, PDF, ...)",
    "undecodable": "claims an image format but the data is corrupt",
    "truncated": "image data ends early",
    "fetch_error": "could not read the object from its source",
}
