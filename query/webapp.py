"""The web page and the endpoints behind it, mounted on the gateway (:mod:`query.gateway`).

- ``GET /`` the page, ``/static/*`` its HTML/CSS/JS (shipped in the package, no build step,
  nothing from a CDN);
- ``GET /v1/capabilities`` search channels (the protocol's CHANNELS), filter fields and
  their operators, limits, and whether an API key is required: the page builds its
  toggles and filter editor from this, so it follows the server;
- ``GET /v1/thumbnails/{id}?size=`` a JPEG of an *indexed* image (looked up through a query
  worker; no path or URI from the caller is ever read), cached;
- ``POST /v1/graph`` k-means groups, similarity edges and a layout for up to 100 result ids;
- ``GET /v1/map`` a t-SNE map of (a sample of) the collection, cached until its count changes;
- ``GET /v1/stats`` collection size and model;
- ``GET /v1/jobs``, ``GET /v1/jobs/{id}/dead-letters`` ingest jobs (common.jobs in Redis)
  with progress and rate.

Every data endpoint sits behind the gateway's API key like ``/v1/search``. Ids go out as
strings: they are 63-bit and JavaScript numbers hold 53.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from pathlib import Path

from fastapi import Depends, FastAPI, Query
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field

from common.settings import Settings
from query import explore
from query.client import AsyncSearchClient, SearchError
from query.filters import FIELDS, INT_OPS, STRING_OPS
from query.protocol import REQUEST_KEYS
from query.thumbnails import ThumbnailCache, ThumbnailError, thumbnail
from query.vocabulary import CHANNELS, MAX_IMAGE_ID, MAX_K, SCHEMA_VERSION

STATIC_DIR = Path(__file__).resolve().parent / "static"
MAX_GRAPH_NODES = 100
THUMB_STATUS = {"not_found": "not_found", "too_large": "too_large", "unprocessable": "unprocessable",
                "fetch_error": "server_error"}


class GraphBody(BaseModel):
    """Ids of a result set (best first), e.g. the top 50 hits of a search."""

    model_config = ConfigDict(extra="forbid", strict=True)
    ids: list[int] = Field(min_length=1, max_length=MAX_GRAPH_NODES)
    groups: int | None = Field(None, ge=1, le=explore.MAX_GROUPS)
    neighbours: int = Field(3, ge=1, le=10)


class MapCache:
    """The last map per (collection, count, sample size); one computation at a time."""

    def __init__(self) -> None:
        self.entries: dict[tuple, dict] = {}
        self.lock = asyncio.Lock()
        self.computed = 0


def install(app: FastAPI, settings: Settings, client_of: Callable[[], AsyncSearchClient], require_key,
            error: Callable[[str, str], Exception], error_of: Callable[[SearchError], Exception]) -> None:
    """Add the page and its endpoints to the gateway ``app``.

    ``client_of`` returns the gateway's client (made in its lifespan), ``require_key`` is its
    API-key dependency, ``error(code, message)`` builds its error exception and
    ``error_of(exc)`` maps a client error to one (by code)."""
    thumbs = ThumbnailCache(settings.thumb_cache_mb * 1024 * 1024)
    maps = MapCache()
    app.state.thumbnails, app.state.maps = thumbs, maps
    jobs_store: list = []
    keyed = [Depends(require_key)]

    async def op(name: str, **args) -> dict:
        try:
            return await client_of().op(name, **args)
        except SearchError as exc:  # mapped by its code (timeout 504, overloaded 503, ...)
            raise error_of(exc) from None

    async def vectors_of(ids: list[int]) -> tuple[list[dict], object]:
        result = await op("rows", ids=ids, vectors=True)
        by_id = {int(r["id"]): r for r in result["rows"]}
        rows = [by_id[i] for i in dict.fromkeys(ids) if i in by_id]
        from query.ops import decode_vectors

        return rows, decode_vectors(rows)

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.get("/v1/capabilities")
    async def capabilities() -> dict:
        """What the page may offer: channels, filter fields with their operators, limits."""
        return {"schema_version": SCHEMA_VERSION, "channels": list(CHANNELS), "max_k": MAX_K,
                "filter_fields": {name: list(STRING_OPS if kind is str else INT_OPS) for name, kind in FIELDS.items()},
                "must": "must" in REQUEST_KEYS,  # "image text must hold these words" (fused search)
                "thumb_max_size": settings.thumb_max_size, "graph_max_nodes": MAX_GRAPH_NODES,
                "api_key_required": bool(settings.gateway_api_key),
                "indexing": bool(getattr(app.state, "indexing", False)),  # /v1/images: detail panel, upload
                "index_key_required": bool(settings.gateway_index_key)}

    @app.get("/v1/stats", dependencies=keyed)
    async def stats() -> dict:
        """Collection name, image count and model, as a query worker sees them."""
        return await op("stats")

    @app.get("/v1/thumbnails/{image_id}", dependencies=keyed, response_class=Response,
             responses={200: {"content": {"image/jpeg": {}}}})
    async def thumbnail_of(image_id: int = PathParam(ge=1, le=MAX_IMAGE_ID),
                           size: int = Query(256, ge=16, description="longest edge in pixels")) -> Response:
        """JPEG thumbnail of an indexed image: 404 unknown id or vanished object, 413 over the
        byte/pixel limits, 422 undecodable source, 400 size over IMGSEARCH_THUMB_MAX_SIZE."""
        if size > settings.thumb_max_size:
            raise error("bad_request", f"size must be at most {settings.thumb_max_size} (IMGSEARCH_THUMB_MAX_SIZE)")
        result = await op("rows", ids=[image_id])
        if not result["rows"]:
            raise error("not_found", f"no indexed image with id {image_id}")
        row = result["rows"][0]
        try:
            data = await asyncio.to_thread(thumbnail, row, size, settings, thumbs)
        except ThumbnailError as exc:
            raise error(THUMB_STATUS.get(exc.code, "server_error"), str(exc)) from None
        return Response(data, media_type="image/jpeg",
                        headers={"Cache-Control": "private, max-age=600",
                                 "ETag": _etag(row, size)})

    @app.post("/v1/graph", dependencies=keyed)
    async def graph(body: GraphBody) -> dict:
        """Groups (k-means), edges to each node's most similar neighbours (cosine) and a layout."""
        rows, vectors = await vectors_of(body.ids)
        if not rows:
            raise error("not_found", "none of the ids is indexed")
        return await asyncio.to_thread(explore.results_graph, rows, vectors, body.groups, body.neighbours)

    @app.get("/v1/map", dependencies=keyed)
    async def collection_map(refresh: bool = False) -> dict:
        """t-SNE map of up to IMGSEARCH_MAP_SAMPLE images; recomputed only when the count changes."""
        count = int((await op("stats"))["count"])
        key = (settings.collection, count, settings.map_sample)
        async with maps.lock:
            cached = maps.entries.get(key)
            if cached is not None and not refresh:
                return {**cached, "cached": True}
            sample = await op("sample", n=settings.map_sample, vectors=True, timeout=60)
            from query.ops import decode_vectors

            rows = sample["rows"]
            started = time.perf_counter()
            result = await asyncio.to_thread(explore.collection_map, rows, decode_vectors(rows), count)
            result.update(computed_at=time.time(), compute_s=round(time.perf_counter() - started, 3))
            maps.entries = {key: result}  # only the newest map is worth keeping
            maps.computed += 1
            return {**result, "cached": False}

    def job_store():
        if not jobs_store:
            if getattr(app.state, "job_store", None) is not None:  # embedded serve: jobs of this process
                jobs_store.append(app.state.job_store)
            elif settings.redis_url:
                from common.jobs import JobStore

                jobs_store.append(JobStore.from_url(settings.redis_url))
            else:
                jobs_store.append(NoJobs())
        return jobs_store[0]

    @app.get("/v1/jobs", dependencies=keyed)
    async def jobs(limit: int = Query(20, ge=1, le=200)) -> dict:
        """Newest ingest jobs with progress (processed of listed), rate (objects/s) and ETA."""
        listed = await asyncio.to_thread(lambda: job_store().list(limit))
        return {"jobs": [job_view(j) for j in listed], "now": time.time()}

    @app.get("/v1/jobs/{job_id}/dead-letters", dependencies=keyed)
    async def dead_letters(job_id: str = PathParam(pattern=r"^[A-Za-z0-9_-]{1,64}$")) -> dict:
        """The job's dead letters: uri, reason, message, attempts."""
        from common.jobs import JobNotFoundError

        try:
            entries = await asyncio.to_thread(lambda: job_store().dead_letters(job_id))
        except JobNotFoundError as exc:
            raise error("not_found", str(exc)) from None
        return {"job": job_id, "dead_letters": entries}


class NoJobs:
    """The job store of an embedded gateway that runs no ingest: no jobs."""

    def list(self, limit: int) -> list:
        return []

    def dead_letters(self, job_id: str) -> list[dict]:
        from common.jobs import JobNotFoundError

        raise JobNotFoundError(f"no job {job_id!r} (embedded serve keeps no job history)")


def _etag(row: dict, size: int) -> str:
    digest = hashlib.blake2b(f"{row['uri']}\n{row.get('etag', '')}\n{size}".encode(), digest_size=12)
    return f'"{digest.hexdigest()}"'


def job_view(job) -> dict:
    """A job as the page shows it: counters plus processed, rate and ETA."""
    now = time.time()
    elapsed = max((job.finished_at or now) - job.created_at, 1e-3)
    processed = job.processed
    rate = processed / elapsed
    left = max(job.counters.get("listed", 0) - processed, 0)
    eta = left / rate if rate > 0 and not job.finished and job.planned else None
    return {**job.to_dict(), "processed": processed, "elapsed_s": round(elapsed, 3), "rate_per_s": round(rate, 3),
            "eta_s": round(eta, 1) if eta is not None else None}
