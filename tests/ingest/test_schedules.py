"""Scheduled re-index with two ``imgsearch beat`` processes at once: exactly one run happens.

Real Redis, S3, milvus-lite server, Celery worker and beat subprocesses. Both beats send
the re-index at the same cron tick; one task starts a run, the other is refused and the
refusal is recorded. Also: the settings' schedule format and the beat schedule built from it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from common.errors import ConfigError
from common.settings import Settings
from ingest.runlock import history
from ingest.schedules import TASK, beat_schedule
from tests.ingest.conftest import ROOT, png_bytes


def test_schedules_setting_builds_the_beat_schedule():
    raw = '{"s3://b/shop/": "0 2 * * *", "/data/photos": "*/15 * * * 1-5"}'
    settings = Settings.from_env({"IMGSEARCH_SCHEDULES": raw})
    sched = beat_schedule(settings)
    assert set(sched) == {"reindex s3://b/shop/", "reindex /data/photos"}
    entry = sched["reindex s3://b/shop/"]
    assert entry["task"] == TASK and entry["args"] == ["s3://b/shop/"] and entry["options"]["queue"] == "plan"
    assert entry["schedule"].hour == {2} and entry["schedule"].minute == {0}
    assert beat_schedule(Settings.from_env({})) == {}


@pytest.mark.parametrize("raw, fragment", [
    ("not json", "must be a JSON object"),
    ('["s3://b/"]', "must map sources to cron strings"),
    ('{"s3://b/": "0 2 * *"}', "needs 5 fields"),
])
def test_bad_schedules_name_the_setting(raw, fragment):
    with pytest.raises(ConfigError, match=fragment):
        Settings.from_env({"IMGSEARCH_SCHEDULES": raw})


def test_bad_cron_values_fail_when_the_schedule_is_built():
    with pytest.raises(ConfigError, match="bad cron"):
        beat_schedule(Settings.from_env({"IMGSEARCH_SCHEDULES": '{"s3://b/": "99 2 * * *"}'}))


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_two_beats_at_once_make_one_run(dist):
    source = f"s3://{dist.bucket}/nightly/"
    for i in range(24):
        dist.put(f"nightly/img{i:02d}.png", png_bytes(i))
    dist.set(schedules=json.dumps({source: "* * * * *"}))
    dist.start_worker("ocr,caption,finish,plan", "cpu")
    dist.start_worker("embed", "embed")
    if time.time() % 60 > 40:  # both beats must see the same next tick
        time.sleep(61 - time.time() % 60)
    beats = []
    for n in range(2):
        log = dist.tmp / f"beat-{n}.log"
        with open(log, "wb") as fh:
            beats.append(subprocess.Popen(
                [sys.executable, "-m", "imgsearch", "beat", "--schedule-file", str(dist.tmp / f"beat-{n}.db")],
                env=dist.env, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
                start_new_session=True))
        dist.workers.append((beats[-1], log))  # stopped with the workers

    def both_ticks():
        entries = [e for e in history(dist.jobs(), 100) if e["source"] == source]
        return entries if len(entries) >= 2 else None

    entries = dist.wait_for(both_ticks, 150, "both beats' tasks to be handled")
    for proc in beats:  # no further ticks
        proc.terminate()
    assert sorted(e["outcome"] for e in entries[:2]) == ["refused", "started"], entries
    refused = next(e for e in entries[:2] if e["outcome"] == "refused")
    started = next(e for e in entries[:2] if e["outcome"] == "started")
    assert "refused" in refused["message"]
    jobs = [j for j in dist.jobs().list(50) if j.source == source]
    assert [j.id for j in jobs] == [started["job"]]
    assert jobs[0].kind == "reindex" and jobs[0].options["trigger"].startswith("schedule@")
    dist.wait_for(lambda: dist.jobs().get(started["job"]).status == "done", 180, "the scheduled run")
    assert dist.jobs().get(started["job"]).indexed == 24
    assert dist.store().count() == 24
    # the run released its lock at the end; the refusal is visible to operators
    out = dist.cli("schedules", "--json")
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    assert shown["schedules"] == [{"source": source, "cron": "* * * * *", "running": None}]
    assert any(e["outcome"] == "refused" for e in shown["history"])
