"""Ingest job state in Redis: counters, per-batch completion records and dead letters.

Why Redis and why Lua: tasks are delivered at least once, so the same batch may finish
twice (a killed worker's batch comes back). Counters must stay exact, so a batch's
counts are applied only by its *first* completion: one Lua script does
``HSETNX batches <epoch>:<batch>`` and, only if that set the field, increments the job's
counters and writes its dead letters. The script is atomic, so a crash can never leave a
batch half-counted.

Keys (prefix ``imgsearch:``): ``jobs`` (zset of job ids by creation time),
``job:<id>`` (hash: spec, status, counters), ``job:<id>:batches`` (hash: first completion
of each batch), ``job:<id>:dead`` (hash: uri -> dead-letter JSON with reason and attempts).

A job's ``epoch`` changes when its plan restarts (a redelivered plan task): batches of
an older epoch are still written (idempotently) but not counted, so
``indexed + unchanged + failed == listed`` holds for the epoch that completes.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

from common.errors import ImgsearchError

PREFIX = "imgsearch:"
COUNTERS = ("listed", "unchanged", "indexed", "failed", "batches_total", "batches_done", "encoded")
# What a re-index's diff found (new + changed + unchanged == listed) and what it deleted.
REINDEX_COUNTERS = ("new", "changed", "removed")
ACTIVE = ("planning", "running")

_FINISH_LUA = """
-- KEYS: job hash, batches hash, dead hash
-- ARGV: epoch, batch field, record json, d_indexed, d_failed, n_dead, now,
--       then n_dead (uri, entry json) pairs, then uris whose dead letters are removed
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then return -1 end
if redis.call('HGET', KEYS[1], 'status') == 'cancelled' then return -2 end
if redis.call('HSETNX', KEYS[2], ARGV[2], ARGV[3]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[1], 'indexed', ARGV[4])
redis.call('HINCRBY', KEYS[1], 'failed', ARGV[5])
local done = redis.call('HINCRBY', KEYS[1], 'batches_done', 1)
local n = tonumber(ARGV[6])
local i = 8
for _ = 1, n do
  local entry = cjson.decode(ARGV[i + 1])
  local old = redis.call('HGET', KEYS[3], ARGV[i])
  local attempts = 0
  if old then attempts = tonumber(cjson.decode(old)['attempts']) or 0 end
  entry['attempts'] = attempts + 1
  redis.call('HSET', KEYS[3], ARGV[i], cjson.encode(entry))
  i = i + 2
end
while i <= #ARGV do
  redis.call('HDEL', KEYS[3], ARGV[i])
  i = i + 1
end
if redis.call('HGET', KEYS[1], 'planned') == '1' and
   done >= tonumber(redis.call('HGET', KEYS[1], 'batches_total')) then
  redis.call('HSET', KEYS[1], 'status', 'done', 'finished_at', ARGV[7])
end
return 1
"""

_PLANNED_LUA = """
-- KEYS: job hash. ARGV: epoch, listed, unchanged, batches_total, now
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then return -1 end
if redis.call('HGET', KEYS[1], 'status') == 'cancelled' then return -2 end
redis.call('HSET', KEYS[1], 'listed', ARGV[2], 'unchanged', ARGV[3], 'batches_total', ARGV[4],
           'planned', '1', 'status', 'running')
if tonumber(redis.call('HGET', KEYS[1], 'batches_done')) >= tonumber(ARGV[4]) then
  redis.call('HSET', KEYS[1], 'status', 'done', 'finished_at', ARGV[5])
end
return 1
"""

_ADD_BATCHES_LUA = """
-- KEYS: job hash. ARGV: number of batches to add. Returns the first new batch number.
local total = redis.call('HINCRBY', KEYS[1], 'batches_total', ARGV[1])
redis.call('HSET', KEYS[1], 'status', 'running')
redis.call('HDEL', KEYS[1], 'finished_at')
return total - tonumber(ARGV[1])
"""


_START_PLAN_LUA = """
-- KEYS: job hash, batches hash, dead hash, listed set. ARGV: cursor json, then counters to zero.
-- The first step of a job starts its plan (new epoch, zeroed counts, the first checkpoint);
-- every later call (a resumed or redelivered step) returns the checkpoint as it is.
local cur = redis.call('HGET', KEYS[1], 'plan_cursor')
if cur then return {tonumber(redis.call('HGET', KEYS[1], 'epoch')), cur} end
local epoch = redis.call('HINCRBY', KEYS[1], 'epoch', 1)
for i = 2, #ARGV do redis.call('HSET', KEYS[1], ARGV[i], '0') end
redis.call('HSET', KEYS[1], 'planned', '0', 'plan_cursor', ARGV[1])
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
return {epoch, ARGV[1]}
"""

_COMMIT_PLAN_LUA = """
-- KEYS: job hash. ARGV: epoch, expected step, cursor json, then field/value pairs.
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then return -1 end
if redis.call('HGET', KEYS[1], 'status') == 'cancelled' then return -2 end
local cur = redis.call('HGET', KEYS[1], 'plan_cursor')
if not cur or cjson.decode(cur)['step'] ~= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], 'plan_cursor', ARGV[3])
for i = 4, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1
"""


class JobNotFoundError(ImgsearchError):
    """No job with that id exists in Redis."""


@dataclass
class Job:
    """A job as read from Redis."""

    id: str
    source: str
    collection: str
    status: str
    created_at: float
    include: list[str] = field(default_factory=list)
    epoch: int = 0
    planned: bool = False
    finished_at: float | None = None
    error: str = ""
    counters: dict[str, int] = field(default_factory=dict)
    kind: str = "ingest"  # ingest | reindex | migrate
    options: dict = field(default_factory=dict)  # per kind: a migration's model, a run's lock ...
    plan: dict = field(default_factory=dict)  # the plan's checkpoint (ingest/planning.py Cursor)

    def __getattr__(self, name: str) -> int:
        if name in COUNTERS or name in REINDEX_COUNTERS:
            return self.counters.get(name, 0)
        raise AttributeError(name)

    @property
    def processed(self) -> int:
        """Objects with a final outcome so far (the progress bar's position)."""
        return self.counters.get("unchanged", 0) + self.counters.get("indexed", 0) + self.counters.get("failed", 0)

    def planning(self) -> dict:
        """Planning progress: listed so far, objects/s, the next step, whether listing ended."""
        p = self.plan
        seconds = float(p.get("updated_at") or 0) - float(p.get("started_at") or 0)
        listed = int(p.get("listed", 0))
        return {"listed": listed, "rate": round(listed / seconds, 1) if seconds > 0 else 0.0,
                "step": int(p.get("step", 0)), "done": bool(p.get("done", False))}

    @property
    def finished(self) -> bool:
        return self.status not in ACTIVE

    def to_dict(self) -> dict:
        return {"id": self.id, "source": self.source, "collection": self.collection, "status": self.status,
                "include": self.include, "created_at": self.created_at, "finished_at": self.finished_at,
                "error": self.error or None, **{c: self.counters.get(c, 0) for c in COUNTERS},
                "kind": self.kind, "options": self.options, "planning": self.planning(),
                **({c: self.counters.get(c, 0) for c in REINDEX_COUNTERS} if self.kind != "ingest" else {})}


def new_job_id() -> str:
    return uuid.uuid4().hex[:12]


def redis_client(url: str):

    """A Redis client that retries transient connection errors with backoff and jitter."""
    import redis
    from redis.backoff import EqualJitterBackoff
    from redis.retry import Retry

    return redis.Redis.from_url(
        url, socket_timeout=30, socket_connect_timeout=5, health_check_interval=15,
        retry=Retry(EqualJitterBackoff(cap=2.0, base=0.05), retries=8),
        retry_on_error=[redis.exceptions.ConnectionError, redis.exceptions.TimeoutError])


class JobStore:
    """Create, read and update ingest jobs; every update is safe under redelivery."""

    def __init__(self, client):
        self.r = client
        self._finish = client.register_script(_FINISH_LUA)
        self._planned = client.register_script(_PLANNED_LUA)
        self._add_batches = client.register_script(_ADD_BATCHES_LUA)
        self._start_plan = client.register_script(_START_PLAN_LUA)
        self._commit_plan = client.register_script(_COMMIT_PLAN_LUA)

    @classmethod
    def from_url(cls, url: str) -> "JobStore":
        return cls(redis_client(url))

    @staticmethod
    def key(job_id: str, part: str = "") -> str:
        return f"{PREFIX}job:{job_id}" + (f":{part}" if part else "")

    # -- lifecycle ---------------------------------------------------------------------------
    def create(self, source: str, collection: str, include: Iterable[str] = (), *, kind: str = "ingest",
               options: dict | None = None, job_id: str | None = None) -> str:
        job_id = job_id or new_job_id()
        now = time.time()
        mapping = {"source": source, "collection": collection, "include": json.dumps(list(include)),
                   "status": "planning", "created_at": repr(now), "epoch": "0", "planned": "0",
                   "kind": kind, "options": json.dumps(options or {}),
                   **{c: "0" for c in COUNTERS + REINDEX_COUNTERS}}
        pipe = self.r.pipeline()
        pipe.hset(self.key(job_id), mapping=mapping)
        pipe.zadd(PREFIX + "jobs", {job_id: now})
        pipe.execute()
        return job_id

    def begin_plan(self, job_id: str) -> int:
        """Start (or restart) planning: a new epoch with zeroed counters. Returns the epoch."""
        self.get(job_id)
        epoch = int(self.r.hincrby(self.key(job_id), "epoch", 1))
        pipe = self.r.pipeline()
        zeroed = {c: "0" for c in COUNTERS + REINDEX_COUNTERS if c != "encoded"}
        pipe.hset(self.key(job_id), mapping={"planned": "0", **zeroed})
        pipe.delete(self.key(job_id, "batches"), self.key(job_id, "dead"))
        pipe.execute()
        return epoch

    def start_plan(self, job_id: str, cursor: dict) -> tuple[int, dict]:
        """(epoch, checkpoint): the first call starts the plan with ``cursor``; later calls
        (resumed or redelivered steps) get the stored checkpoint."""
        self.get(job_id)
        zeroed = [c for c in COUNTERS + REINDEX_COUNTERS if c != "encoded"]
        epoch, raw = self._start_plan(keys=[self.key(job_id), self.key(job_id, "batches"), self.key(job_id, "dead"),
                                            self.key(job_id, "listed")], args=[json.dumps(cursor), *zeroed])
        return int(epoch), json.loads(raw)

    def commit_plan(self, job_id: str, epoch: int, expected_step: int, cursor: dict, **fields) -> bool:
        """Store a plan checkpoint (and the job's counters) if the stored one is still at
        ``expected_step`` in this epoch: a duplicate step cannot commit a slice twice."""
        args: list = [epoch, expected_step, json.dumps(cursor)]
        for k, v in fields.items():
            args += [k, v]
        return int(self._commit_plan(keys=[self.key(job_id)], args=args)) == 1

    def plan_progress(self, job_id: str, epoch: int, listed: int, unchanged: int, enqueued: int) -> None:
        """Counts while listing (shown by ``--wait``); only the plan writes these fields."""
        if self.epoch(job_id) == epoch:
            self.r.hset(self.key(job_id), mapping={"listed": listed, "unchanged": unchanged,
                                                   "batches_enqueued": enqueued})

    def planned(self, job_id: str, epoch: int, listed: int, unchanged: int, batches: int) -> int:
        return int(self._planned(keys=[self.key(job_id)],
                                 args=[epoch, listed, unchanged, batches, repr(time.time())]))

    def add_batches(self, job_id: str, count: int) -> int:
        """Reserve ``count`` more batch numbers (dead-letter retry); returns the first one."""
        return int(self._add_batches(keys=[self.key(job_id)], args=[count]))

    def fail(self, job_id: str, message: str) -> None:
        """The job itself cannot go on (its source cannot be listed): status failed."""
        self.r.hset(self.key(job_id), mapping={"status": "failed", "error": message,
                                               "finished_at": repr(time.time())})

    def cancel(self, job_id: str) -> Job:
        job = self.get(job_id)
        if not job.finished:
            self.r.hset(self.key(job_id), mapping={"status": "cancelled", "finished_at": repr(time.time())})
        return self.get(job_id)

    def add_encoded(self, job_id: str, n: int) -> None:
        """Images that went through the model (redeliveries included): a cost metric."""
        if n:
            self.r.hincrby(self.key(job_id), "encoded", n)

    def finish_batch(self, job_id: str, epoch: int, batch_no: int, *, indexed: int, failures: list[dict],
                     retry: bool = False, recovered: Iterable[str] = ()) -> int:
        """Count one batch once. Returns 1 counted, 0 already counted, -1 stale epoch, -2 cancelled.

        ``failures`` are dead-letter entries (uri, reason, message, etag, size); ``recovered``
        are URIs of a retry batch that are now indexed (their dead letters are removed and
        they move from failed to indexed).
        """
        recovered = list(recovered)
        d_failed = -len(recovered) if retry else len(failures)
        record = json.dumps({"indexed": indexed, "failed": len(failures), "retry": retry, "at": time.time()})
        args: list = [epoch, f"{epoch}:{batch_no}", record, indexed, d_failed, len(failures), repr(time.time())]
        for f in failures:
            args.extend([f["uri"], json.dumps(f)])
        args.extend(recovered)
        return int(self._finish(keys=[self.key(job_id), self.key(job_id, "batches"), self.key(job_id, "dead")],
                                args=args))

    def set_fields(self, job_id: str, epoch: int, **values) -> None:
        """Extra plan results of the current epoch (a re-index's new/changed/removed)."""
        if self.epoch(job_id) == epoch:
            self.r.hset(self.key(job_id), mapping={k: str(v) for k, v in values.items()})

    def set_options(self, job_id: str, **values) -> None:
        """Merge ``values`` into the job's options (a migration records its alias swap)."""
        job = self.get(job_id)
        self.r.hset(self.key(job_id), "options", json.dumps({**job.options, **values}))

    # -- reading -----------------------------------------------------------------------------
    def epoch(self, job_id: str) -> int:
        return int(self.r.hget(self.key(job_id), "epoch") or 0)

    def status(self, job_id: str) -> str:
        return (self.r.hget(self.key(job_id), "status") or b"").decode()

    def get(self, job_id: str) -> Job:
        raw = self.r.hgetall(self.key(job_id))
        if not raw:
            raise JobNotFoundError(f"no ingest job {job_id!r} (see `imgsearch jobs list`)")
        h = {k.decode(): v.decode() for k, v in raw.items()}
        return Job(id=job_id, source=h.get("source", ""), collection=h.get("collection", ""),
                   status=h.get("status", "?"), created_at=float(h.get("created_at", 0)),
                   include=json.loads(h.get("include", "[]")), epoch=int(h.get("epoch", 0)),
                   planned=h.get("planned") == "1",
                   finished_at=float(h["finished_at"]) if h.get("finished_at") else None,
                   error=h.get("error", ""), counters={c: int(h.get(c, 0)) for c in COUNTERS + REINDEX_COUNTERS},
                   kind=h.get("kind", "ingest"), options=json.loads(h.get("options", "{}")),
                   plan=json.loads(h.get("plan_cursor", "{}")))

    def list(self, limit: int = 50) -> list[Job]:
        ids = [i.decode() for i in self.r.zrevrange(PREFIX + "jobs", 0, limit - 1)]
        jobs = []
        for job_id in ids:
            try:
                jobs.append(self.get(job_id))
            except JobNotFoundError:  # expired or deleted meanwhile
                continue
        return jobs

    def dead_letters(self, job_id: str) -> list[dict]:
        self.get(job_id)
        entries = [json.loads(v) for v in self.r.hvals(self.key(job_id, "dead"))]
        return sorted(entries, key=lambda e: e["uri"])

    def batch_records(self, job_id: str) -> dict[str, dict]:
        return {k.decode(): json.loads(v) for k, v in self.r.hgetall(self.key(job_id, "batches")).items()}
