"""Thumbnails of indexed images for the web page: fetch from the source, decode safely, shrink, cache.

The gateway only renders images whose URI the index holds (it asks a query worker for the
row of an id first), so no caller can make it read an arbitrary file or bucket. Source
bytes pass through :func:`common.images.decode_image` with the ingest limits (bytes,
pixels: a decompression bomb costs nothing), and the JPEG output is cached in a
least-recently-used memory cache bounded by bytes, keyed by URI, ETag and size so a
changed object is never served stale.
"""

from __future__ import annotations

import functools
import io
import threading
from collections import OrderedDict

from PIL import Image

from common.errors import ImageError, ImgsearchError
from common.images import decode_image
from common.settings import Settings
from common.sources import fetcher_for, split_s3_uri

QUALITY = 85


class ThumbnailError(ImgsearchError):
    """Why no thumbnail: ``code`` is not_found (object gone), too_large, unprocessable, fetch_error."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


class ThumbnailCache:
    """Thread-safe LRU of rendered thumbnails, bounded by the bytes it holds."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple, bytes] = OrderedDict()
        self._lock = threading.Lock()
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple) -> bytes | None:
        with self._lock:
            data = self._items.get(key)
            if data is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return data

    def put(self, key: tuple, data: bytes) -> None:
        if len(data) > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.bytes -= len(old)
            self._items[key] = data
            self.bytes += len(data)
            while self.bytes > self.max_bytes:
                _key, evicted = self._items.popitem(last=False)
                self.bytes -= len(evicted)

    def __len__(self) -> int:
        return len(self._items)


@functools.lru_cache(maxsize=64)
def _fetcher(root: str, settings: Settings):
    """One source per bucket (its boto3 clients are made once per thread, not per thumbnail)."""
    return fetcher_for(root, settings)


def fetch_source(uri: str, settings: Settings) -> bytes:
    """The object's bytes (at most the ingest byte limit + 1), or ThumbnailError saying why not."""
    root = f"s3://{split_s3_uri(uri)[0]}/" if uri.startswith("s3://") else uri
    try:
        fetcher = _fetcher(root, settings) if uri.startswith("s3://") else fetcher_for(uri, settings)
        return fetcher.fetch(uri, settings.max_image_bytes)
    except FileNotFoundError:
        raise ThumbnailError("not_found", f"source object {uri} no longer exists") from None
    except ImgsearchError as exc:
        raise ThumbnailError("fetch_error", str(exc)) from None
    except Exception as exc:  # botocore ClientError and friends
        response = getattr(exc, "response", None)
        code = response.get("Error", {}).get("Code", "") if isinstance(response, dict) else ""
        if code in ("NoSuchKey", "404", "NotFound", "NoSuchBucket"):
            raise ThumbnailError("not_found", f"source object {uri} no longer exists ({code})") from None
        raise ThumbnailError("fetch_error", f"cannot fetch {uri}: {type(exc).__name__}: {exc}") from None


def render(data: bytes, size: int, settings: Settings) -> bytes:
    """JPEG whose longer edge is at most ``size`` (never enlarged; the page scales small ones)."""
    try:
        decoded = decode_image(data, settings.max_image_bytes, settings.max_image_pixels)
    except ImageError as exc:
        code = "too_large" if exc.reason in ("too_large", "too_many_pixels") else "unprocessable"
        raise ThumbnailError(code, f"source image cannot be shown ({exc.reason}): {exc.message}") from None
    image = decoded.image
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=QUALITY, optimize=True)
    return out.getvalue()


def thumbnail(row: dict, size: int, settings: Settings, cache: ThumbnailCache) -> bytes:
    """The thumbnail of an indexed row (uri, etag), from the cache or rendered now."""
    key = (row["uri"], row.get("etag", ""), size)
    cached = cache.get(key)
    if cached is not None:
        return cached
    data = render(fetch_source(row["uri"], settings), size, settings)
    cache.put(key, data)
    return data
