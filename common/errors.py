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
    """A malformed query (empty text, unreadable query image, unknown id)."""


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
