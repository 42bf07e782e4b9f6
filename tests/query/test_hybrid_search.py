"""Hybrid search end to end (embedded): printed text is OCRed at ingest and found by BM25
(exact codes) and dense text vectors (paraphrases), fused with CLIP by RRF, with evidence;
image queries find near-duplicates by phash and search the query image's own text."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from common.errors import QueryError
from common.ids import image_id
from common.settings import Settings
from common.texts import TextStore
from query.filters import compile_filters
from query.search import SearchService
from tests.query.conftest import ROOT, settings_env
from tests.text_images import png, text_image

SIGNS = {
    "serial": ["SERIAL XK-4471-B", "made in Germany"],
    "coffee": ["Fresh coffee beans", "roasted every day"],
    "invoice": ["INVOICE 2026-0088", "total due 431 EUR"],
    "parking": ["NO PARKING", "tow away zone"],
}


@pytest.fixture(scope="module")
def hybrid(tmp_path_factory, model_cache, samples_dir):
    from ingest.runner import run_ingest

    folder = tmp_path_factory.mktemp("hybrid-src")
    for name, lines in SIGNS.items():
        (folder / f"{name}.png").write_bytes(png(text_image(lines)))
    for cls in ("sneaker", "bag"):
        (folder / cls).mkdir()
        for p in sorted((samples_dir / cls).glob("*.png"))[:5]:
            shutil.copy(p, folder / cls / p.name)
    settings = Settings.from_env({}, clip_model="imgsearch-fmnist-lit-minilm",
                                 data_dir=tmp_path_factory.mktemp("hybrid-data"),
                                 model_cache_dir=str(model_cache))
    summary = run_ingest(str(folder), settings, progress=False)
    assert (summary.indexed, summary.failed) == (14, 0), summary.render()
    return settings, folder, SearchService(settings)


def uri(folder, name: str) -> str:
    return (folder / f"{name}.png").as_uri()


def test_ingest_stores_ocr_lines_and_tags(hybrid):
    settings, folder, _ = hybrid
    texts = TextStore(settings)
    rows = texts.rows_of(image_id(uri(folder, "serial")))
    assert [r["text"] for r in rows if r["kind"] == "ocr"] == SIGNS["serial"]
    sneaker = next((folder / "sneaker").glob("*.png")).as_uri()
    small = texts.rows_of(image_id(sneaker))
    assert {r["kind"] for r in small} == {"tag"}  # 28x28: no OCR, but zero-shot tags
    assert "sneaker" in [r["text"] for r in small]


def test_exact_codes_rank_first_with_their_line_as_evidence(hybrid):
    _, folder, service = hybrid
    for query, name in (("XK-4471-B", "serial"), ("2026-0088", "invoice"), ("PARKING", "parking")):
        hits = service.search(text=query, k=5)
        assert hits[0].uri == uri(folder, name), (query, [h.to_dict() for h in hits])
        bm25 = hits[0].evidence["bm25"]
        assert bm25["rank"] == 1 and bm25["kind"] == "ocr" and query.lower() in bm25["text"].lower()
        assert bm25["coverage"] == 1.0  # the line holds every word of the query
        assert set(hits[0].evidence) <= {"clip", "bm25", "dense"}


def test_paraphrases_find_their_text_through_dense_vectors(hybrid):
    _, folder, service = hybrid
    for query, name in (("a bill that has to be paid", "invoice"), ("do not leave your car here", "parking"),
                        ("espresso", "coffee")):
        hits = service.search(text=query, k=5, channels=["dense"])
        assert hits[0].uri == uri(folder, name), (query, [h.to_dict() for h in hits])
        assert hits[0].score == pytest.approx(hits[0].evidence["dense"]["score"], abs=1e-6)  # one channel: own score
        assert uri(folder, name) in [h.uri for h in service.search(text=query, k=5)]


def test_must_channels_and_filters(hybrid):
    _, folder, service = hybrid
    must = service.search(text="a sign", k=10, must=["EUR"])
    assert [h.uri for h in must] == [uri(folder, "invoice")]
    assert service.search(text="a sign", k=10, must=["eur", "parking"]) == []
    sneakers = service.search(text="a sneaker", k=10, channels=["clip", "bm25"])
    assert sum("/sneaker/" in h.uri for h in sneakers[:5]) >= 4
    assert all(set(h.evidence) <= {"clip", "bm25"} for h in sneakers)
    only_bags = compile_filters([{"field": "uri", "op": "prefix", "value": (folder / "bag").as_uri()}])
    assert all("/bag/" in h.uri for h in service.search(text="XK-4471-B", k=10, filter_expr=only_bags))
    for bad, fragment in ((["nope"], "unknown channels"), (["phash"], "needs an image query")):
        with pytest.raises(QueryError, match=fragment):
            service.search(text="x", channels=bad)


def test_image_queries_use_phash_and_the_query_images_text(hybrid):
    _, folder, service = hybrid
    # a re-encoded, slightly resized copy of an indexed sign: phash and CLIP find it first
    copy = Image.open(folder / "coffee.png").convert("RGB").resize((400, 143))
    buf = io.BytesIO()
    copy.save(buf, "JPEG", quality=60)
    hits = service.search(image=buf.getvalue(), k=3)
    assert hits[0].uri == uri(folder, "coffee")
    assert hits[0].evidence["phash"]["rank"] == 1 and hits[0].evidence["phash"]["score"] >= 40
    # a different picture of the same words (other colours, other layout): found by its text
    photo = text_image(["serial xk-4471-b"], size=(380, 90), background=(200, 220, 255), ink=(90, 0, 0))
    hits = service.search(image=png(photo), k=3, channels=["bm25", "dense"])
    assert hits[0].uri == uri(folder, "serial")
    assert "XK-4471-B" in hits[0].evidence["bm25"]["text"]
    like = service.search(like=uri(folder, "invoice"), k=3, channels=["clip", "phash"])
    assert uri(folder, "invoice") not in [h.uri for h in like]


def test_reindexing_a_changed_image_replaces_its_text(hybrid, tmp_path, model_cache):
    from ingest.runner import run_ingest

    folder = tmp_path / "src"
    folder.mkdir()
    (folder / "board.png").write_bytes(png(text_image(["OPEN 9-17"])))
    settings = Settings.from_env({}, clip_model="imgsearch-fmnist-lit-minilm",
                                 data_dir=tmp_path / "data", model_cache_dir=str(model_cache),
                                 caption_backend="off")
    run_ingest(str(folder), settings, progress=False)
    (folder / "board.png").write_bytes(png(text_image(["CLOSED FOREVER"])))
    summary = run_ingest(str(folder), settings, progress=False)
    assert summary.indexed == 1
    texts = TextStore(settings)
    assert [r["text"] for r in texts.rows_of(image_id((folder / "board.png").as_uri()))] == ["CLOSED FOREVER"]
    assert SearchService(settings).search(text="OPEN 9-17", k=3, channels=["bm25"]) == []


def test_the_channels_are_one_registry_and_one_path(hybrid):
    from query.channels import REGISTRY

    _, folder, service = hybrid
    assert list(REGISTRY) == ["clip", "phash", "bm25", "dense"] and set(service.channels) == set(REGISTRY)
    fused = service.search(text="a sneaker", k=5, channels=["clip"])
    plain = service.search_text("a sneaker", 5)  # the clip channel alone, as plain hits
    assert [(h.id, h.uri, h.score) for h in plain] == [(h.id, h.uri, h.score) for h in fused]
    assert [h.evidence for h in fused] == [{"clip": {"rank": n, "score": round(h.score, 6)}}
                                           for n, h in enumerate(fused, 1)]


def test_warm_up_loads_every_channel_it_serves_and_nothing_loads_before(hybrid):
    from common.models.base import MODELS

    settings, _, _ = hybrid
    MODELS.unload()  # the others' services load theirs again on their next query
    service = SearchService(settings)
    assert MODELS.loaded() == []  # a service loads a model when a query first needs it
    assert service.warm() == ["clip", "phash", "bm25", "dense"]
    assert {i.kind for i in MODELS.loaded()} == {"clip", "text", "ocr"}  # OCR: image queries' own text
    assert all(m.loaded for c in service.channels.values() for m in c.models())


LAZY = """
import json, sys
from pathlib import Path
from common.models.base import MODELS
from common.settings import Settings
from query.search import SearchService

service, out = SearchService(Settings.from_env()), {}
kinds = lambda: sorted({i.kind for i in MODELS.loaded()})
service.search(text="XK-4471-B", k=3, channels=["bm25"])
out["bm25"] = ["torch" in sys.modules, kinds()]
service.search(text="a sneaker", k=3, channels=["clip"])
out["clip"] = kinds()
service.search(image=Path(sys.argv[1]).read_bytes(), k=3)  # 28x28: too small to OCR
out["small image"] = kinds()
service.search(image=Path(sys.argv[2]).read_bytes(), k=3, channels=["clip", "phash"])
out["sign, no text channel"] = kinds()
service.search(text="a sneaker", k=3)
out["text"] = kinds()
service.search(image=Path(sys.argv[2]).read_bytes(), k=3)
out["sign"] = kinds()
print(json.dumps(out))
"""


def test_a_search_process_loads_only_what_its_queries_need(hybrid, tmp_path):
    """In a fresh process (as the CLI runs it): BM25 alone imports no torch; CLIP loads for the
    clip channel, the text model for dense text, OCR only for a text channel on an image
    big enough to read. Last but one here: it releases the Milvus Lite file."""
    from milvus_lite.server_manager import server_manager_instance

    from common.store import close_clients

    settings, folder, _ = hybrid
    close_clients()
    server_manager_instance.release_server(settings.effective_milvus_uri())  # the in-process Lite server
    small = next((folder / "bag").glob("*.png"))
    proc = subprocess.run([sys.executable, "-c", LAZY, str(small), str(folder / "serial.png")],
                          env=settings_env(settings), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.splitlines()[-1]) == {
        "bm25": [False, []], "clip": ["clip"], "small image": ["clip"], "sign, no text channel": ["clip"],
        "text": ["clip", "text"], "sign": ["clip", "ocr", "text"]}


def test_cli_shows_channels_and_evidence(hybrid):
    """Last in this module: it releases the Milvus Lite file so the CLI process can open it."""
    from milvus_lite.server_manager import server_manager_instance

    from common.store import close_clients

    settings, folder, _ = hybrid
    close_clients()
    server_manager_instance.release_server(settings.effective_milvus_uri())  # the in-process Lite server
    cmd = [sys.executable, "-m", "imgsearch", "search", "--text", "XK-4471-B", "--channels", "bm25,clip",
           "--must", "germany", "-k", "3"]
    proc = subprocess.run(cmd, env=settings_env(settings), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].endswith(uri(folder, "serial")) and len([ln for ln in lines if "file://" in ln]) == 1
    assert any("bm25" in ln and "ocr: 'SERIAL XK-4471-B'" in ln for ln in lines), proc.stdout
    bad = subprocess.run(cmd[:-2] + ["--channels", "bm42"], env=settings_env(settings), cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and "unknown channels" in bad.stderr
