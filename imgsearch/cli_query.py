"""CLI pieces of the query side: ``query-worker``, ``serve``, and ``search`` through Redis.

Kept apart from :mod:`imgsearch.cli` so that file only registers them.
"""

from __future__ import annotations

import argparse
import json
import sys


def add_parsers(sub) -> None:
    """Register ``query-worker`` and ``serve`` on the main parser's subcommands."""
    w = sub.add_parser("query-worker", help="answer search requests from Redis (IMGSEARCH_REDIS_URL)",
                       description="Loads and warms the collection's model, then answers search requests "
                       "from the Redis stream IMGSEARCH_QUERY_STREAM in dynamic batches. Run several for "
                       "more throughput; requests held by a worker that dies are taken over by another. "
                       "SIGTERM finishes the batch in hand, then exits 0.")
    w.add_argument("--name", help="consumer name in the group (default: <host>-<pid>)")
    w.add_argument("--max-batch", type=int, help="override IMGSEARCH_QUERY_MAX_BATCH")
    w.add_argument("--max-wait-ms", type=int, help="override IMGSEARCH_QUERY_MAX_WAIT_MS")

    g = sub.add_parser("serve", help="HTTP gateway and web page (FastAPI): embedded, or in front of the query workers",
                       description="Serves the web page at / (search, more like this, results graph, "
                       "collection map, ingest jobs), /v1/search (JSON or multipart image upload), /healthz, /readyz, "
                       "/metrics and the OpenAPI schema at /docs. With IMGSEARCH_REDIS_URL it sits on running query "
                       "workers; without it (embedded) it answers in this process from the data dir, and "
                       "`imgsearch search`/`ingest` on that data dir go through it. "
                       "IMGSEARCH_GATEWAY_API_KEY, when set, is required in X-API-Key.")
    g.add_argument("--host", help="override IMGSEARCH_GATEWAY_HOST")
    g.add_argument("--port", type=int, help="override IMGSEARCH_GATEWAY_PORT")


def add_search_options(parser: argparse.ArgumentParser) -> None:
    """``--where`` structured filters, ``--channels`` and ``--must`` for ``imgsearch search``."""
    parser.add_argument("--channels", metavar="LIST",
                        help="comma-separated search channels fused by RRF: clip (image vectors), bm25 "
                        "(exact words/codes in OCR text, captions, tags), dense (paraphrases of that text), "
                        "phash (near-identical images; image queries only). Default: clip,bm25,dense for "
                        "text; clip,phash,bm25,dense for --image/--like (the query image's OCR text is searched)")
    parser.add_argument("--must", action="append", default=[], metavar="WORD",
                        help="keep only images whose indexed text (OCR, caption, tags) contains WORD "
                        "(case-insensitive whole tokens; repeatable, all must match)")
    parser.add_argument("--where", action="append", default=[], metavar="'FIELD OP VALUE'",
                        help="filter, e.g. --where 'mime == image/png' --where 'width >= 28' "
                        "--where 'uri prefix file:///data/'; ops: == != < <= > >= in not_in prefix "
                        "(in/not_in take a JSON list); repeatable, AND-ed")


def parse_where(items: list[str]) -> list[dict]:
    """``'width >= 28'`` -> ``{"field": "width", "op": ">=", "value": 28}`` (values are JSON when they parse)."""
    from query.filters import FilterError

    out = []
    for item in items:
        parts = item.strip().split(None, 2)
        if len(parts) != 3:
            raise FilterError(f"--where takes 'FIELD OP VALUE', got {item!r}")
        name, op, raw = parts
        try:
            value = json.loads(raw)
            if not isinstance(value, int | list | str) or isinstance(value, bool):
                value = raw
        except ValueError:
            value = raw
        out.append({"field": name, "op": op, "value": value})
    return out


def checked_query(args, settings) -> dict:
    """The query keyword of ``search`` after the checks a worker would make (k, channels,
    must, filters, ids in range, text that encodes), done before any model or server work."""
    from common.errors import QueryError
    from query.filters import parse_filters
    from query.protocol import check_like
    from query.vocabulary import check_k, check_must, check_text, resolve_channels

    query = search_query(args, settings)
    check_k(args.k)
    (kind, value), = query.items()
    check_text(value, f"--{kind.replace('image_uri', 'image')}")
    if kind == "like":
        try:
            check_like(value)
        except QueryError as exc:
            raise QueryError(f"--like takes an image id (1 to 2**63-1) or an indexed URI: {exc}") from None
    resolve_channels(kind, parse_channels(args))
    check_must(getattr(args, "must", None) or None)
    parse_filters(parse_where(getattr(args, "where", [])))
    return query


def search_via_queue(args, settings) -> list:
    """Run ``imgsearch search`` through the query workers (IMGSEARCH_REDIS_URL is set)."""
    from query.client import SearchClient

    query = checked_query(args, settings)
    client = SearchClient(settings=settings)
    try:
        result = client.search(k=args.k, filters=parse_where(getattr(args, "where", [])),
                               channels=parse_channels(args), must=getattr(args, "must", None) or None, **query)
    finally:
        client.close()
    return result.hits


def search_in_process(args, settings) -> list:
    """Run ``imgsearch search`` with the search service in this process (embedded mode)."""
    from query.filters import compile_filters
    from query.search import SearchService

    query = checked_query(args, settings)
    if "image_uri" in query:  # the user's own credentials, in the user's own process
        from query.fetch import fetch_query_image

        query = {"image": fetch_query_image(query["image_uri"], settings, any_bucket=True)}
    expr = compile_filters(parse_where(getattr(args, "where", [])))
    service = SearchService(settings)
    return service.search(k=args.k, filter_expr=expr, channels=parse_channels(args),
                          must=getattr(args, "must", None) or None, **query)


def search_query(args, settings) -> dict:
    """``--text`` / ``--image`` / ``--like`` -> the one query keyword for the client or service.

    ``--image`` is an ``s3://`` URI (fetched by a worker) or a file the CLI reads itself, as
    the user running it, with a bounded read; ``--like`` of ASCII digits is an id."""
    if args.text is not None:
        return {"text": args.text}
    if args.like is not None:
        like = args.like.strip()
        return {"like": int(like) if like.isascii() and like.isdecimal() else like}
    if args.image.startswith("s3://"):
        from common.errors import QueryError
        from query.protocol import check_image_uri

        try:
            return {"image_uri": check_image_uri(args.image)}
        except QueryError as exc:
            raise QueryError(f"--image: {exc}") from None
    return {"image": read_image_file(args.image, settings.query_max_image_bytes)}


def read_image_file(name: str, limit: int) -> bytes:
    """At most ``limit`` bytes of a regular file (a device or a FIFO is refused, not read)."""
    import os
    import stat
    from pathlib import Path

    from common.errors import QueryError, QueryTooLarge

    path = Path(name).expanduser()
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO must not block the open
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise QueryError(f"query image {name!r} is not a regular file")
            data = fh.read(limit + 1)
    except OSError as exc:
        raise QueryError(f"cannot read query image {name!r}: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise QueryTooLarge(f"query image {name!r} is larger than IMGSEARCH_QUERY_MAX_IMAGE_BYTES ({limit} bytes)")
    return data


def parse_channels(args) -> list[str] | None:
    """``--channels clip,bm25`` -> ["clip", "bm25"]; absent -> None (the query kind's defaults)."""
    raw = getattr(args, "channels", None)
    if raw is None:
        return None
    return [c.strip() for c in raw.split(",") if c.strip()] or [raw]


def cmd_query_worker(args, settings) -> int:
    from common.errors import ConfigError
    from query.worker import QueryWorker

    if not settings.redis_url:
        raise ConfigError("query-worker needs IMGSEARCH_REDIS_URL")
    settings = settings.with_overrides(query_max_batch=args.max_batch, query_max_wait_ms=args.max_wait_ms)
    worker = QueryWorker(settings, name=args.name)
    worker.install_signal_handlers()
    worker.start()
    print(f"query worker {worker.name} ready on {settings.query_stream}", flush=True)
    worker.run()
    print(f"query worker {worker.name} stopped after {worker.answered} replies", flush=True)
    return 0


def cmd_serve(args, settings) -> int:
    import uvicorn

    from query.gateway import create_app

    settings = settings.with_overrides(gateway_host=args.host, gateway_port=args.port)
    url = f"http://{settings.gateway_host}:{settings.gateway_port}"
    if settings.embedded and getattr(args, "holding", None) is not None:  # others go through this server
        local = "127.0.0.1" if settings.gateway_host in ("0.0.0.0", "::", "") else settings.gateway_host
        args.holding.update(url=f"http://{local}:{settings.gateway_port}")
    mode = "embedded: searches answered in this process" if settings.embedded else "query workers via Redis"
    print(f"gateway on {url} ({mode})", file=sys.stderr, flush=True)
    if not settings.gateway_api_key and settings.gateway_host not in ("127.0.0.1", "localhost", "::1"):
        print(f"imgsearch: warning: no IMGSEARCH_GATEWAY_API_KEY and bound to {settings.gateway_host}: anyone who "
              "reaches this address can search (Host header must be in IMGSEARCH_GATEWAY_TRUSTED_HOSTS)",
              file=sys.stderr, flush=True)
    from imgsearch.indexer import jobs_for

    holder: dict = {}
    indexer = jobs_for(settings, on_change=lambda: holder["app"].state.client_of().refresh())
    holding = getattr(args, "holding", None)
    local_token = holding.info.get("local_token") if holding is not None else None
    app = holder["app"] = create_app(settings, indexer, local_token)
    try:
        uvicorn.run(app, host=settings.gateway_host, port=settings.gateway_port, log_level=settings.log_level.lower())
    finally:
        indexer.close()
    return 0


COMMANDS = {"query-worker": cmd_query_worker, "serve": cmd_serve}
