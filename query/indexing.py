"""Indexing endpoints of the gateway, behind its API key: images and jobs.

- ``POST /v1/images``: multipart ``file`` (+ optional ``name``), or JSON ``{"image_base64",
  "name"}`` or ``{"uri": "s3://bucket/key"}`` (a bucket of IMGSEARCH_QUERY_URI_BUCKETS).
  Bytes are checked with ingest's decoder (a bad one gets ingest's reason: 413 ``too_large``,
  422 ``unprocessable`` with ``reason`` unsupported_type / undecodable / too_many_pixels /
  empty) and stored under IMGSEARCH_UPLOAD_URI (embedded: the data dir); then the object is
  indexed through the normal stages. Embedded answers once it is searchable
  (``"searchable": true``); distributed answers 202 with the job that indexes it;
- ``GET /v1/images/{id}``: metadata, OCR lines, captions, tags and near-duplicates;
- ``DELETE /v1/images/{id}``: the image and its text rows (404 when not indexed);

- ``POST /v1/jobs`` ``{"source": "s3://bucket/prefix" | folder, "include": [...], "kind":
  "ingest" | "reindex"}`` starts an ingest or re-index and answers the job (202);
- ``GET /v1/jobs/{id}`` the job: counters, status, ``finished``, and (embedded) its summary.

The work is done by an *indexer* handed to :func:`query.gateway.create_app` by the command
line (``imgsearch serve``): the query side never imports ingest. Embedded, jobs run in the
serving process; distributed, they are submitted to the Celery workers. A source that
names a bucket outside ``IMGSEARCH_QUERY_URI_BUCKETS`` (the gateway's one allow-list of
buckets) is refused with 400 ``bad_request``. A local folder is accepted only by an
embedded gateway, and only with the ``X-Imgsearch-Local-Token`` of the data dir's holder
record (:mod:`common.datadir`, readable by the serving user only): that is ``imgsearch
ingest`` handing its folder to the server that holds the data dir. Without that token no
caller, not even one on the same machine, makes the server read a folder.
"""

from __future__ import annotations

import asyncio
import hmac
from typing import Literal

from fastapi import Depends, FastAPI, Request
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from common.errors import ImageError, ImgsearchError
from common.settings import Settings
from query.vocabulary import MAX_IMAGE_ID  # noqa: E402

MAX_INCLUDE = 32
FORM_FIELDS = ("file", "name")
LOCAL_TOKEN_HEADER = "X-Imgsearch-Local-Token"


class JobBody(BaseModel):
    """A source to index: an s3:// prefix in an allowed bucket, or (embedded) a folder."""

    model_config = ConfigDict(extra="forbid", strict=True)
    source: str = Field(min_length=1, max_length=2048, examples=["s3://photos/2024/"])
    include: list[str] = Field([], max_length=MAX_INCLUDE, description="glob patterns under the source")
    kind: Literal["ingest", "reindex"] = "ingest"


def check_source(source: str, settings: Settings, local_caller: bool = False) -> None:
    """A caller may name only buckets of IMGSEARCH_QUERY_URI_BUCKETS (the gateway's allow-list
    of buckets it may read); a local folder only when the gateway runs embedded and the caller
    showed the data dir's local token (``local_caller``)."""
    from common.errors import QueryError

    if source.startswith("s3://"):
        bucket = source[5:].split("/", 1)[0]
        if bucket not in settings.query_buckets():
            raise QueryError(f"bucket {bucket!r} is not in IMGSEARCH_QUERY_URI_BUCKETS")
        return
    if "://" in source and not source.startswith("file://"):
        raise QueryError("source must be an s3:// prefix or a folder")
    if not settings.embedded:
        raise QueryError("a distributed gateway indexes s3:// sources only (its workers cannot read your folders)")
    if not local_caller:
        raise QueryError("a folder is indexed only for `imgsearch ingest` run by the serving user on this machine "
                         "(it shows the data dir's local token); other callers name s3:// sources")


class ImageBody(BaseModel):
    """Exactly one of image_base64 (with an optional file name) and uri."""

    model_config = ConfigDict(extra="forbid", strict=True)
    image_base64: str | None = None
    name: str | None = Field(None, max_length=255)
    uri: str | None = Field(None, max_length=2048, examples=["s3://photos/2024/cat.jpg"])


def _status_of_reason(reason: str) -> str:
    return {"too_large": "too_large", "too_many_pixels": "too_large", "not_found": "not_found"}.get(
        reason, "unprocessable")


def is_local_caller(request: Request, local_token: str | None) -> bool:
    """Whether the request carries the data dir's local token (constant-time compare)."""
    shown = request.headers.get(LOCAL_TOKEN_HEADER, "")
    return bool(local_token) and hmac.compare_digest(shown.encode(), local_token.encode())


def install(app: FastAPI, settings: Settings, indexer, require_key, error, local_token: str | None = None) -> None:
    import secrets

    from fastapi.security import APIKeyHeader

    keyed = [Depends(require_key)]
    key_header = APIKeyHeader(name="X-API-Key", auto_error=False,
                              description="IMGSEARCH_GATEWAY_INDEX_KEY, or the API key when there is none")

    async def require_index_key(key: str | None = Depends(key_header)) -> None:
        """Writes need the index key when one is set (the API key alone then only searches)."""
        expected = settings.gateway_index_key or settings.gateway_api_key
        if expected and not (key and secrets.compare_digest(key.encode(), expected.encode())):
            raise error("unauthorized", "indexing needs IMGSEARCH_GATEWAY_INDEX_KEY in X-API-Key"
                        if settings.gateway_index_key else "missing or wrong X-API-Key")

    writes = [Depends(require_index_key)]
    app.state.body_limits["/v1/images"] = 4 * (settings.max_image_bytes // 3 + 1) + settings.gateway_max_body_bytes

    def image_error(exc: ImageError):
        return error(_status_of_reason(exc.reason), f"{exc.reason}: {exc.message}", extra={"reason": exc.reason})

    @app.post("/v1/images", dependencies=writes, responses={201: {}, 202: {}})
    async def add_image(request: Request) -> JSONResponse:
        """Index one image: uploaded bytes (multipart ``file`` or JSON ``image_base64``) or an
        ``s3://`` object of an allowed bucket; the answer says when it is searchable."""
        from common.errors import QueryError

        try:
            kind, value, name = await _image_input(request, settings)
            if kind == "uri":
                result = await asyncio.to_thread(indexer.index_uri, value)
            else:
                result = await asyncio.to_thread(indexer.upload, value, name)
        except ImageError as exc:
            raise image_error(exc) from None
        except QueryError as exc:
            raise error(exc.code, str(exc)) from None
        except ImgsearchError as exc:  # uploads not configured, a run refused, a bad source
            raise error("bad_request", str(exc)) from None
        return JSONResponse(result, status_code=201 if result.get("searchable") else 202)

    async def of_image(op, image_id: int) -> dict:
        """``op(image_id)`` off the event loop; None (no such indexed image) is a 404."""
        found = await asyncio.to_thread(op, image_id)
        if found is None:
            raise error("not_found", f"no indexed image with id {image_id}")
        return found

    @app.get("/v1/images/{image_id}", dependencies=keyed)
    async def image_detail(image_id: int = PathParam(ge=1, le=MAX_IMAGE_ID)) -> dict:
        """Metadata, OCR lines, captions, tags and near-duplicates of an indexed image."""
        return await of_image(indexer.detail, image_id)

    @app.delete("/v1/images/{image_id}", dependencies=writes)
    async def delete_image(image_id: int = PathParam(ge=1, le=MAX_IMAGE_ID)) -> dict:
        """Remove an indexed image and its text rows (and the bytes of an upload)."""
        return await of_image(indexer.delete, image_id)

    @app.post("/v1/jobs", dependencies=writes, status_code=202)
    async def start_job(body: JobBody, request: Request) -> dict:
        """Start an ingest or a re-index of a source; follow it with GET /v1/jobs/{id}."""
        from common.errors import QueryError

        try:
            check_source(body.source, settings, is_local_caller(request, local_token))
            return await asyncio.to_thread(indexer.start, body.source, tuple(body.include), body.kind)
        except QueryError as exc:
            raise error(exc.code, str(exc)) from None
        except ImgsearchError as exc:  # bad source (not found, not a folder), run refused
            raise error("bad_request", str(exc)) from None

    @app.get("/v1/jobs/{job_id}", dependencies=keyed)
    async def job(job_id: str = PathParam(pattern=r"^[A-Za-z0-9_-]{1,64}$")) -> dict:
        """One job: status, counters, ``finished``; embedded jobs also carry their summary."""
        from common.jobs import JobNotFoundError

        try:
            return await asyncio.to_thread(indexer.get, job_id)
        except JobNotFoundError as exc:
            raise error("not_found", str(exc)) from None


async def _image_input(request: Request, settings: Settings) -> tuple[str, object, str | None]:
    """("uri", uri, None) or ("bytes", data, file name) from a multipart or JSON body."""
    import base64
    import binascii
    import json

    from common.errors import QueryError

    content_type = request.headers.get("content-type", "")
    body = await request.body()
    if content_type.startswith("multipart/form-data"):
        from query.multipart import parse_form

        form = parse_form(body, content_type)
        unknown = sorted(set(form) - set(FORM_FIELDS))
        if unknown:
            raise QueryError(f"unknown form fields: {', '.join(repr(u)[:40] for u in unknown[:5])}")
        if "file" not in form or form["file"].filename is None:
            raise QueryError("the form needs a file part named 'file'")
        name = form["name"].text() if "name" in form else form["file"].filename
        return "bytes", bytes(form["file"].data), name
    try:
        doc = ImageBody.model_validate(json.loads(body))
    except (ValueError, RecursionError) as exc:
        raise QueryError(f"body must be JSON {{image_base64, name}} or {{uri}}, or a multipart upload: "
                         f"{str(exc)[:300]}") from None
    if (doc.image_base64 is None) == (doc.uri is None):
        raise QueryError("give exactly one of image_base64 and uri")
    if doc.uri is not None:
        from query.protocol import check_image_uri

        uri = check_image_uri(doc.uri)
        bucket = uri[5:].split("/", 1)[0]
        if bucket not in settings.query_buckets():
            raise QueryError(f"bucket {bucket!r} is not in IMGSEARCH_QUERY_URI_BUCKETS")
        return "uri", uri, None
    try:
        data = base64.b64decode(doc.image_base64, validate=True)
    except (binascii.Error, ValueError):
        raise QueryError("image_base64 is not valid base64") from None
    return "bytes", data, doc.name
