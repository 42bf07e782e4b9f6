"""`imgsearch duplicates` on a small collection whose groups are known, run as a user runs it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.imgsearch.test_cli import run

NEARDUP = Path(__file__).resolve().parents[2] / "evalsets" / "neardup"
PHOTOS = ("coffee", "astronaut", "camera")
COPIES = ("original", "jpeg30", "resize-small", "caption")
# Two blurry LFW faces whose hashes are 9 bits apart: distinct people, a pair only a loose
# threshold confuses; the horse is far from everything.
LONERS = ("horse.jpg", "lfw-face-003.jpg", "lfw-face-024.jpg")


@pytest.fixture(scope="module")
def collection(tmp_path_factory, model_cache):
    folder = tmp_path_factory.mktemp("photos")
    for photo in PHOTOS:
        for copy in COPIES:
            shutil.copy(NEARDUP / photo / f"{copy}.jpg", folder / f"{photo}-{copy}.jpg")
    for name in LONERS:
        shutil.copy(NEARDUP / "_distractors" / name, folder / name)
    data = tmp_path_factory.mktemp("data")
    proc = run(["ingest", str(folder)], data, model_cache)
    assert proc.returncode == 0, proc.stderr
    return data


def groups_of(report: dict) -> list[set[str]]:
    return [{Path(i["uri"]).name for i in g["images"]} for g in report["duplicate_groups"]]


def test_groups_are_exactly_the_copies_of_each_photo(collection, model_cache):
    proc = run(["duplicates", "--json"], collection, model_cache)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["threshold"] == 6 and report["scanned"] == 15  # the default threshold
    expected = [{f"{p}-{c}.jpg" for c in COPIES} for p in PHOTOS]
    assert sorted(groups_of(report), key=sorted) == sorted(expected, key=sorted)
    assert report["images_in_groups"] == 12
    for group in report["duplicate_groups"]:
        assert all(0 <= image["nearest"] <= 6 for image in group["images"])
    assert proc.stderr == ""  # no pymilvus noise on the operator's terminal


def test_threshold_option_tightens_and_loosens(collection, model_cache):
    exact = json.loads(run(["duplicates", "--threshold", "0", "--json"], collection, model_cache).stdout)
    # at 0 bits only byte-for-byte-equal hashes link: the captioned copies drop out
    assert all(not any("caption" in name for name in g) for g in groups_of(exact))
    loose = json.loads(run(["duplicates", "--threshold", "12", "--json"], collection, model_cache).stdout)
    assert {"lfw-face-003.jpg", "lfw-face-024.jpg"} in groups_of(loose)  # why the default is 6

    text = run(["--collection", "images", "duplicates", "--no-progress"], collection, model_cache)
    assert text.returncode == 0, text.stderr
    assert "15 images scanned, 3 duplicate groups (12 images), threshold 6 bits" in text.stdout
    assert "group 3: 4 images" in text.stdout and "camera-jpeg30.jpg" in text.stdout


def test_errors_are_clear(collection, tmp_path, model_cache):
    bad = run(["duplicates", "--threshold", "40"], collection, model_cache)
    assert bad.returncode == 1 and "DUPLICATE_THRESHOLD must be from 0 to 32" in bad.stderr
    missing = run(["duplicates", "--collection", "nothing"], collection, model_cache)
    assert missing.returncode == 1 and "does not exist" in missing.stderr and "Traceback" not in missing.stderr
    usage = run(["duplicates", "--threshold", "many"], collection, model_cache)
    assert usage.returncode == 2
