"""Indexing endpoints of the gateway, behind its API key: jobs of a source.

- ``POST /v1/jobs`` ``{"source": "s3://bucket/prefix" | folder, "include": [...], "kind":
  "ingest" | "reindex"}`` starts an ingest or re-index and answers the job (202);
- ``GET /v1/jobs/{id}`` the job: counters, status, ``finished``, and (embedded) its summary.

The work is done by an *indexer* handed to :func:`query.gateway.create_app` by the command
line (``imgsearch serve``): the query side never imports ingest. Embedded, jobs run in the
serving process; distributed, they are submitted to the Celery workers. A source that
names a bucket outside ``IMGSEARCH_QUERY_URI_BUCKETS`` (the gateway's one allow-list of
buckets) is refused with 400 ``bad_request``. A local folder is accepted only by an
embedded gateway, and only from a caller on the same machine (loopback): that is
``imgsearch ingest`` handing its folder to the server that holds the data dir.
"""

from __future__ import annotations

import asyncio
from typing import Literal

from fastapi import Depends, FastAPI, Request
from fastapi import Path as PathParam
from pydantic import BaseModel, ConfigDict, Field

from common.errors import ImgsearchError
from common.settings import Settings

MAX_INCLUDE = 32
LOOPBACK = ("127.0.0.1", "::1")


class JobBody(BaseModel):
    """A source to index: an s3:// prefix in an allowed bucket, or (embedded) a folder."""

    model_config = ConfigDict(extra="forbid", strict=True)
    source: str = Field(min_length=1, max_length=2048, examples=["s3://photos/2024/"])
    include: list[str] = Field([], max_length=MAX_INCLUDE, description="glob patterns under the source")
    kind: Literal["ingest", "reindex"] = "ingest"


def check_source(source: str, settings: Settings, local_caller: bool = False) -> None:
    """A caller may name only buckets of IMGSEARCH_QUERY_URI_BUCKETS (the gateway's allow-list
    of buckets it may read); a local folder only when the gateway runs embedded."""
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
        raise QueryError("a folder can be indexed only by a caller on the serving machine; others name s3:// sources")


def install(app: FastAPI, settings: Settings, indexer, require_key, error) -> None:
    keyed = [Depends(require_key)]

    @app.post("/v1/jobs", dependencies=keyed, status_code=202)
    async def start_job(body: JobBody, request: Request) -> dict:
        """Start an ingest or a re-index of a source; follow it with GET /v1/jobs/{id}."""
        from common.errors import QueryError

        try:
            client = request.client.host if request.client else ""
            check_source(body.source, settings, client in LOOPBACK)
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
