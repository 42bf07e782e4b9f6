"""Index upkeep commands: ``reindex``, ``migrate``, ``collections``, ``schedules``, ``beat``.

Kept apart from :mod:`imgsearch.cli`, which only registers them. ``reindex`` and
``migrate`` run in-process in embedded mode and as tracked jobs on the workers when
``IMGSEARCH_REDIS_URL`` is set.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

EXIT_OK, EXIT_ERROR, EXIT_PARTIAL = 0, 1, 3  # the codes of imgsearch.cli


def add_parsers(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("reindex", help="bring the index in step with a source: new, changed, removed",
                       description="List SOURCE, diff it against the index (URI, ETag, model), index new and "
                       "changed objects, delete the rows (and texts) of objects no longer there — only under "
                       "SOURCE — and report new, changed, removed, unchanged, failed. Nothing changed: no "
                       "model work. Distributed mode: one run per source at a time (a run lock in Redis).")
    r.add_argument("source", help="folder path, file:// URI or s3://bucket/prefix")
    r.add_argument("--include", action="append", default=[], metavar="GLOB",
                   help="only file names matching GLOB (as for ingest; rows outside it are never removed)")
    r.add_argument("--wait", action="store_true", help="distributed mode: follow the job, then print the report")
    r.add_argument("--json", action="store_true", help="print the report as JSON")
    r.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")

    m = sub.add_parser("migrate", help="re-encode the collection with a new model, then swap the alias",
                       description="Builds <alias>_v<N+1> with the new model next to the live collection (as "
                       "a tracked job in distributed mode), then moves the alias to it in one atomic step: "
                       "searches never stop and each uses one collection's own model. The old collection "
                       "stays until --drop-old. --drop-old alone drops the alias' retired versions.")
    m.add_argument("--model", help="open_clip model name of the new model (e.g. ViT-L-14)")
    m.add_argument("--pretrained", default="", help="pretrained tag, checkpoint path or s3:// URI")
    m.add_argument("--drop-old", action="store_true",
                   help="drop the old collection after the swap (alone: drop every retired version)")
    m.add_argument("--wait", action="store_true", help="distributed mode: follow the job until the swap")
    m.add_argument("--json", action="store_true")
    m.add_argument("--no-progress", action="store_true")

    c = sub.add_parser("collections", help="list collection versions, aliases, models and row counts")
    c.add_argument("--json", action="store_true")

    s = sub.add_parser("schedules", help="re-index schedules (IMGSEARCH_SCHEDULES), run locks, recent runs")
    s.add_argument("--limit", type=int, default=20, help="recent run attempts to show")
    s.add_argument("--json", action="store_true")

    b = sub.add_parser("beat", help="run the scheduler (Celery beat) for IMGSEARCH_SCHEDULES",
                       description="Sends a re-index of each scheduled source at its cron ticks. Run exactly "
                       "one; a second one by mistake does no harm (its ticks are refused and recorded).")
    b.add_argument("--schedule-file", default="", help="beat's state file (default: <data dir>/celerybeat-schedule)")
    b.add_argument("--loglevel", default="", help="default: IMGSEARCH_LOG_LEVEL")


def _progress(args) -> bool:
    return not getattr(args, "no_progress", False) and sys.stderr.isatty()


def _print(data: dict, text: str, as_json: bool) -> None:
    print(json.dumps(data, indent=2) if as_json else text)


def cmd_reindex(args, settings) -> int:
    include = tuple(args.include)
    if settings.embedded:
        from ingest.reindex import run_reindex

        report = run_reindex(args.source, settings, include, progress=_progress(args))
    else:
        from common.jobs import JobStore
        from ingest.distributed import wait
        from ingest.reindex import report_from_job
        from ingest.schedules import submit_reindex

        job_id = submit_reindex(args.source, settings, include)
        if not args.wait:
            _print({"job": job_id}, f"job {job_id} enqueued; follow it with `imgsearch jobs status {job_id}`",
                   args.json)
            return EXIT_OK
        job = wait(job_id, settings, progress=_progress(args))
        report = report_from_job(job, JobStore.from_url(settings.redis_url).dead_letters(job_id))
    _print(report.to_dict(), report.render(), args.json)
    if report.status != "done":
        return EXIT_ERROR
    return EXIT_PARTIAL if report.failed else EXIT_OK


def cmd_migrate(args, settings) -> int:
    from common.errors import ConfigError

    if not args.model:
        if not args.drop_old:
            raise ConfigError("migrate needs --model (and --pretrained), or --drop-old alone")
        from ingest.migrate import drop_old_versions

        dropped = drop_old_versions(settings)
        _print({"dropped": dropped}, f"dropped {', '.join(dropped) or 'nothing'}", args.json)
        return EXIT_OK
    if settings.embedded:
        from ingest.migrate import run_migration

        report = run_migration(settings, args.model, args.pretrained, args.drop_old, progress=_progress(args))
        _print(report.to_dict(), report.render(), args.json)
        return EXIT_OK if report.swapped else EXIT_PARTIAL
    from ingest.migrate import submit_migration

    job_id = submit_migration(settings, args.model, args.pretrained, args.drop_old)
    if not args.wait:
        _print({"job": job_id}, f"migration job {job_id} enqueued; follow it with `imgsearch jobs status "
               f"{job_id}`; the alias swaps when it completes", args.json)
        return EXIT_OK
    return _follow_migration(job_id, settings, args)


def _follow_migration(job_id: str, settings, args) -> int:
    """Wait for the job, then for the finish task's swap (it runs right after the last batch)."""
    from common.jobs import JobStore
    from ingest.distributed import wait
    from ingest.migrate import MigrationReport

    jobs = JobStore.from_url(settings.redis_url)
    job = wait(job_id, settings, progress=_progress(args))
    deadline = time.monotonic() + 60
    while job.status == "done" and not (job.options.get("swapped") or job.options.get("swap_blocked")
                                        or job.failed) and time.monotonic() < deadline:
        time.sleep(0.2)
        job = jobs.get(job_id)
    o = job.options
    report = MigrationReport(o["alias"], o["from"], job.collection, o.get("label", ""), rows=job.listed,
                             indexed=job.indexed + job.unchanged, failed=job.failed, swapped=bool(o.get("swapped")),
                             dropped=bool(o.get("dropped")), note=o.get("swap_blocked") or job.error,
                             seconds=(job.finished_at or time.time()) - job.created_at, job=job_id,
                             failures=[{k: e[k] for k in ("uri", "reason", "message")}
                                       for e in jobs.dead_letters(job_id)])
    _print(report.to_dict(), report.render(), args.json)
    if job.status != "done":
        return EXIT_ERROR
    return EXIT_OK if report.swapped else EXIT_PARTIAL


def cmd_collections(args, settings) -> int:
    from common.store import describe_collections

    rows = describe_collections(settings)
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    if not rows:
        print(f"no collections in {settings.effective_milvus_uri() if not settings.milvus_uri else 'Milvus'}")
    for r in rows:
        aliases = ", ".join(r["aliases"]) or "-"
        count = f"{r['rows']}" if r["exact"] else f"~{r['rows']}"
        print(f"{r['name']:<28} aliases: {aliases:<16} rows: {count:<10} model: {r['model']} "
              f"({r['weights']}, {r['dim']}-d, {r['digest']})")
    return EXIT_OK


def cmd_schedules(args, settings) -> int:
    from common.errors import ConfigError

    schedules = settings.schedule_map()
    if settings.embedded:
        raise ConfigError("schedules run on Celery beat and workers: set IMGSEARCH_REDIS_URL")
    from common.jobs import JobStore
    from ingest.runlock import RunLock, history, reindex_lock_key

    jobs = JobStore.from_url(settings.redis_url)
    rows = [{"source": src, "cron": cron,
             "running": RunLock(jobs, reindex_lock_key(settings.collection, src), settings.schedule_lock_ttl).holder()}
            for src, cron in schedules.items()]
    recent = history(jobs, args.limit)
    if args.json:
        print(json.dumps({"schedules": rows, "history": recent}, indent=2))
        return EXIT_OK
    for r in rows or [{"source": "(none: IMGSEARCH_SCHEDULES is empty)", "cron": "", "running": None}]:
        print(f"{r['cron']:<15} {r['source']}" + (f"   running: job {r['running']}" if r["running"] else ""))
    print("\nrecent runs (newest first):" if recent else "\nno runs recorded yet")
    for e in recent:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(e["at"]))
        tail = f"job {e['job']}" if e.get("job") else e.get("message", "")
        print(f"{when}  {e['outcome']:<8} {e.get('trigger', ''):<22} {e['source']}  {tail}")
    return EXIT_OK


def cmd_beat(args, settings) -> int:
    from common.errors import ConfigError

    if settings.embedded:
        raise ConfigError("beat needs IMGSEARCH_REDIS_URL (it sends tasks to the workers)")
    from ingest.app import app

    if not settings.schedule_map():
        print("imgsearch: warning: IMGSEARCH_SCHEDULES is empty: beat has nothing to send", file=sys.stderr)
    path = args.schedule_file or str(settings.data_dir / "celerybeat-schedule")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    app.start(["beat", "--schedule", path, "--loglevel", args.loglevel or settings.log_level])
    return EXIT_OK


COMMANDS = {"reindex": cmd_reindex, "migrate": cmd_migrate, "collections": cmd_collections,
            "schedules": cmd_schedules, "beat": cmd_beat}
