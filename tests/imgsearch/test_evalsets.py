"""The committed evaluation sets: rebuilt byte for byte by their script, well formed, small; and
the near-duplicate acceptance of issue 5 measured on them through real Milvus Lite.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from common.settings import Settings
from imgsearch.evalsets import load_dataset

ROOT = Path(__file__).resolve().parents[2]
EVALSETS = ROOT / "evalsets"
FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")


def digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_committed_sets_are_what_the_script_builds(tmp_path):
    pytest.importorskip("skimage", reason="scikit-image (test extra) builds the sets")
    if not FONT.exists():
        pytest.skip(f"{FONT} missing (Debian fonts-dejavu-core; scripts/bootstrap.sh installs it)")
    from scripts.build_eval_sets import build

    build(tmp_path / "evalsets")
    assert digests(tmp_path / "evalsets") == digests(EVALSETS)


def test_sets_are_small_and_well_formed():
    total = sum(p.stat().st_size for p in EVALSETS.rglob("*") if p.is_file())
    assert total < 5_000_000, f"evaluation sets grew to {total / 1e6:.1f} MB"

    ocr = load_dataset(EVALSETS / "ocr")
    assert ocr.layout == "jsonl" and ocr.kinds() == {"word": 12, "code": 12, "paraphrase": 24}
    for q in ocr.queries:
        assert len(q.relevant) == 1 and (ocr.root / q.relevant[0]).is_file()
    codes = [q.text for q in ocr.queries if q.kind == "code"]
    assert len(set(codes)) == 12 and all(any(c.isdigit() for c in code) for code in codes)

    neardup = load_dataset(EVALSETS / "neardup")
    assert neardup.layout == "folders" and len(neardup.queries) == 12 * 13
    assert len(neardup.images()) - len(neardup.queries) >= 40  # distractors

    mixed = load_dataset(EVALSETS)
    assert mixed.kinds() == {"word": 12, "code": 12, "paraphrase": 24, "near-duplicate": 144, "description": 12}
    for q in mixed.queries:
        assert all((mixed.root / r).is_file() for r in q.relevant), q.id
    assert {mixed.resolve(r) for q in mixed.queries for r in q.relevant} <= \
        {mixed.resolve(p.relative_to(mixed.root).as_posix()) for p in mixed.images()}


def test_paraphrases_are_not_the_printed_sentence():
    import json

    rows = [json.loads(line) for line in (EVALSETS / "ocr" / "queries.jsonl").read_text().splitlines()]
    for row in (r for r in rows if r["kind"] == "paraphrase"):
        printed = set(row["printed"].lower().strip(".").split())
        words = set(row["text"].lower().split())
        assert len(words & printed) / len(words) < 0.5, row  # mostly other words


@pytest.fixture(scope="module")
def neardup_index(tmp_path_factory, model_cache):
    from ingest.runner import run_ingest
    from query.search import SearchService

    # the phash channel is under test: OCR and tags of 197 photos would only cost time
    settings = Settings.from_env({}, clip_model="imgsearch-fmnist-lit-minilm",
                                 data_dir=tmp_path_factory.mktemp("neardup"), model_cache_dir=str(model_cache),
                                 ocr_enabled=False, caption_backend="off")
    summary = run_ingest(str(EVALSETS / "neardup"), settings, ("*.jpg",), progress=False)
    assert summary.failed == 0 and summary.indexed == 197
    return SearchService(settings)


def test_phash_channel_ranks_near_duplicates_at_map_095(neardup_index):
    from imgsearch.evaluate import evaluate

    report = evaluate(load_dataset(EVALSETS / "neardup"), neardup_index, ["phash"], k=10, depth=100)
    (phash,) = report.channels
    assert len(phash.per_query) == 156
    assert phash.mean()["map"] >= 0.95, phash.mean()  # issue 5's acceptance; measured 0.974
    per_copy: dict[str, list[float]] = {}
    for query_id, m in phash.per_query.items():
        per_copy.setdefault(Path(query_id).stem, []).append(m["map"])
    worst = min(sum(v) / len(v) for v in per_copy.values())
    assert worst >= 0.8, per_copy  # no kind of copy is left behind (crop70 is the hardest: 0.92)


def test_duplicate_listing_has_no_false_duplicate(neardup_index):
    from query.duplicates import find_duplicates

    report = find_duplicates(neardup_index.store, neardup_index.settings.duplicate_threshold)
    assert report.scanned == 197
    photos_found = set()
    for group in report.groups:
        folders = {Path(image["uri"]).parent.name for image in group.images}
        assert len(folders) == 1 and "_distractors" not in folders, folders  # one photo's copies only
        photos_found |= folders
    assert len(photos_found) == 12  # and every photo's copies are found
