"""Embedded migration through the CLI (Milvus Lite file, in-process): a new version is built
with the new model, the alias moves, ``collections`` shows both, ``--drop-old`` removes the old."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from common.models.reference import REFERENCE_MODEL
from tests.ingest.conftest import ROOT
from tests.ingest.test_migrate import perturbed_checkpoint  # noqa: F401  (fixture)
from tests.servers import imgsearch_env

pytestmark = pytest.mark.timeout(1200)  # a hang guard: the module ran 705 s at load ~15 on 2 cores


def cli(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "imgsearch", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_embedded_migrate_swaps_and_lists(tmp_path, model_cache, samples_dir, perturbed_checkpoint):  # noqa: F811
    env = imgsearch_env({"DATA_DIR": str(tmp_path / "data"), "MODEL_CACHE_DIR": str(model_cache), "DEVICE": "cpu",
                         "CLIP_MODEL": REFERENCE_MODEL})  # the bundled model, explicitly
    folder = tmp_path / "few"
    folder.mkdir()
    for path in sorted(samples_dir.glob("*/*.png"))[::20]:
        (folder / f"{path.parent.name}-{path.name}").write_bytes(path.read_bytes())
    assert cli(env, "ingest", str(folder)).returncode == 0

    before = cli(env, "search", "--image", str(next(folder.iterdir())), "-k", "3", "--json")
    mig = cli(env, "migrate", "--model", REFERENCE_MODEL, "--pretrained", perturbed_checkpoint, "--json")
    assert mig.returncode == 0, mig.stderr
    report = json.loads(mig.stdout)
    assert (report["old"], report["new"], report["swapped"], report["indexed"]) == ("images_v1", "images_v2", True, 10)
    after = cli(env, "search", "--image", str(next(folder.iterdir())), "-k", "3", "--json")
    assert [h["id"] for h in json.loads(after.stdout)][0] == [h["id"] for h in json.loads(before.stdout)][0]
    assert json.loads(after.stdout) != json.loads(before.stdout)  # other model, other scores

    listing = cli(env, "collections")
    assert listing.returncode == 0, listing.stderr
    lines = {line.split()[0]: line for line in listing.stdout.splitlines()}
    assert "aliases: images" in lines["images_v2"] and "aliases: -" in lines["images_v1"]
    assert all(re.search(r"rows: ~?10 ", lines[n]) for n in ("images_v1", "images_v2"))  # ~: from statistics

    again = cli(env, "migrate", "--model", REFERENCE_MODEL, "--pretrained", perturbed_checkpoint)
    assert again.returncode == 1 and "already built with" in again.stderr
    drop = cli(env, "migrate", "--drop-old", "--json")
    assert json.loads(drop.stdout) == {"dropped": ["images_v1"]}
    assert "images_v1" not in cli(env, "collections").stdout
