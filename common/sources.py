"""Where images come from: a local folder or an S3-compatible bucket prefix.

Both list objects as :class:`SourceObject` (uri, etag, size) and fetch bytes by URI, so
the ingest stages never care which one they read. Listing is lazy (page by page for S3)
so millions of objects never sit in memory at once.
"""

from __future__ import annotations

import fnmatch
import os
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlparse

from common.errors import SourceError
from common.settings import Settings


@dataclass(frozen=True)
class SourceObject:
    """One listed object. ``etag`` changes whenever the content may have changed."""

    uri: str
    etag: str
    size: int

    def to_dict(self) -> dict:
        return asdict(self)


class Source:
    """Interface: list objects under a root, fetch one object's bytes."""

    root: str

    def list(self, start_after: str = "") -> Iterator[SourceObject]:
        """Objects in a stable order; with ``start_after`` (a URI this listing returned),
        only those after it: a planner resumes its listing from a checkpoint."""
        raise NotImplementedError

    def fetch(self, uri: str, max_bytes: int) -> bytes:
        """Bytes of one object; raises OSError (or a botocore error) when unreadable."""
        raise NotImplementedError


def _included(name: str, include: tuple[str, ...]) -> bool:
    return not include or any(fnmatch.fnmatch(name.lower(), pat.lower()) for pat in include)


def listed_uri_prefix(root: str) -> str:
    """What every URI a source with this root lists starts with, and nothing else does.

    S3 lists by key prefix (``s3://b/shop`` also lists ``shop2/x``) and URIs quote the key;
    a folder lists only below itself, so its prefix ends with ``/`` (``/data/shop`` must
    not claim ``/data/shop2/``)."""
    if root.startswith("s3://"):
        bucket, _, key = root[len("s3://"):].partition("/")
        return f"s3://{bucket}/{quote(key, safe='/')}"
    return root.rstrip("/") + "/"


def uri_included(uri: str, include: tuple[str, ...]) -> bool:

    """Whether a listed object's URI passes the ``--include`` patterns its source applied."""
    return _included(unquote(uri.rsplit("/", 1)[-1]), include)



class LocalFiles(Source):
    """Reads ``file://`` URIs; the base of :class:`LocalSource`, usable without a root."""

    root = "file:///"

    def list(self, start_after: str = "") -> Iterator[SourceObject]:
        raise SourceError("LocalFiles only fetches; list a LocalSource instead")

    def fetch(self, uri: str, max_bytes: int) -> bytes:
        path = Path(unquote(urlparse(uri).path))
        with open(path, "rb") as fh:
            return fh.read(max_bytes + 1)


class LocalSource(LocalFiles):
    """Recursive walk of a folder. Hidden files and folders (dot-names) are skipped.

    The etag is ``<mtime_ns>-<size>``: cheap, and it changes when a file is rewritten.
    """

    def __init__(self, root: Path, include: tuple[str, ...] = ()):
        self.path = root.expanduser().resolve()
        if not self.path.exists():
            raise SourceError(f"folder not found: {root}")
        if not self.path.is_dir():
            raise SourceError(f"not a folder: {root} (give a folder or s3://bucket/prefix)")
        self.root = self.path.as_uri()
        self.include = include

    def list(self, start_after: str = "") -> Iterator[SourceObject]:
        skipping = bool(start_after)  # the walk's order is stable: skip up to that URI
        for dirpath, dirnames, filenames in os.walk(self.path, onerror=_raise_walk_error):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if name.startswith(".") or not _included(name, self.include):
                    continue
                path = Path(dirpath) / name
                if skipping:
                    skipping = path.as_uri() != start_after
                    continue
                try:
                    st = path.stat()
                except OSError:
                    continue  # vanished between listing and stat: nothing to index
                if not path.is_file():
                    continue
                yield SourceObject(path.as_uri(), f"{st.st_mtime_ns}-{st.st_size}", st.st_size)


def _raise_walk_error(err: OSError) -> None:
    raise SourceError(f"cannot read folder {err.filename}: {err.strerror}")


class S3Source(Source):
    """Objects under ``s3://bucket/prefix``, listed with ListObjectsV2 pagination.

    Keys ending in ``/`` (folder markers) are skipped. The client is created lazily per
    thread because boto3 clients are not safe to share while being created.
    """

    def __init__(self, uri: str, settings: Settings, include: tuple[str, ...] = ()):
        parsed = urlparse(uri)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise SourceError(f"not an S3 URI: {uri!r} (expected s3://bucket/prefix)")
        self.bucket = parsed.netloc
        self.prefix = parsed.path.lstrip("/")
        self.root = f"s3://{self.bucket}/{self.prefix}"
        self.settings = settings
        self.include = include
        self._local = threading.local()

    @property
    def client(self):
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = s3_client(self.settings)
        return client

    def list(self, start_after: str = "") -> Iterator[SourceObject]:
        """In key order (ListObjectsV2); ``start_after`` resumes after that object's key."""
        import botocore.exceptions

        paginator = self.client.get_paginator("list_objects_v2")
        extra = {"StartAfter": split_s3_uri(start_after)[1]} if start_after else {}
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix, **extra):
                for obj in page.get("Contents", []):
                    key = obj["Key"]
                    if key.endswith("/") or not _included(key.rsplit("/", 1)[-1], self.include):
                        continue
                    yield SourceObject(
                        f"s3://{self.bucket}/{quote(key, safe='/')}",
                        str(obj.get("ETag", "")).strip('"'),
                        int(obj.get("Size", 0)),
                    )
        except botocore.exceptions.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            raise SourceError(f"cannot list {self.root}: {code or exc}") from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise SourceError(f"cannot list {self.root}: {exc}") from exc

    def fetch(self, uri: str, max_bytes: int) -> bytes:
        bucket, key = split_s3_uri(uri)
        # One byte past the limit tells "too large" apart from "exactly at the limit".
        resp = self.client.get_object(Bucket=bucket, Key=key, Range=f"bytes=0-{max_bytes}")
        return resp["Body"].read()


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/a%20b.jpg`` -> (``bucket``, ``a b.jpg``)."""
    parsed = urlparse(uri)
    return parsed.netloc, unquote(parsed.path.lstrip("/"))


def s3_client(settings: Settings):
    """A boto3 S3 client configured from settings (endpoint, region, keys, retries)."""
    import boto3
    from botocore.config import Config

    kwargs = {
        "region_name": settings.s3_region,
        "config": Config(retries={"max_attempts": 5, "mode": "adaptive"},
                         s3={"addressing_style": "path"}),
    }
    if settings.s3_endpoint_url:
        kwargs["endpoint_url"] = settings.s3_endpoint_url
    if settings.s3_access_key:
        kwargs["aws_access_key_id"] = settings.s3_access_key
        kwargs["aws_secret_access_key"] = settings.s3_secret_key
    return boto3.session.Session().client("s3", **kwargs)


def open_source(location: str, settings: Settings, include: tuple[str, ...] = ()) -> Source:
    """A source for a folder path, a ``file://`` URI or an ``s3://bucket/prefix`` URI."""
    if location.startswith("s3://"):
        return S3Source(location, settings, include)
    if location.startswith("file://"):
        location = unquote(urlparse(location).path)
    elif "://" in location:
        raise SourceError(f"unsupported source {location!r}: use a folder or s3://bucket/prefix")
    return LocalSource(Path(location), include)


def fetcher_for(uri: str, settings: Settings) -> Source:
    """A source able to fetch ``uri`` (used when only URIs are at hand, e.g. a query image)."""
    if uri.startswith("s3://"):
        bucket, _ = split_s3_uri(uri)
        return S3Source(f"s3://{bucket}/", settings)
    if uri.startswith("file://"):
        return LocalFiles()
    raise SourceError(f"cannot fetch {uri!r}: unsupported scheme")
