"""Client library for the HTTP gateway: search, index, inspect and delete images, run jobs.

``GatewayClient("http://127.0.0.1:8080", api_key=...)`` speaks the gateway's JSON API with
the standard library only (no extra dependency), so any service can add or remove one image
without waiting for a re-index. Errors are the gateway's typed errors: :class:`GatewayError`
with ``code`` (bad_request, unauthorized, not_found, too_large, unprocessable, overloaded,
timeout, ...), ``status`` and, for an image ingest refused, ``reason`` (ingest's reason:
unsupported_type, undecodable, too_large, too_many_pixels, empty).
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from typing import Any

from common.errors import QueryError


class GatewayError(QueryError):
    def __init__(self, status: int, code: str, message: str, reason: str | None = None):
        super().__init__(f"{code}: {message}")
        self.status, self.code, self.message, self.reason = status, code, message, reason


class GatewayClient:
    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 120.0):
        self.base = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout

    def _call(self, method: str, path: str, body: dict | None = None) -> Any:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        if self.api_key:
            headers["X-API-Key"] = self.api_key
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as resp:  # noqa: S310 (caller's gateway)
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            try:
                error = json.loads(exc.read())["error"]
            except (ValueError, KeyError, TypeError):
                error = {"code": "server_error", "message": f"HTTP {exc.code}"}
            raise GatewayError(exc.code, error.get("code", "server_error"), error.get("message", ""),
                               error.get("reason")) from None

    # -- search ---------------------------------------------------------------------------
    def search(self, text: str | None = None, image: bytes | None = None, like: int | str | None = None,
               image_uri: str | None = None, k: int = 10, **options) -> dict:
        """``{"hits": [...], "worker", "batch", "took_ms"}``; options: filters, channels, must, timeout_ms."""
        body: dict = {"k": k, **{key: v for key, v in options.items() if v is not None}}
        if text is not None:
            body["text"] = text
        if image is not None:
            body["image_base64"] = base64.b64encode(image).decode("ascii")
        if like is not None:
            body["like"] = like
        if image_uri is not None:
            body["image_uri"] = image_uri
        return self._call("POST", "/v1/search", body)

    # -- images ---------------------------------------------------------------------------
    def index_image(self, data: bytes, name: str | None = None) -> dict:
        """Store and index image bytes: ``{"id", "uri", "status", "searchable"[, "job"]}``."""
        body = {"image_base64": base64.b64encode(data).decode("ascii")}
        if name:
            body["name"] = name
        return self._call("POST", "/v1/images", body)

    def index_uri(self, uri: str) -> dict:
        """Index one ``s3://`` object of an allowed bucket."""
        return self._call("POST", "/v1/images", {"uri": uri})

    def image(self, image_id: int | str) -> dict:
        """Metadata, OCR lines, captions, tags and near-duplicates of an indexed image."""
        return self._call("GET", f"/v1/images/{int(image_id)}")

    def delete_image(self, image_id: int | str) -> dict:
        """Remove an image and its text rows."""
        return self._call("DELETE", f"/v1/images/{int(image_id)}")

    # -- jobs -----------------------------------------------------------------------------
    def start_job(self, source: str, include: list[str] | None = None, kind: str = "ingest") -> dict:
        return self._call("POST", "/v1/jobs", {"source": source, "include": include or [], "kind": kind})

    def job(self, job_id: str) -> dict:
        return self._call("GET", f"/v1/jobs/{job_id}")
