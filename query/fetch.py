"""Query images named by URI: fetched by a worker, from allowed buckets, with bounded reads.

A caller may name an ``s3://bucket/key`` as its query image. Only buckets on the
allow-list (``IMGSEARCH_QUERY_URI_BUCKETS``; empty = every URI refused) are fetched, with the
worker's S3 credentials, and the object is read in chunks that stop one byte past
``IMGSEARCH_QUERY_MAX_IMAGE_BYTES`` (a server that ignores the Range header cannot make the
worker read more). A bucket off the list, a missing bucket, a missing key and a key the
credentials may not read all raise the same :class:`QueryNotFound` with the same message:
the error says nothing about what exists. Nothing here reads a local file.
"""

from __future__ import annotations

import functools
import logging

from common.errors import QueryNotFound, QueryTooLarge
from common.settings import Settings
from common.sources import s3_client, split_s3_uri

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
# S3 error codes that mean "this caller gets nothing here"; all read the same to the caller
UNREADABLE = {"NoSuchKey", "NoSuchBucket", "AccessDenied", "AllAccessDisabled", "InvalidBucketName",
              "InvalidObjectState", "InvalidRange", "NotFound", "404", "403", "400", "416"}


def fetch_query_image(uri: str, settings: Settings, any_bucket: bool = False) -> bytes:
    """The bytes of the query image at ``uri`` (QueryNotFound, QueryTooLarge, or the S3
    client's own error for faults that are not the caller's: network, throttling).

    ``any_bucket`` skips the allow-list: only for a command line run by the holder of the
    credentials themselves (``imgsearch search --image s3://...`` in embedded mode), never
    for a server answering others."""
    import botocore.exceptions

    limit = settings.query_max_image_bytes
    bucket, key = split_s3_uri(uri) if uri.startswith("s3://") else ("", "")
    if not bucket or not key or not (any_bucket or bucket in settings.query_buckets()):
        log.info("query image uri refused", extra={"bucket": bucket[:64], "reason": "not allowed"})
        raise _unreadable(uri)
    try:
        body = _client(settings).get_object(Bucket=bucket, Key=key, Range=f"bytes=0-{limit}")["Body"]
    except botocore.exceptions.ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
        if code in UNREADABLE or status in UNREADABLE:
            log.info("query image uri unreadable", extra={"bucket": bucket, "reason": code or status})
            raise _unreadable(uri) from None
        raise
    try:
        return read_bounded(body, limit, uri)
    finally:
        body.close()


def read_bounded(body, limit: int, what: str) -> bytes:
    """Read a streaming body in chunks; QueryTooLarge as soon as it passes ``limit`` bytes."""
    parts: list[bytes] = []
    total = 0
    while True:
        chunk = body.read(CHUNK)
        if not chunk:
            return b"".join(parts)
        total += len(chunk)
        if total > limit:
            raise QueryTooLarge(f"query image {what} is larger than the limit of {limit} bytes")
        parts.append(chunk)


def _unreadable(uri: str) -> QueryNotFound:
    return QueryNotFound(f"no readable query image at {uri[:200]} (not found, or not in an allowed bucket)")


@functools.lru_cache(maxsize=8)
def _client(settings: Settings):
    """One S3 client per worker settings (the query worker answers from one thread)."""
    return s3_client(settings)
