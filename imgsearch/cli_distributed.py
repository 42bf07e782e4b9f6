"""Distributed-mode commands: ``worker``, ``jobs``, ``dead-letters`` and ``ingest`` via Redis.

Kept apart from :mod:`imgsearch.cli` so that module only registers them. All of these
need ``IMGSEARCH_REDIS_URL``; ``ingest`` falls back to the embedded runner without it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

EXIT_OK, EXIT_ERROR, EXIT_PARTIAL = 0, 1, 3  # the codes of imgsearch.cli


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add the distributed subcommands (and ``ingest --wait``) to the main parser."""
    ingest = sub.choices["ingest"]
    ingest.add_argument("--wait", action="store_true",
                        help="distributed mode: follow the job until it ends (progress bar, summary, "
                        "exit code); without it the job id is printed and the command returns")

    w = sub.add_parser("worker", help="run a Celery worker for ingest queues (distributed mode)",
                       description="Consume the given queues. Run `--queues embed --concurrency 1` "
                       "once per GPU, and `--queues ocr,caption,finish,plan` on CPU nodes.")
    w.add_argument("--queues", default="plan,embed,ocr,caption,finish",
                   help="comma-separated: plan, embed, ocr, caption, finish (default: all)")
    w.add_argument("--concurrency", type=int, default=1, help="pool processes (embed: 1 per GPU)")
    w.add_argument("--pool", default="prefork", choices=["prefork", "solo", "threads"],
                   help="Celery pool (default prefork: models load once per process after fork)")
    w.add_argument("--loglevel", default="", help="default: IMGSEARCH_LOG_LEVEL")

    j = sub.add_parser("jobs", help="list, inspect or cancel ingest jobs (distributed mode)")
    jsub = j.add_subparsers(dest="jobs_command", metavar="ACTION", required=True)
    jl = jsub.add_parser("list", help="recent jobs, newest first")
    jl.add_argument("--limit", type=int, default=20)
    jl.add_argument("--json", action="store_true")
    for name, text in (("status", "one job's counters"), ("cancel", "stop a job: no further batches run")):
        p = jsub.add_parser(name, help=text)
        p.add_argument("job")
        p.add_argument("--json", action="store_true")

    d = sub.add_parser("dead-letters", help="objects a job could not index, and why; retry them")
    dsub = d.add_subparsers(dest="dl_command", metavar="ACTION", required=True)
    dl = dsub.add_parser("list", help="dead letters of a job (uri, reason, message, attempts)")
    dl.add_argument("job")
    dl.add_argument("--json", action="store_true")
    dr = dsub.add_parser("retry", help="run a job's dead-lettered objects again")
    dr.add_argument("job")
    dr.add_argument("--wait", action="store_true", help="follow the job until the retry ends")
    dr.add_argument("--json", action="store_true")
    dr.add_argument("--no-progress", action="store_true")


def _need_redis(settings) -> None:
    from common.errors import ConfigError

    if settings.embedded:
        raise ConfigError("this command needs IMGSEARCH_REDIS_URL (distributed mode)")


def _progress(args) -> bool:
    return not getattr(args, "no_progress", False) and sys.stderr.isatty()


def cmd_ingest(args, settings) -> int:
    """Enqueue a job; with ``--wait`` follow it and exit like the embedded ingest."""
    from ingest.distributed import submit

    job_id = submit(args.source, settings, tuple(args.include))
    if not args.wait:
        print(json.dumps({"job": job_id}) if args.json else f"job {job_id} enqueued; follow it with "
              f"`imgsearch jobs status {job_id}`")
        return EXIT_OK
    return _follow(job_id, settings, args)


def _follow(job_id: str, settings, args) -> int:
    from common.jobs import JobStore
    from ingest.distributed import render, wait

    job = wait(job_id, settings, progress=_progress(args))
    dead = JobStore.from_url(settings.redis_url).dead_letters(job_id)
    if args.json:
        print(json.dumps({**job.to_dict(), "dead_letters": dead}, indent=2))
    else:
        print(render(job, dead))
    if job.status != "done":
        return EXIT_ERROR
    return EXIT_PARTIAL if job.failed else EXIT_OK


def cmd_worker(args, settings) -> int:
    _need_redis(settings)
    from ingest.app import QUEUES, app

    queues = [q.strip() for q in args.queues.split(",") if q.strip()]
    unknown = sorted(set(queues) - set(QUEUES))
    if unknown or not queues:
        print(f"imgsearch: error: unknown queue(s) {unknown or queues}; choose from {', '.join(QUEUES)}",
              file=sys.stderr)
        return EXIT_ERROR
    name = f"{'-'.join(queues)}-{os.getpid()}@%h"
    app.worker_main(["worker", "-Q", ",".join(queues), "-c", str(args.concurrency), "-P", args.pool,
                     "-n", name, "--loglevel", args.loglevel or settings.log_level,
                     "--without-gossip", "--without-mingle"])
    return EXIT_OK


def cmd_jobs(args, settings) -> int:
    _need_redis(settings)
    from common.jobs import JobStore
    from ingest.distributed import render

    store = JobStore.from_url(settings.redis_url)
    if args.jobs_command == "list":
        jobs = store.list(args.limit)
        if args.json:
            print(json.dumps([j.to_dict() for j in jobs], indent=2))
        for j in [] if args.json else jobs:
            created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(j.created_at))
            print(f"{j.id}  {created}  {j.status:<9} {j.processed}/{j.listed}  failed {j.failed}  {j.source}")
        if not jobs and not args.json:
            print("no jobs")
        return EXIT_OK
    job = store.cancel(args.job) if args.jobs_command == "cancel" else store.get(args.job)
    print(json.dumps(job.to_dict(), indent=2) if args.json else render(job))
    return EXIT_OK


def cmd_dead_letters(args, settings) -> int:
    _need_redis(settings)
    from common.jobs import JobStore

    store = JobStore.from_url(settings.redis_url)
    if args.dl_command == "list":
        entries = store.dead_letters(args.job)
        if args.json:
            print(json.dumps(entries, indent=2))
        else:
            for e in entries:
                print(f"{e['reason']:<16} attempts={e['attempts']}  {e['uri']}  ({e['message']})")
            print(f"{len(entries)} dead letter(s) in job {args.job}")
        return EXIT_OK
    from ingest.dispatch import enqueue_dead_letter_retry

    batches = enqueue_dead_letter_retry(args.job, settings)
    if not args.wait:
        print(json.dumps({"job": args.job, "batches": batches}) if args.json
              else f"job {args.job}: {batches} retry batch(es) enqueued")
        return EXIT_OK
    return _follow(args.job, settings, args)


COMMANDS = {"worker": cmd_worker, "jobs": cmd_jobs, "dead-letters": cmd_dead_letters}
