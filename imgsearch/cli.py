"""Command line: ``imgsearch ingest | search | demo | config``.

Exit codes: 0 success; 1 an error the message explains (bad source, model mismatch, no
collection); 2 bad command-line usage; 3 ingest finished but some images failed (they
are listed, and written to the dead-letter file).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from imgsearch import cli_distributed, cli_eval, cli_query, cli_reindex
from imgsearch.hits_output import print_hits

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_PARTIAL = 0, 1, 2, 3

EPILOG = """\
examples:
  imgsearch demo                                 # offline: index bundled samples, run queries
  imgsearch ingest ./photos                      # a folder (recursive)
  imgsearch ingest s3://bucket/prefix            # S3 (IMGSEARCH_S3_ENDPOINT_URL for MinIO etc.)
  imgsearch search --text "a red sneaker" -k 10 --json
  imgsearch search --image query.jpg
  imgsearch search --like 123456789              # an indexed image's id (or its URI)
  imgsearch search --text "XK-4471" --channels bm25 --must XK   # exact code in OCR text
  imgsearch config                               # effective settings, secrets masked
  imgsearch duplicates --threshold 6             # groups of near-duplicate images
  imgsearch eval evalsets/ocr --json             # precision/recall/mAP per channel and fused

Settings come from IMGSEARCH_* environment variables (see `imgsearch config`).
Exit codes: 0 ok, 1 error, 2 usage, 3 ingest done but some images failed.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imgsearch", description="Index images (folder or S3) with CLIP into Milvus and "
        "search them by text, by image, or by an indexed image.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, help="override IMGSEARCH_DATA_DIR")
    parser.add_argument("--collection", help="override IMGSEARCH_COLLECTION (alias to use)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("ingest", help="index a folder or s3://bucket/prefix",
                       description="Index every image under SOURCE. Unchanged images (same "
                       "ETag/mtime and model) are skipped without model work. Files that are "
                       "not valid images are reported with a reason, never silently dropped.")
    p.add_argument("source", help="folder path, file:// URI or s3://bucket/prefix")
    p.add_argument("--include", action="append", default=[], metavar="GLOB",
                   help="only file names matching GLOB (repeatable, e.g. --include '*.jpg'); "
                   "default: every non-hidden file")
    p.add_argument("--batch-size", type=int, help="override IMGSEARCH_BATCH_SIZE")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")

    s = sub.add_parser("search", help="search by text, image or indexed image",
                       description="Search the collection. Queries are encoded with the model "
                       "the collection was built with. Exactly one of --text/--image/--like.")
    q = s.add_mutually_exclusive_group(required=True)
    q.add_argument("--text", help="a description, e.g. 'a red sneaker'")
    q.add_argument("--image", metavar="FILE|s3://...", help="a query image: a file (read here) or an s3:// URI "
                   "(fetched by a query worker from a bucket in IMGSEARCH_QUERY_URI_BUCKETS)")
    q.add_argument("--like", metavar="ID", help="id (or URI) of an indexed image; it is left out")
    s.add_argument("-k", type=int, default=10, help="number of results (1-1000, default 10)")
    s.add_argument("--json", action="store_true",
                   help='print [{"id", "uri", "score", "evidence"}, ...], best first')
    cli_query.add_search_options(s)

    d = sub.add_parser("demo", help="offline demo: index bundled samples, run example queries",
                       description="Indexes the bundled Fashion-MNIST samples with the bundled "
                       "reference model into the data dir and runs example queries. The "
                       "collection stays, so `imgsearch search` works right after.")
    d.add_argument("--json", action="store_true", help="print results as JSON")
    d.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")

    sub.add_parser("config", help="print effective settings (secrets masked)")
    cli_query.add_parsers(sub)
    cli_distributed.add_parsers(sub)
    cli_reindex.add_parsers(sub)
    cli_eval.add_parsers(sub)
    from imgsearch import cli_models

    cli_models.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; never a traceback, whatever the arguments (exit codes above)."""
    from common.models import catalog

    # Hugging Face libraries never download at run time; the CLIP catalog may fetch the default
    # model's weights once into the model cache, unless the user set HF_HUB_OFFLINE=1 too.
    catalog.FETCH_ALLOWED = os.environ.get("HF_HUB_OFFLINE", "").lower() not in ("1", "true", "yes", "on")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    for stream in (sys.stdout, sys.stderr):  # argv may hold undecodable bytes (lone surrogates)
        try:
            stream.reconfigure(errors="backslashreplace")
        except (AttributeError, ValueError):
            pass
    parser = build_parser()
    args = parser.parse_args(argv)
    from common.errors import ImgsearchError
    from common.logs import setup_logging

    try:
        from common.settings import Settings

        settings = Settings.from_env(data_dir=args.data_dir, collection=args.collection)
        if getattr(args, "batch_size", None) is not None:
            settings = settings.with_overrides(batch_size=args.batch_size)
        setup_logging(settings.log_level)
        from imgsearch.cli_embedded import run_command  # one process per embedded data dir

        return run_command(args.command, COMMANDS[args.command], args, settings)
    except ImgsearchError as exc:
        print(f"imgsearch: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("imgsearch: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `imgsearch search ... | head`: the reader left, nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except Exception as exc:  # a bug or an unexpected fault: a clear line, the traceback only in the log
        import logging

        logging.getLogger("imgsearch").debug("unexpected error", exc_info=True)
        print(f"imgsearch: error: unexpected {type(exc).__name__}: {str(exc)[:500]} "
              "(IMGSEARCH_LOG_LEVEL=DEBUG logs the traceback)", file=sys.stderr)
        return EXIT_ERROR
    finally:
        try:
            from common.store import close_clients

            close_clients()
        except Exception:
            pass


def cmd_ingest(args, settings) -> int:
    if not settings.embedded:
        return cli_distributed.cmd_ingest(args, settings)
    from ingest.runner import run_ingest

    summary = run_ingest(args.source, settings, tuple(args.include),
                         progress=not args.no_progress and sys.stderr.isatty())
    if args.json:
        print(json.dumps(summary.to_dict(), indent=2))
    else:
        print(summary.render())
    return EXIT_PARTIAL if summary.failed else EXIT_OK


def cmd_search(args, settings) -> int:
    # Through the query workers when Redis is configured, else in this process.
    search = cli_query.search_via_queue if settings.redis_url else cli_query.search_in_process
    print_hits(search(args, settings), args.json)
    return EXIT_OK


def cmd_demo(args, settings) -> int:
    from imgsearch.demo import run_demo

    return run_demo(settings, as_json=args.json, progress=not args.no_progress and sys.stderr.isatty())


def cmd_config(args, settings) -> int:
    rows = settings.describe()
    width = max(len(name) for name, _, _ in rows)
    for name, value, help_text in rows:
        print(f"{name:<{width}}  {value or '(empty)'}\n{'':<{width}}    {help_text}")
    print(f"\nmode: {'embedded' if settings.embedded else 'distributed'}; "
          f"milvus: {settings.effective_milvus_uri() if not settings.milvus_uri else '(server)'}")
    return EXIT_OK


COMMANDS = {"ingest": cmd_ingest, "search": cmd_search, "demo": cmd_demo, "config": cmd_config,
            **cli_distributed.COMMANDS}
COMMANDS.update(cli_query.COMMANDS)
COMMANDS.update(cli_reindex.COMMANDS)
COMMANDS.update(cli_eval.COMMANDS)


def cmd_models(args, settings) -> int:
    from imgsearch.cli_models import cmd_models as run

    return run(args, settings)


COMMANDS["models"] = cmd_models
