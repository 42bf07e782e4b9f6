"""HTTP gateway: FastAPI on top of :class:`query.client.AsyncSearchClient`.

The gateway holds no model and no Milvus connection; it turns HTTP into queue requests,
so it is cheap to scale and never competes with workers for the encoder. In embedded mode
(no ``IMGSEARCH_REDIS_URL``) it sits on :class:`query.local.LocalSearchClient` instead: the
same batching and replies from a search service in this process. It reads no file
and fetches no URI a caller names: query images arrive as bytes (base64 or an upload) or
as an ``s3://`` URI that a worker fetches from an allowed bucket. Endpoints:

- ``POST /v1/search`` (JSON) and ``POST /v1/search/image`` (multipart upload), both behind
  ``X-API-Key`` when ``IMGSEARCH_GATEWAY_API_KEY`` is set;
- ``GET /healthz`` (the process answers), ``GET /readyz`` (Redis answers and at least one
  warm worker sent a heartbeat recently);
- ``GET /metrics`` (Prometheus: requests, latency, worker batch sizes, queue depth);
- the OpenAPI schema at ``/openapi.json`` and docs at ``/docs``;
- with an indexer (``imgsearch serve`` passes one): ``/v1/images`` and ``/v1/jobs``
  (:mod:`query.indexing`), writes behind ``IMGSEARCH_GATEWAY_INDEX_KEY`` when it is set.

Trusted hosts, the key and body limits are checked at the ASGI level before any route
runs (:mod:`query.guard`). JSON bodies use the protocol's strict types (``"k": "10"`` and
``"like": true`` are refused, not coerced) and then go through the protocol's own parser.
Errors map to statuses by code (:data:`query.vocabulary.STATUS`): bad request 400, bad key
401, unknown image 404, too large 413, worker failure 502, overloaded 503 (with
``Retry-After``), timeout 504; the body is ``{"error": {"code", "message"}}``.
"""

from __future__ import annotations

import json
import secrets
import time
from contextlib import asynccontextmanager
from typing import Any, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field

from common.errors import QueryError
from common.settings import Settings
from query.client import AsyncSearchClient, SearchError, SearchResult
from query.guard import Guard
from query.vocabulary import (
    BAD_REQUEST,
    CALLER_CODES,
    ERROR_CODES,
    MAX_K,
    MAX_TEXT_CHARS,
    MAX_TIMEOUT_MS,
    NOT_READY,
    OVERLOADED,
    RETRY_AFTER_S,
    SERVER_ERROR,
    STATUS,
    TIMEOUT,
    TOO_LARGE,
    UNAUTHORIZED,
    status_of,
)

__all__ = ["STATUS", "create_app"]  # STATUS: code -> HTTP status, from query.vocabulary
FORM_FIELDS = ("file", "k", "filters", "timeout_ms", "channels", "must")
STRICT = ConfigDict(extra="forbid", strict=True)


class FilterModel(BaseModel):
    """One structured filter; see README "Filters" for fields and operators."""

    model_config = STRICT
    field: str
    op: str
    value: int | str | list[int | str]


class SearchBody(BaseModel):
    """Exactly one of text, image_base64, image_uri, like. Types are strict (no coercion)."""

    model_config = STRICT
    text: str | None = Field(None, max_length=MAX_TEXT_CHARS, examples=["a red sneaker"])
    image_base64: str | None = Field(None, description="query image bytes, base64")
    image_uri: str | None = Field(None, description="s3:// URI in an allowed bucket (IMGSEARCH_QUERY_URI_BUCKETS); "
                                  "a worker fetches it")
    like: int | str | None = Field(None, description="indexed image id or URI")
    k: int = Field(10, ge=1, le=MAX_K)
    filters: list[FilterModel] = []
    timeout_ms: int | None = Field(None, ge=1, le=MAX_TIMEOUT_MS)
    channels: list[str] | None = Field(None, description="clip, bm25, dense, phash; default: per query kind",
                                       examples=[["clip", "bm25"]])
    must: list[str] | None = Field(None, description="keep only images whose indexed text has every word")


class HitModel(BaseModel):
    id: int
    uri: str
    score: float
    evidence: dict[str, dict] = Field({}, description="channel -> {rank, score[, text, kind][, coverage]}; "
                                      "coverage (bm25): the share of the query's words its text holds")


class SearchResponse(BaseModel):
    hits: list[HitModel]
    worker: str
    batch: int = Field(description="requests the worker answered together with this one")
    took_ms: float


class ErrorBody(BaseModel):
    code: Literal[ERROR_CODES]  # type: ignore[valid-type]
    message: str


class GatewayError(Exception):
    def __init__(self, code: str, message: str, headers: dict[str, str] | None = None, extra: dict | None = None):
        super().__init__(message)
        self.code, self.message, self.headers = code, message, headers or {}
        self.extra = extra or {}  # more fields of the error body (an image's ingest ``reason``)


def error_of(exc: SearchError) -> GatewayError:
    """A client error -> the gateway's, by its code (Overloaded carries Retry-After)."""
    code = exc.code if exc.code in STATUS else SERVER_ERROR
    headers = {"Retry-After": str(getattr(exc, "retry_after", RETRY_AFTER_S))} if code == OVERLOADED else None
    return GatewayError(code, str(exc), headers)


class Metrics:
    """Prometheus metrics in a registry of their own (one per app, so tests can build many)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("imgsearch_gateway_requests_total", "Search requests by query kind and outcome",
                                ["kind", "outcome"], registry=self.registry)
        self.latency = Histogram("imgsearch_gateway_request_seconds", "Search latency through the queue",
                                 ["kind"], registry=self.registry,
                                 buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
        self.batch = Histogram("imgsearch_query_batch_size", "Requests a worker answered in one batch",
                               registry=self.registry, buckets=(1, 2, 4, 8, 16, 32, 64, 128))
        self.depth = Gauge("imgsearch_query_queue_depth", "Requests in the stream not yet answered",
                           registry=self.registry)
        self.ready = Gauge("imgsearch_query_workers_ready", "Warm workers with a recent heartbeat",
                           registry=self.registry)


def create_app(settings: Settings, indexer=None, local_token: str | None = None) -> FastAPI:
    """The gateway app for ``settings`` (Redis URL, API key, body and image limits).

    ``indexer`` (from the command line: :mod:`imgsearch.indexer`) adds the indexing
    endpoints (:mod:`query.indexing`); without it the gateway only searches. ``local_token``
    (embedded serve: the data dir holder's) is what a caller shows to have a folder indexed."""
    metrics = Metrics()
    state: dict[str, AsyncSearchClient] = {}

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        if settings.embedded:  # no Redis: the search service runs in this process (query.local)
            from query.local import LocalSearchClient

            client = LocalSearchClient(settings)
            client.start()
            state["client"] = client  # type: ignore[assignment]
        else:
            state["client"] = AsyncSearchClient(settings=settings)
        yield
        await state["client"].close()

    app = FastAPI(title="imgsearch gateway", version="1", lifespan=lifespan,
                  description="Image search over the imgsearch query workers (protocol v1).")
    app.state.metrics = metrics
    image_limit = settings.query_max_image_bytes
    body_limits = {"/v1/search": 4 * (image_limit // 3 + 1) + settings.gateway_max_body_bytes,
                   "/v1/search/image": image_limit + settings.gateway_max_body_bytes}
    app.state.body_limits = body_limits  # path -> body bytes; routes that take more add theirs here
    app.add_middleware(Guard, settings=settings, limits=body_limits)
    key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="required when the gateway has a key")

    async def require_key(key: str | None = Depends(key_header)) -> None:
        """The guard checked the key before the body was read; this documents it in OpenAPI
        and checks again (a route mounted outside /v1/ by mistake stays closed)."""
        expected = settings.gateway_api_key
        keys = [k for k in (expected, settings.gateway_index_key) if k]  # the index key searches too
        if expected and not (key and any(secrets.compare_digest(key.encode(), k.encode()) for k in keys)):
            raise GatewayError(UNAUTHORIZED, "missing or wrong X-API-Key")

    @app.exception_handler(GatewayError)
    async def _gateway_error(_request: Request, exc: GatewayError) -> JSONResponse:
        return JSONResponse({"error": {"code": exc.code, "message": exc.message, **exc.extra}},
                            status_code=status_of(exc.code),
                            headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}"
                             for e in exc.errors()[:10])
        return JSONResponse({"error": {"code": BAD_REQUEST, "message": problems[:2000]}}, status_code=400)

    async def run(kind: str, timeout_ms: int | None, **query: Any) -> SearchResponse:
        started = time.perf_counter()
        outcome = "ok"
        try:
            timeout = timeout_ms / 1000 if timeout_ms else None
            result: SearchResult = await state["client"].search(timeout=timeout, **query)
        except SearchError as exc:
            error = error_of(exc)
            outcome = error.code if error.code in CALLER_CODES + (TIMEOUT, OVERLOADED) else SERVER_ERROR
            raise error from None
        finally:
            metrics.requests.labels(kind, outcome).inc()
            metrics.latency.labels(kind).observe(time.perf_counter() - started)
        metrics.batch.observe(result.batch)
        return SearchResponse(hits=[HitModel(**h.to_dict()) for h in result.hits], worker=result.worker,
                              batch=result.batch, took_ms=result.took_ms)

    errors = {s: {"model": dict[str, ErrorBody]} for s in (400, 401, 404, 413, 502, 503, 504)}

    @app.post("/v1/search", response_model=SearchResponse, responses=errors, dependencies=[Depends(require_key)])
    async def search(body: SearchBody) -> SearchResponse:
        """Search by text, base64 image, s3:// image URI (fetched by a worker from an allowed
        bucket), or an indexed image (id or URI)."""
        given = {k: v for k, v in (("text", body.text), ("image_base64", body.image_base64),
                                   ("image_uri", body.image_uri), ("like", body.like)) if v is not None}
        if len(given) != 1:
            raise GatewayError(BAD_REQUEST, "give exactly one of text, image_base64, image_uri, like")
        (kind, value), = given.items()
        if kind == "image_base64":
            from query.protocol import ProtocolError, decode_image_field

            try:
                value = decode_image_field(value, image_limit)
            except ProtocolError as exc:
                raise GatewayError(exc.code, str(exc)) from None
            kind = "image"
        filters = [f.model_dump() for f in body.filters]
        return await run("image" if kind == "image_uri" else kind, body.timeout_ms, k=body.k, filters=filters,
                         channels=body.channels, must=body.must, **{kind: value})

    upload_schema = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["file"], "properties": {
            "file": {"type": "string", "format": "binary", "description": "the query image"},
            "k": {"type": "integer", "minimum": 1, "maximum": MAX_K, "default": 10},
            "filters": {"type": "string", "description": "JSON list of {field, op, value}", "default": "[]"},
            "timeout_ms": {"type": "integer", "minimum": 1, "maximum": MAX_TIMEOUT_MS},
            "channels": {"type": "string", "description": "comma-separated; default: per query kind"},
            "must": {"type": "string", "description": "comma-separated words the image's text must hold"}}}}}}}

    @app.post("/v1/search/image", response_model=SearchResponse, responses=errors,
              dependencies=[Depends(require_key)], openapi_extra=upload_schema)
    async def search_image(request: Request) -> SearchResponse:
        """Search by an uploaded image (multipart, parsed in memory: nothing is spooled to
        disk); a file over IMGSEARCH_QUERY_MAX_IMAGE_BYTES -> 413."""
        from query.multipart import parse_form

        try:
            form = parse_form(await request.body(), request.headers.get("content-type", ""))
            unknown = sorted(set(form) - set(FORM_FIELDS))
            if unknown:
                raise QueryError(f"unknown form fields: {', '.join(repr(u)[:40] for u in unknown[:5])}")
            if "file" not in form or form["file"].filename is None:
                raise QueryError("the form needs a file part named 'file'")
            data = bytes(form["file"].data)
            if len(data) > image_limit:
                raise GatewayError(TOO_LARGE, f"upload is larger than the limit of {image_limit} bytes")
            if not data:
                raise QueryError("empty upload")
            k = _form_int(form, "k", 10)
            timeout_ms = _form_int(form, "timeout_ms", None)
            if timeout_ms is not None and not 1 <= timeout_ms <= MAX_TIMEOUT_MS:
                raise QueryError(f"timeout_ms must be from 1 to {MAX_TIMEOUT_MS}")
            raw_filters = form["filters"].text() if "filters" in form else "[]"
            try:
                parsed = json.loads(raw_filters)
            except (ValueError, RecursionError):
                raise QueryError("filters must be a JSON list of {field, op, value}") from None
            picked = _form_list(form, "channels")
            words = _form_list(form, "must")
        except QueryError as exc:
            raise GatewayError(exc.code, str(exc)) from None
        return await run("image", timeout_ms, image=data, k=k, filters=parsed, channels=picked, must=words)

    @app.get("/healthz")
    async def healthz() -> dict:
        """Liveness: the gateway process answers (does not look at Redis)."""
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"model": dict[str, ErrorBody]}})
    async def readyz() -> dict:
        """Readiness: Redis answers and at least one warm query worker has a fresh heartbeat
        (embedded: the in-process search service is warm)."""
        try:
            workers = await state["client"].ready_workers()
        except Exception as exc:
            raise GatewayError(NOT_READY, f"redis unavailable: {type(exc).__name__}") from None
        metrics.ready.set(len(workers))
        if not workers:
            raise GatewayError(NOT_READY, "the embedded search service is still warming up" if settings.embedded
                               else "no warm query worker has sent a heartbeat recently")
        return {"status": "ready", "workers": workers}

    @app.get("/metrics")
    async def prometheus() -> Response:
        """Prometheus text format; queue depth and ready workers are read from Redis on scrape."""
        try:
            metrics.depth.set(await state["client"].queue_depth())
            metrics.ready.set(len(await state["client"].ready_workers()))
        except Exception:  # scrape still succeeds with the last known values
            pass
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    from query import webapp

    webapp.install(app, settings, lambda: state["client"], require_key, GatewayError, error_of)
    if indexer is not None:
        from query import indexing

        app.state.job_store = indexer
        app.state.indexing = True
        indexing.install(app, settings, indexer, require_key, GatewayError, local_token)
    app.state.client_of = lambda: state["client"]
    return app


def _form_int(form: dict, name: str, default: int | None) -> int | None:
    """A form field of ASCII digits (forms carry text; nothing else is coerced)."""
    if name not in form:
        return default
    text = form[name].text()
    if not (text.isascii() and text.isdecimal() and len(text) <= 12):
        raise QueryError(f"{name} must be a whole number, got {text[:20]!r}")
    return int(text)


def _form_list(form: dict, name: str) -> list[str] | None:
    if name not in form:
        return None
    return [w.strip() for w in form[name].text().split(",") if w.strip()] or None
