"""`imgsearch eval` end to end on a tiny dataset: real Milvus Lite, the real reference model,
run as a user runs it (subprocess, exit codes, JSON)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from imgsearch.evalsets import DatasetError, load_dataset
from tests.imgsearch.test_cli import run

ROOT = Path(__file__).resolve().parents[2]
NEARDUP = ROOT / "evalsets" / "neardup"
EASY = ["original", "jpeg30", "resize-small"]  # copies whose hashes equal the original's


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """Two photos with two easy copies each, two distractors, six image queries, one text query."""
    root = tmp_path_factory.mktemp("tiny")
    queries = []
    for photo in ("coffee", "astronaut"):
        (root / photo).mkdir()
        for name in EASY:
            shutil.copy(NEARDUP / photo / f"{name}.jpg", root / photo / f"{name}.jpg")
        files = [f"{photo}/{n}.jpg" for n in EASY]
        queries += [{"id": f"{photo}-{Path(f).stem}", "kind": "near-duplicate", "image": f,
                     "relevant": [r for r in files if r != f]} for f in files]
    (root / "_distractors").mkdir()
    for name in ("horse", "lfw-face-003"):
        found = next((NEARDUP / "_distractors").glob(f"{name}*.jpg"))
        shutil.copy(found, root / "_distractors" / found.name)
    queries.append({"id": "describe-coffee", "kind": "description", "text": "a cup of coffee",
                    "relevant": [f"coffee/{n}.jpg" for n in EASY]})
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    return root


def test_eval_scores_each_channel_with_the_numbers_worked_out_by_hand(tiny, tmp_path, model_cache):
    proc = run(["eval", str(tiny), "--channels", "clip,phash", "-k", "2", "--depth", "10", "--json"],
               tmp_path / "data", model_cache)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert (report["images"], report["queries"], report["k"]) == (8, 7, 2)
    assert report["kinds"] == {"near-duplicate": 6, "description": 1}
    phash = report["channels"]["phash"]
    # every near-duplicate query finds its 2 copies first (distance 0) -> AP 1, P@2 1, R@2 1
    assert phash["by_kind"]["near-duplicate"] == {"p@k": 1.0, "r@k": 1.0, "f1@k": 1.0, "map": 1.0,
                                                  "pr_auc": 1.0, "mrr": 1.0, "hit@1": 1.0, "hit@5": 1.0}
    # the text query has nothing to search on phash: 0, so the mean over 7 queries is 6/7
    assert phash["answered"] == 6
    assert phash["all"]["map"] == pytest.approx(6 / 7, abs=1e-4)
    clip = report["channels"]["clip"]
    assert clip["answered"] == 7 and 0.0 <= clip["all"]["map"] <= 1.0
    # two channels: a fused row too, over the same queries (the text query searched on clip only)
    fused = report["channels"]["fused"]
    assert fused["answered"] == 7 and 0.0 <= fused["all"]["map"] <= 1.0

    table = run(["eval", str(tiny), "--channels", "phash", "-k", "2", "--no-progress"],
                tmp_path / "data", model_cache)
    assert table.returncode == 0, table.stderr
    assert "mAP" in table.stdout and "kind: near-duplicate" in table.stdout
    assert not (tmp_path / "data" / "milvus.db").exists()  # the temporary collection went away


def test_eval_of_an_existing_collection_maps_paths_through_the_uri_prefix(tiny, tmp_path, model_cache):
    data = tmp_path / "data"
    ingest = run(["ingest", str(tiny), "--include", "*.jpg"], data, model_cache)
    assert ingest.returncode == 0, ingest.stderr
    proc = run(["eval", str(tiny), "--existing", "--channels", "phash", "-k", "2", "--json"], data, model_cache)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["channels"]["phash"]["by_kind"]["near-duplicate"]["map"] == 1.0
    # a prefix that is not where the images came from: nothing relevant is ever found
    wrong = run(["eval", str(tiny), "--existing", "--uri-prefix", "s3://elsewhere/tiny/", "--channels",
                 "phash", "-k", "2", "--json"], data, model_cache)
    assert wrong.returncode == 0, wrong.stderr
    assert json.loads(wrong.stdout)["channels"]["phash"]["all"]["map"] == 0.0


def test_folder_per_class_layout(tiny, tmp_path, model_cache):
    folders = tmp_path / "classes"
    shutil.copytree(tiny, folders, ignore=shutil.ignore_patterns("queries.jsonl"))
    dataset = load_dataset(folders)
    assert dataset.layout == "folders" and len(dataset.queries) == 6  # distractors are never queries
    assert len(dataset.images()) == 8
    proc = run(["eval", str(folders), "--channels", "phash", "-k", "2", "--json"], tmp_path / "data", model_cache)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["channels"]["phash"]["all"]["map"] == 1.0


def test_bad_datasets_and_options_are_clear_errors(tiny, tmp_path, model_cache):
    missing = run(["eval", str(tmp_path / "nope")], tmp_path / "d", model_cache)
    assert missing.returncode == 1 and "dataset folder not found" in missing.stderr
    assert "Traceback" not in missing.stderr
    channel = run(["eval", str(tiny), "--channels", "clip,telepathy"], tmp_path / "d", model_cache)
    assert channel.returncode == 1 and "unknown channels ['telepathy']" in channel.stderr
    depth = run(["eval", str(tiny), "-k", "20", "--depth", "10"], tmp_path / "d", model_cache)
    assert depth.returncode == 1 and "k <= depth" in depth.stderr
    usage = run(["eval"], tmp_path / "d", model_cache)
    assert usage.returncode == 2


@pytest.mark.parametrize("line, message", [
    ('{"id": "a", "text": "x"', "not JSON"),
    ('{"id": "a", "relevant": ["x.jpg"]}', "exactly one of"),
    ('{"id": "a", "text": "x", "image": "y.jpg", "relevant": ["x.jpg"]}', "exactly one of"),
    ('{"id": "a", "text": "x", "relevant": []}', "non-empty list"),
    ('{"id": "a", "text": "  ", "relevant": ["x.jpg"]}', "non-empty string"),
    ('{"id": "a", "image": "missing.jpg", "relevant": ["x.jpg"]}', "query image not found"),
    ('{"id": "a", "text": "x", "relevant": ["x.jpg"]}\n{"id": "a", "text": "y", "relevant": ["x.jpg"]}',
     "duplicate query id"),
])
def test_malformed_queries_file_names_the_line(tmp_path, line, message):
    (tmp_path / "queries.jsonl").write_text(line + "\n")
    with pytest.raises(DatasetError, match=message):
        load_dataset(tmp_path)


def test_plot_draws_one_curve_per_channel_in_a_panel_per_query_kind(tiny, tmp_path, model_cache):
    from PIL import Image

    from imgsearch.plots import COLOURS

    out = tmp_path / "pr.png"
    proc = run(["eval", str(tiny), "--channels", "clip,phash", "-k", "2", "--depth", "10", "--json",
                "--plot", str(out)], tmp_path / "data", model_cache)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    with Image.open(out) as img:
        assert img.format == "PNG" and img.width > 900  # three panels side by side
        drawn = json.loads(img.text["Description"])
        pixels = img.convert("RGB").getdata()
        colours = {f"#{r:02x}{g:02x}{b:02x}" for r, g, b in pixels}
    assert drawn["recall"] == report["pr_curves"]["recall"] == [i / 10 for i in range(11)]
    assert set(drawn["panels"]) == {"all queries", "kind: near-duplicate", "kind: description"}
    for panel, curves in drawn["panels"].items():
        assert sorted(curves) == ["clip", "fused", "phash"], panel  # one curve per channel, and fused
    # the curves drawn are the report's: phash finds both copies first for every near-duplicate query
    assert drawn["panels"]["kind: near-duplicate"]["phash"] == [1.0] * 11
    assert drawn["panels"]["all queries"]["clip"] == report["pr_curves"]["precision"]["clip"]["all"]
    assert {COLOURS["clip"], COLOURS["phash"], COLOURS["fused"]} <= colours
    assert not {COLOURS["bm25"], COLOURS["dense"]} & colours  # channels not evaluated are not drawn


def test_plot_path_is_checked_before_any_work(tiny, tmp_path, model_cache):
    bad = run(["eval", str(tiny), "--plot", str(tmp_path / "curves.jpg")], tmp_path / "d", model_cache)
    assert bad.returncode == 1 and "ending in .png" in bad.stderr and "Traceback" not in bad.stderr
    missing = run(["eval", str(tiny), "--plot", str(tmp_path / "nope" / "pr.png")], tmp_path / "d", model_cache)
    assert missing.returncode == 1 and "does not exist" in missing.stderr
    assert not (tmp_path / "d" / "milvus.db").exists()  # refused before ingesting anything
