"""Stable primary keys derived from source URIs.

Idempotent upserts need the same key for the same object on every run and in every
process, so the key is a hash of the URI, never a counter.
"""

from __future__ import annotations

import hashlib

_MASK63 = (1 << 63) - 1


def image_id(uri: str) -> int:
    """A positive int64 (63 bits of blake2b) for a source URI; collisions are ~2^-63 per pair."""
    digest = hashlib.blake2b(uri.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") & _MASK63 or 1
