"""Embedded commands and the data dir they share (:mod:`common.datadir`).

Commands that open the data dir's Milvus Lite file take the data dir first. When another
process holds it, ``search`` goes through the ``imgsearch serve`` that holds it (its
``/v1/search``), ``ingest`` through its ``/v1/jobs``; anything else stops with one line
naming the holder (pid, command). Nothing here touches Milvus while another process has it.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request

from common.datadir import DataDirBusy, Holding, uses_lite
from common.errors import ImgsearchError, QueryError

# Commands that open the Milvus Lite file of the data dir in embedded mode.
HOLDING = frozenset({"ingest", "search", "duplicates", "demo", "eval", "reindex", "migrate", "collections", "serve"})
THROUGH_SERVER = {"search", "ingest"}


def run_command(name: str, fn, args, settings) -> int:
    """Run ``fn(args, settings)`` holding the data dir, or through its holder's server."""
    if name not in HOLDING or not settings.embedded or not uses_lite(settings):
        return fn(args, settings)
    try:
        holding = Holding(settings, name).__enter__()
    except DataDirBusy as busy:
        if busy.holder.get("url") and name in THROUGH_SERVER:
            return VIA_SERVER[name](args, settings, busy.holder)
        raise
    try:
        args.holding = holding  # serve records its URL in it
        return fn(args, settings)
    finally:
        holding.__exit__(None, None, None)


def call(url: str, settings, method: str = "GET", body: dict | None = None, timeout: float = 120,
         local_token: str | None = None) -> dict:
    """One JSON call to the serving gateway; its typed error -> an error line. ``local_token``
    (from the holder record) lets the server index a folder of this machine."""
    from query.indexing import LOCAL_TOKEN_HEADER

    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"}
    if local_token:
        headers[LOCAL_TOKEN_HEADER] = local_token
    key = settings.gateway_index_key or settings.gateway_api_key  # the index key searches too
    if key:
        headers["X-API-Key"] = key
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:  # noqa: S310 (our own server's URL)
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            error = json.loads(exc.read())["error"]
            message = f"{error['code']}: {error['message']}"
        except (ValueError, KeyError, TypeError):
            message = f"HTTP {exc.code}"
        raise QueryError(f"the server at {url} refused: {message}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise ImgsearchError(f"the server holding the data dir ({url}) does not answer: {exc}") from None


def search_via_server(args, settings, holder: dict) -> int:
    from imgsearch.cli_query import checked_query, parse_channels, parse_where
    from imgsearch.hits_output import print_hits
    from query.fusion import FusedHit

    query = checked_query(args, settings)
    body: dict = {"k": args.k, "filters": parse_where(getattr(args, "where", [])),
                  "channels": parse_channels(args), "must": getattr(args, "must", None) or None}
    (kind, value), = query.items()
    if kind == "image":
        body["image_base64"] = base64.b64encode(value).decode("ascii")
    else:
        body[kind] = value
    reply = call(holder["url"] + "/v1/search", settings, "POST", {k: v for k, v in body.items() if v is not None})
    print_hits([FusedHit.from_dict(h) for h in reply["hits"]], args.json)
    return 0


def ingest_via_server(args, settings, holder: dict) -> int:
    """Start the ingest as a job of the server (POST /v1/jobs, with the holder's local token:
    the server reads a folder only for the user who can read its data dir) and follow it."""
    import os
    from pathlib import Path

    source = args.source
    if "://" not in source:
        source = str(Path(source).expanduser().resolve())
        if not os.path.exists(source):
            raise ImgsearchError(f"source not found: {args.source}")
    base = holder["url"]
    job = call(base + "/v1/jobs", settings, "POST", {"source": source, "include": list(args.include)},
               local_token=holder.get("local_token"))
    job_id = job["id"]
    if not args.json:
        print(f"ingest of {source} runs in the server at {base} (job {job_id})", flush=True)
    while not job.get("finished"):
        time.sleep(0.5)
        job = call(f"{base}/v1/jobs/{job_id}", settings)
    summary = job.get("summary") or {}
    if args.json:
        print(json.dumps(summary or job, indent=2))
    else:
        print(job.get("rendered") or json.dumps(job))
    if job.get("status") == "failed":
        raise ImgsearchError(f"ingest job {job_id} failed: {job.get('error')}")
    return 3 if summary.get("failed") else 0


VIA_SERVER = {"search": search_via_server, "ingest": ingest_via_server}
