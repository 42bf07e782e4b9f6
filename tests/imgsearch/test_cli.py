"""The command line, run as a user runs it: real subprocesses, exit codes, JSON output."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from imgsearch.demo import SAMPLES_DIR


def run(args, data_dir, model_cache, **env_extra) -> subprocess.CompletedProcess:
    env = {**os.environ, "IMGSEARCH_DATA_DIR": str(data_dir),
           "IMGSEARCH_MODEL_CACHE_DIR": str(model_cache), "HF_HUB_OFFLINE": "1", **env_extra}
    return subprocess.run([sys.executable, "-m", "imgsearch", *args], capture_output=True, text=True,
                          env=env, timeout=600)


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory, model_cache):
    data = tmp_path_factory.mktemp("demo")
    proc = run(["demo", "--json"], data, model_cache)
    assert proc.returncode == 0, proc.stderr
    return data, json.loads(proc.stdout)


def test_demo_indexes_the_samples_and_answers_well(demo_dir):
    _, report = demo_dir
    assert report["ingest"]["indexed"] == 200 and report["ingest"]["failed"] == 0
    precisions = [q["precision_at_10"] for q in report["queries"]]
    assert len(precisions) == 6 and sum(precisions) / len(precisions) >= 0.6


def test_search_after_demo_uses_its_collection(demo_dir, model_cache):
    data, _ = demo_dir
    proc = run(["search", "--text", "a red sneaker", "-k", "10", "--json"], data, model_cache)
    assert proc.returncode == 0, proc.stderr
    hits = json.loads(proc.stdout)
    assert len(hits) == 10 and set(hits[0]) == {"id", "uri", "score", "evidence"}
    assert {"clip", "bm25", "dense"} >= set(hits[0]["evidence"]) and "clip" in hits[0]["evidence"]
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    assert all(h["uri"].startswith(SAMPLES_DIR.as_uri()) for h in hits)
    assert sum("/sneaker/" in h["uri"] for h in hits) >= 6

    like = run(["search", "--like", str(hits[0]["id"]), "-k", "5", "--json"], data, model_cache)
    assert like.returncode == 0, like.stderr
    assert hits[0]["id"] not in {h["id"] for h in json.loads(like.stdout)}

    image = run(["search", "--image", str(sorted((SAMPLES_DIR / "bag").glob("*.png"))[0]), "-k", "3"],
                data, model_cache)
    assert image.returncode == 0 and "/bag/" in image.stdout.splitlines()[0]


def test_second_demo_run_skips_unchanged(demo_dir, model_cache):
    data, _ = demo_dir
    proc = run(["demo", "--json"], data, model_cache)
    report = json.loads(proc.stdout)
    assert (report["ingest"]["indexed"], report["ingest"]["unchanged"]) == (0, 200)


def test_errors_are_clear_and_exit_codes_distinct(tmp_path, model_cache):
    none = run(["search", "--text", "shoe"], tmp_path / "empty", model_cache)
    assert none.returncode == 1 and "run `imgsearch ingest" in none.stderr
    assert "Traceback" not in none.stderr

    missing = run(["ingest", str(tmp_path / "nope")], tmp_path / "d", model_cache)
    assert missing.returncode == 1 and "folder not found" in missing.stderr

    usage = run(["search"], tmp_path / "d", model_cache)
    assert usage.returncode == 2

    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "ok.png").write_bytes(next(SAMPLES_DIR.glob("coat/*.png")).read_bytes())
    (folder / "bad.jpg").write_bytes(b"")
    partial = run(["ingest", str(folder), "--json"], tmp_path / "d", model_cache)
    assert partial.returncode == 3, partial.stderr
    summary = json.loads(partial.stdout)
    assert (summary["indexed"], summary["failed"], summary["failure_reasons"]) == (1, 1, {"empty": 1})

    bad_env = run(["config"], tmp_path / "d", model_cache, IMGSEARCH_BATCH_SIZE="many")
    assert bad_env.returncode == 1 and "IMGSEARCH_BATCH_SIZE must be an integer" in bad_env.stderr


def test_config_masks_secrets_and_help_teaches(tmp_path, model_cache):
    proc = run(["config"], tmp_path, model_cache, IMGSEARCH_S3_SECRET_KEY="s3cr3t-value")
    assert proc.returncode == 0 and "IMGSEARCH_S3_SECRET_KEY" in proc.stdout
    assert "s3cr3t-value" not in proc.stdout
    helped = run(["--help"], tmp_path, model_cache)
    assert helped.returncode == 0 and "examples:" in helped.stdout and "Exit codes" in helped.stdout


def run_bytes(args: list, data_dir, model_cache, **env_extra) -> subprocess.CompletedProcess:
    """Like run(), but argv may hold raw bytes (not UTF-8: Python turns them into lone surrogates)."""
    env = {**os.environ, "IMGSEARCH_DATA_DIR": str(data_dir), "IMGSEARCH_MODEL_CACHE_DIR": str(model_cache),
           "HF_HUB_OFFLINE": "1", **env_extra}
    return subprocess.run([sys.executable.encode(), b"-m", b"imgsearch", *args], capture_output=True, env=env,
                          timeout=600)


HOSTILE_ARGS = [
    ([b"search", b"--like", b"99999999999999999999999999"], "must be an integer from 1 to"),
    ([b"search", b"--like", b"0"], "must be an integer from 1 to"),
    ([b"search", b"--like", b"s3://b/\xff.png"], "lone surrogate"),
    ([b"search", b"--text", b"shoe", b"-k", b"99999999999999999999999"], "k must be an integer"),
    ([b"search", b"--text", b"shoe", b"-k", b"-3"], "k must be an integer"),
    ([b"search", b"--text", b"shoe", b"--where", b"uri == \xff"], "lone surrogate"),
    ([b"search", b"--text", b"shoe", b"--where", b"width >= 1e999"], "64-bit integers"),
    ([b"search", b"--text", b"shoe", b"--where", b"width >= 99999999999999999999999"], "64-bit integers"),
    ([b"search", b"--text", b"shoe", b"--channels", b"\xff"], "unknown channels"),
    ([b"search", b"--text", b"shoe", b"--must", b"\xff"], "lone surrogate"),
    ([b"search", b"--image", b"/no/such/query.png"], "cannot read query image"),
    ([b"search", b"--image", b"s3://not a bucket/x"], "valid bucket name"),
    ([b"search", b"--like", b"s3://b/x.png", b"--channels", b"bm25,nope"], "unknown channels"),
]


def test_search_never_prints_a_traceback_whatever_its_arguments(tmp_path, model_cache, monkeypatch, capsys):
    """In-process main() with argv decoded as Python decodes a real one (surrogateescape).
    Arguments are checked before any model or collection is touched (an empty data dir)."""
    from imgsearch.cli import main

    monkeypatch.setenv("IMGSEARCH_DATA_DIR", str(tmp_path / "nothing-indexed"))
    monkeypatch.setenv("IMGSEARCH_MODEL_CACHE_DIR", str(model_cache))
    for args, fragment in HOSTILE_ARGS:
        code = main([os.fsdecode(a) for a in args])
        err = capsys.readouterr().err
        assert code == 1 and fragment in err and "Traceback" not in err, (args, err)


@pytest.mark.parametrize("args, fragment", [
    ([b"search", b"--like", "\u00b2".encode()], b"--like takes an image id"),  # "²".isdigit() is True
    ([b"search", b"--text", b"a \xff\xfe shoe"], b"lone surrogate"),
    ([b"search", b"--image", b"/dev/zero"], b"not a regular file"),
])
def test_a_real_command_line_gets_a_clear_error(demo_dir, model_cache, args, fragment):
    data, _ = demo_dir
    proc = run_bytes(args, data, model_cache)
    assert proc.returncode == 1, proc.stderr
    assert b"Traceback" not in proc.stderr and fragment in proc.stderr, proc.stderr


def test_search_image_takes_an_s3_uri(demo_dir, model_cache, s3_server):
    data, _ = demo_dir
    query = sorted((SAMPLES_DIR / "sandal").glob("*.png"))[0]
    s3 = s3_server.client()
    s3.create_bucket(Bucket="cli-queries")
    s3.put_object(Bucket="cli-queries", Key="my query.png", Body=query.read_bytes())
    env = {"IMGSEARCH_S3_ENDPOINT_URL": s3_server.endpoint_url, "IMGSEARCH_S3_ACCESS_KEY": s3_server.access_key,
           "IMGSEARCH_S3_SECRET_KEY": s3_server.secret_key}
    proc = run(["search", "--image", "s3://cli-queries/my query.png", "-k", "3", "--json"], data, model_cache, **env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)[0]["uri"] == query.as_uri()
    missing = run(["search", "--image", "s3://cli-queries/nope.png"], data, model_cache, **env)
    assert missing.returncode == 1 and "no readable query image" in missing.stderr, missing.stderr


def test_config_masks_credentials_in_url_query_strings(tmp_path, model_cache):
    proc = run(["config"], tmp_path, model_cache, IMGSEARCH_REDIS_URL="redis://cache:6379/0?password=topsecret",
               IMGSEARCH_MILVUS_URI="http://root:hunter2@milvus:19530?token=tok42")
    assert proc.returncode == 0, proc.stderr
    for secret in ("topsecret", "hunter2", "tok42"):
        assert secret not in proc.stdout
    assert "redis://cache:6379/0?password=****" in proc.stdout


NO_HEAVY_IMPORTS = """
import contextlib, io, json, sys
from imgsearch.cli import main

codes = []
for argv in (["--help"], ["search", "--help"], ["search"], ["search", "--text", "x", "-k", "0"],
             ["search", "--text", "x", "--channels", "bm42"], ["nope"]):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            codes.append(main(argv))
        except SystemExit as exc:
            codes.append(exc.code)
print(json.dumps([codes, sorted(m for m in ("torch", "open_clip", "transformers", "pymilvus", "rapidocr")
                                if m in sys.modules)]))
"""


def test_help_and_usage_errors_import_no_model_or_milvus_library(tmp_path, model_cache):
    env = {**os.environ, "IMGSEARCH_DATA_DIR": str(tmp_path), "IMGSEARCH_MODEL_CACHE_DIR": str(model_cache)}
    proc = subprocess.run([sys.executable, "-c", NO_HEAVY_IMPORTS], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [[0, 0, 2, 1, 1, 2], []]
