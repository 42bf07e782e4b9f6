"""HTTP gateway: FastAPI on top of :class:`query.client.AsyncSearchClient`.

The gateway holds no model and no Milvus connection; it turns HTTP into queue requests,
so it is cheap to scale and never competes with workers for the encoder. Endpoints:

- ``POST /v1/search`` (JSON) and ``POST /v1/search/image`` (multipart upload, size-limited
  while reading), both behind ``X-API-Key`` when ``IMGSEARCH_GATEWAY_API_KEY`` is set;
- ``GET /healthz`` (the process answers), ``GET /readyz`` (Redis answers and at least one
  warm worker sent a heartbeat recently);
- ``GET /metrics`` (Prometheus: requests, latency, worker batch sizes, queue depth);
- the OpenAPI schema at ``/openapi.json`` and docs at ``/docs``.

Errors map to statuses: bad request 400, bad key 401, unknown image 404, too large 413,
worker failure 502, timeout 504; the body is ``{"error": {"code", "message"}}``.
"""

from __future__ import annotations

import json
import secrets
import time
from contextlib import asynccontextmanager
from typing import Any, Literal

from fastapi import Depends, FastAPI, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field

from common.settings import Settings
from query.client import AsyncSearchClient, BadRequest, SearchError, SearchResult, SearchTimeout, ServerError
from query.protocol import MAX_K

STATUS = {"bad_request": 400, "unauthorized": 401, "not_found": 404, "too_large": 413, "server_error": 502,
          "timeout": 504, "not_ready": 503}
STATUS["unprocessable"] = 422  # web page: an indexed image whose source no longer decodes


class FilterModel(BaseModel):
    """One structured filter; see README "Filters" for fields and operators."""

    model_config = ConfigDict(extra="forbid")
    field: str
    op: str
    value: int | str | list[int | str]


class SearchBody(BaseModel):
    """Exactly one of text, image_base64, image_uri, like."""

    model_config = ConfigDict(extra="forbid")
    text: str | None = Field(None, max_length=2000, examples=["a red sneaker"])
    image_base64: str | None = Field(None, description="query image bytes, base64")
    image_uri: str | None = Field(None, description="s3:// URI the worker fetches")
    like: int | str | None = Field(None, description="indexed image id or URI")
    k: int = Field(10, ge=1, le=MAX_K)
    filters: list[FilterModel] = []
    timeout_ms: int | None = Field(None, ge=1, le=600_000)
    channels: list[str] | None = Field(None, description="clip, bm25, dense, phash; default: per query kind",
                                       examples=[["clip", "bm25"]])
    must: list[str] | None = Field(None, description="keep only images whose indexed text has every word")


class HitModel(BaseModel):
    id: int
    uri: str
    score: float
    evidence: dict[str, dict] = Field({}, description="channel -> {rank, score[, text, kind]}")


class SearchResponse(BaseModel):
    hits: list[HitModel]
    worker: str
    batch: int = Field(description="requests the worker answered together with this one")
    took_ms: float


class ErrorBody(BaseModel):
    code: Literal["bad_request", "unauthorized", "not_found", "too_large", "server_error", "timeout", "not_ready",
                  "unprocessable"]
    message: str


class GatewayError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


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


def create_app(settings: Settings) -> FastAPI:
    """The gateway app for ``settings`` (Redis URL, API key, upload limit)."""
    metrics = Metrics()
    state: dict[str, AsyncSearchClient] = {}

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        state["client"] = AsyncSearchClient(settings=settings)
        yield
        await state["client"].close()

    app = FastAPI(title="imgsearch gateway", version="1", lifespan=lifespan,
                  description="Image search over the imgsearch query workers (protocol v1).")
    app.state.metrics = metrics
    key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="required when the gateway has a key")

    async def require_key(key: str | None = Depends(key_header)) -> None:
        expected = settings.gateway_api_key
        if expected and not (key and secrets.compare_digest(key.encode(), expected.encode())):
            raise GatewayError("unauthorized", "missing or wrong X-API-Key")

    @app.exception_handler(GatewayError)
    async def _gateway_error(_request: Request, exc: GatewayError) -> JSONResponse:
        return JSONResponse({"error": {"code": exc.code, "message": exc.message}}, status_code=STATUS[exc.code])

    from fastapi.exceptions import RequestValidationError

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in exc.errors())
        return JSONResponse({"error": {"code": "bad_request", "message": problems}}, status_code=400)

    async def run(kind: str, timeout_ms: int | None, **query: Any) -> SearchResponse:
        started = time.perf_counter()
        outcome = "ok"
        try:
            timeout = timeout_ms / 1000 if timeout_ms else None
            result: SearchResult = await state["client"].search(timeout=timeout, **query)
        except SearchTimeout as exc:
            outcome = "timeout"
            raise GatewayError("timeout", str(exc)) from None
        except BadRequest as exc:
            outcome = exc.code
            raise GatewayError(exc.code if exc.code in STATUS else "bad_request", str(exc)) from None
        except (ServerError, SearchError) as exc:
            outcome = "server_error"
            raise GatewayError("server_error", str(exc)) from None
        finally:
            metrics.requests.labels(kind, outcome).inc()
            metrics.latency.labels(kind).observe(time.perf_counter() - started)
        metrics.batch.observe(result.batch)
        return SearchResponse(hits=[HitModel(**h.to_dict()) for h in result.hits], worker=result.worker,
                              batch=result.batch, took_ms=result.took_ms)

    errors = {s: {"model": dict[str, ErrorBody]} for s in (400, 401, 404, 413, 502, 504)}

    @app.post("/v1/search", response_model=SearchResponse, responses=errors, dependencies=[Depends(require_key)])
    async def search(body: SearchBody) -> SearchResponse:
        """Search by text, base64 image, s3:// image URI, or an indexed image (id or URI)."""
        given = {k: v for k, v in (("text", body.text), ("image_base64", body.image_base64),
                                   ("image_uri", body.image_uri), ("like", body.like)) if v is not None}
        if len(given) != 1:
            raise GatewayError("bad_request", "give exactly one of text, image_base64, image_uri, like")
        (kind, value), = given.items()
        if kind == "image_base64":
            from query.protocol import ProtocolError, decode_image_field

            try:
                value = decode_image_field(value, settings.query_max_image_bytes)
            except ProtocolError as exc:
                raise GatewayError("too_large" if "larger" in str(exc) else "bad_request", str(exc)) from None
            kind = "image"
        elif kind == "image_uri":
            kind = "image"
        filters = [f.model_dump() for f in body.filters]
        return await run(kind, body.timeout_ms, k=body.k, filters=filters, channels=body.channels, must=body.must,
                         **{kind: value})

    @app.post("/v1/search/image", response_model=SearchResponse, responses=errors,
              dependencies=[Depends(require_key)])
    async def search_image(request: Request, file: UploadFile = File(..., description="the query image"),
                           k: int = Form(10, ge=1, le=MAX_K),
                           filters: str = Form("[]", description="JSON list of {field, op, value}"),
                           timeout_ms: int | None = Form(None, ge=1, le=600_000),
                           channels: str = Form("", description="comma-separated; default: per query kind"),
                           must: str = Form("", description="comma-separated words the image's text must hold")
                           ) -> SearchResponse:
        """Search by an uploaded image (multipart); larger than IMGSEARCH_QUERY_MAX_IMAGE_BYTES -> 413."""
        limit = settings.query_max_image_bytes
        data = await file.read(limit + 1)
        if len(data) > limit:
            raise GatewayError("too_large", f"upload is larger than the limit of {limit} bytes")
        if not data:
            raise GatewayError("bad_request", "empty upload")
        try:
            parsed = json.loads(filters)
        except ValueError:
            raise GatewayError("bad_request", "filters must be a JSON list of {field, op, value}") from None
        picked = [c.strip() for c in channels.split(",") if c.strip()] or None
        words = [w.strip() for w in must.split(",") if w.strip()] or None
        return await run("image", timeout_ms, image=data, k=k, filters=parsed, channels=picked, must=words)

    @app.get("/healthz")
    async def healthz() -> dict:
        """Liveness: the gateway process answers (does not look at Redis)."""
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"model": dict[str, ErrorBody]}})
    async def readyz() -> dict:
        """Readiness: Redis answers and at least one warm query worker has a fresh heartbeat."""
        try:
            workers = await state["client"].ready_workers()
        except Exception as exc:
            raise GatewayError("not_ready", f"redis unavailable: {exc}") from None
        metrics.ready.set(len(workers))
        if not workers:
            raise GatewayError("not_ready", "no warm query worker has sent a heartbeat recently")
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

    webapp.install(app, settings, lambda: state["client"], require_key, GatewayError)
    return app
