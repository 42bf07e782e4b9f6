"""The Celery app (``celery -A ingest.app worker``), configured from :class:`Settings`.

It only builds the app: no job logic. The app knows its tasks by ``include`` only; the
operator side sends them by name through :mod:`ingest.dispatch`.

Reliability choices (DESIGN.md "Invariants"), and why:

- ``task_acks_late`` + ``worker_prefetch_multiplier=1``: a task is acknowledged only after
  it ran, and a worker holds one task beyond those it runs, so a crash loses nothing and
  strands at most one batch per process.
- ``task_reject_on_worker_lost``: a pool process killed mid-task (OOM killer) puts its task
  back on the queue at once instead of marking it failed.
- Redis ``visibility_timeout`` (above the longest batch) + ``unacked_restore_interval`` with
  throttle 1: when a whole worker dies (SIGKILL, node lost), its unacknowledged batch is
  restored by any other worker within ``visibility_timeout + unacked_restore_interval`` s.
- Broker connection retries forever and publishing retries with backoff: a Redis restart
  pauses the pipeline instead of failing it.
- ``worker_max_tasks_per_child`` / ``worker_max_memory_per_child``: leak guards.
- Each stage has its own queue, so GPU, OCR and caption workers scale independently.
"""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from common.errors import ConfigError
from common.settings import Settings
from ingest.health import install_heartbeat

QUEUES = ("plan", "embed", "ocr", "caption", "finish")
ROUTES = {f"ingest.{name}": {"queue": name} for name in QUEUES}
SCHEDULED_REINDEX = "ingest.scheduled_reindex"  # the task beat sends (ingest/schedules.py)


def beat_schedule(settings: Settings) -> dict:
    """Celery's ``beat_schedule`` for ``IMGSEARCH_SCHEDULES`` (empty without schedules)."""
    from celery.schedules import crontab

    out = {}
    for source, cron in settings.schedule_map().items():
        try:
            when = crontab.from_string(cron)
        except (ValueError, IndexError) as exc:
            raise ConfigError(f"IMGSEARCH_SCHEDULES: bad cron {cron!r} for {source!r}: {exc}") from None
        out[f"reindex {source}"] = {"task": SCHEDULED_REINDEX, "schedule": when, "args": [source],
                                    "options": {"queue": "plan", "expires": 3600}}
    return out


def celery_config(settings: Settings) -> dict:
    """Celery settings derived from ours (one place, so tests can read them)."""
    url = settings.redis_url
    transport = {
        "visibility_timeout": settings.visibility_timeout,
        "unacked_restore_interval": settings.unacked_restore_interval,
        "unacked_restore_throttle": 1,
        "socket_timeout": 30,
        "socket_connect_timeout": 5,
        "socket_keepalive": True,
        "health_check_interval": 10,
    }
    return {
        "broker_url": url,
        "result_backend": url,
        "task_ignore_result": True,  # chains hand results to the next task in its message
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_acks_late": True,
        "task_acks_on_failure_or_timeout": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "broker_transport_options": transport,
        "result_backend_transport_options": {"visibility_timeout": settings.visibility_timeout},
        "broker_connection_retry": True,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        "task_publish_retry": True,
        "task_publish_retry_policy": {"max_retries": 60, "interval_start": 0.2, "interval_step": 0.5,
                                      "interval_max": 3.0},
        "task_queues": [Queue(name) for name in QUEUES],
        "task_default_queue": "plan",
        "task_routes": ROUTES,
        "task_soft_time_limit": settings.batch_time_limit,
        # the hard limit stays below the visibility timeout: a stuck batch is killed before
        # Redis would hand it to a second worker
        "task_time_limit": min(settings.batch_time_limit + 30, settings.visibility_timeout - 1),
        "worker_max_tasks_per_child": settings.worker_max_tasks_per_child or None,
        "worker_max_memory_per_child": settings.worker_max_memory_mb * 1024 or None,  # KiB
        "worker_hijack_root_logger": False,
        # a pool process loads its models (CLIP, OCR, text encoder) before it reports UP;
        # Celery's 4 s default kills it first on a busy CPU and forks again, forever
        "worker_proc_alive_timeout": 120,
        "worker_send_task_events": True,  # Flower shows tasks
        "task_send_sent_event": True,
        "beat_schedule": beat_schedule(settings),  # IMGSEARCH_SCHEDULES (ingest/schedules.py)
        "timezone": "UTC",
    }


def create_app(settings: Settings) -> Celery:
    app = Celery("imgsearch", include=["ingest.tasks"])
    app.conf.update(celery_config(settings))
    install_heartbeat(app, settings)  # IMGSEARCH_WORKER_HEARTBEAT_FILE: liveness (ingest/health.py)
    return app


settings = Settings.from_env()
app = create_app(settings)
