"""Retries for transient faults: exponential backoff with full jitter, bounded attempts.

Why here and not only in Celery: a batch holds many images, and one flaky GET must not
send the whole batch back to the queue. :class:`RetryingSource` retries a single fetch a
few times; what still fails becomes that image's ``fetch_error`` dead letter, and the
rest of the batch goes on. Permanent answers (no such key, access denied) fail at once.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from common.sources import Source, SourceObject

T = TypeVar("T")

# S3 error codes that will not get better by asking again.
PERMANENT_S3_CODES = {"NoSuchKey", "NoSuchBucket", "AccessDenied", "InvalidObjectState", "404", "403",
                      "InvalidRange"}


def backoff_delays(attempts: int, base: float = 0.2, cap: float = 5.0) -> Iterator[float]:
    """Full-jitter delays: uniform(0, min(cap, base * 2**n)) for n = 0 .. attempts-2."""
    for n in range(max(attempts - 1, 0)):
        yield random.uniform(0, min(cap, base * (2 ** n)))


def is_transient(exc: BaseException) -> bool:
    """True for faults worth retrying: connection trouble, timeouts, throttling, 5xx."""
    code = ""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = str(response.get("Error", {}).get("Code", ""))
        status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in PERMANENT_S3_CODES or 400 <= status < 500 and status not in (408, 429):
            return False
        return True
    if isinstance(exc, FileNotFoundError | PermissionError | IsADirectoryError):
        return False
    return isinstance(exc, OSError | TimeoutError | ConnectionError) or type(exc).__module__.startswith(
        ("botocore", "urllib3"))


def call_with_retry(fn: Callable[[], T], attempts: int, base: float = 0.2, cap: float = 5.0,
                    sleep: Callable[[float], None] = time.sleep) -> T:
    """Call ``fn``; on a transient error wait (backoff + jitter) and call again."""
    delays = backoff_delays(attempts, base, cap)
    while True:
        try:
            return fn()
        except Exception as exc:
            if not is_transient(exc):
                raise
            delay = next(delays, None)
            if delay is None:
                raise
            sleep(delay)


class RetryingSource(Source):
    """Wraps a source so each fetch is retried on transient errors (listing is not wrapped)."""

    def __init__(self, inner: Source, attempts: int = 4):
        self.inner = inner
        self.root = inner.root
        self.attempts = attempts

    def list(self, start_after: str = "") -> Iterator[SourceObject]:
        return self.inner.list(start_after)

    def fetch(self, uri: str, max_bytes: int) -> bytes:
        return call_with_retry(lambda: self.inner.fetch(uri, max_bytes), self.attempts)
