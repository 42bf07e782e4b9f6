"""Embedded re-index: new, changed and removed objects of a folder, real Milvus Lite and model.

The folder is changed between runs the way users change folders (files added, rewritten,
deleted); afterwards the index must hold exactly the folder's files, the report must count
each kind right, rows of another folder must survive, and a run with nothing to do must not
touch the model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

from common.ids import image_id
from common.store import ImageStore
from ingest.reindex import run_reindex
from ingest.runner import run_ingest
from tests.ingest.conftest import ROOT, png_bytes


def indexed(store: ImageStore) -> dict[str, str]:
    return {r["uri"]: r["etag"] for r in store.iter_rows(["uri", "etag"])}


def write(folder: Path, name: str, seed: int) -> Path:
    path = folder / name
    path.write_bytes(png_bytes(seed))
    return path


def folder_uris(folder: Path) -> set[str]:
    return {p.resolve().as_uri() for p in folder.rglob("*.png")}


def test_reindex_follows_adds_changes_and_deletes_and_keeps_other_sources(make_settings, tmp_path):
    settings = make_settings(batch_size=4)
    shop, other = tmp_path / "shop", tmp_path / "shop-archive"  # a sibling whose name extends shop
    shop.mkdir()
    other.mkdir()
    for i in range(6):
        write(shop, f"a{i}.png", i)
    write(other, "keep.png", 100)
    run_ingest(str(shop), settings, progress=False)
    run_ingest(str(other), settings, progress=False)
    store = ImageStore(settings)
    assert store.count() == 7

    write(shop, "new1.png", 50)
    write(shop, "new2.png", 51)
    changed = write(shop, "a0.png", 77)  # new content, new size/mtime -> new etag
    os.utime(changed, ns=(1, 10**18))  # force a different mtime even within the clock's resolution
    (shop / "a1.png").unlink()
    (shop / "a2.png").unlink()
    (shop / "notes.txt").write_text("not an image")

    report = run_reindex(str(shop), settings, progress=False)
    assert (report.listed, report.new, report.changed, report.unchanged, report.removed, report.failed) == \
        (7, 3, 1, 3, 2, 1), report.render()
    assert [f["reason"] for f in report.failures] == ["unsupported_type"]
    assert report.encoded == 3  # two new images + the changed one; never the unchanged ones

    rows = indexed(store)
    shop_rows = {u for u in rows if u.startswith(shop.resolve().as_uri() + "/")}
    assert shop_rows == folder_uris(shop)  # exactly the folder's images: removed ones gone, new ones in
    assert (other / "keep.png").resolve().as_uri() in rows  # another source is never touched
    assert store.get(image_id(changed.resolve().as_uri()))["etag"] == rows[changed.resolve().as_uri()]

    again = run_reindex(str(shop), settings, progress=False)  # notes.txt is tried again, and fails again
    assert (again.new, again.changed, again.unchanged, again.removed, again.failed) == (1, 0, 6, 0, 1)
    assert again.encoded == 0


def test_a_reindex_without_changes_loads_no_model(make_settings, tmp_path, milvus_server):
    """In a fresh process (no model cached yet): the run must finish without loading one.
    (A milvus-lite server: a Milvus Lite file stays locked by the process that opened it.)"""
    settings = make_settings(batch_size=4, milvus_uri=milvus_server.uri, collection="r" + uuid.uuid4().hex[:8])
    folder = tmp_path / "same"
    folder.mkdir()
    for i in range(3):
        write(folder, f"s{i}.png", i)
    run_ingest(str(folder), settings, progress=False)
    script = (
        "import json, sys\n"
        "from common.settings import Settings\n"
        "from common.models.base import MODELS\n"
        "from ingest.reindex import run_reindex\n"
        "s = Settings.from_env({'IMGSEARCH_CLIP_MODEL': 'imgsearch-fmnist-lit-minilm', "
        "'IMGSEARCH_DATA_DIR': sys.argv[1], 'IMGSEARCH_MODEL_CACHE_DIR': sys.argv[2],"
        "                       'IMGSEARCH_MILVUS_URI': sys.argv[4], 'IMGSEARCH_COLLECTION': sys.argv[5]})\n"
        "r = run_reindex(sys.argv[3], s, progress=False)\n"
        "print(json.dumps({**r.to_dict(), 'models_loaded': len(MODELS.loaded())}))\n")
    out = subprocess.run([sys.executable, "-c", script, str(settings.data_dir), settings.model_cache_dir, str(folder),
                          settings.milvus_uri, settings.collection],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert (report["listed"], report["unchanged"], report["new"], report["changed"], report["removed"]) == \
        (3, 3, 0, 0, 0)
    assert report["encoded"] == 0 and report["models_loaded"] == 0


def test_reindex_with_include_only_removes_rows_it_could_have_listed(make_settings, tmp_path):
    settings = make_settings(batch_size=4)
    folder = tmp_path / "mixed"
    folder.mkdir()
    write(folder, "x.png", 1)
    (folder / "y.jpg").write_bytes(png_bytes(2))  # a PNG named .jpg decodes fine
    run_ingest(str(folder), settings, progress=False)
    (folder / "x.png").unlink()

    report = run_reindex(str(folder), settings, include=("*.jpg",), progress=False)
    assert (report.listed, report.removed) == (1, 0)  # x.png is outside *.jpg: not this run's to remove
    assert ImageStore(settings).count() == 2
    report = run_reindex(str(folder), settings, progress=False)
    assert report.removed == 1
    assert set(indexed(ImageStore(settings))) == folder_uris(folder) | {(folder / "y.jpg").resolve().as_uri()}
