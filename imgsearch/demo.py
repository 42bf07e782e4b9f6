"""``imgsearch demo``: index the bundled samples offline and show example searches.

The samples are 200 Fashion-MNIST test images (20 per class, one folder per class), and
the model is the bundled reference model, so the demo needs no network and no servers.
Each query reports precision@10 against the folder names, so a newcomer sees at once
whether search is semantically right.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import unquote, urlparse

import common
from common.settings import Settings

SAMPLES_DIR = Path(common.__file__).resolve().parent / "assets" / "fmnist_samples"

TEXT_QUERIES = [
    ("a pair of sneakers", "sneaker"),
    ("a ladies' handbag", "bag"),
    ("blue jeans", "trouser"),
    ("an elegant evening dress", "dress"),
    ("open summer shoes with straps", "sandal"),
]


def class_of(uri: str) -> str:
    """The sample's class: the name of the folder it sits in."""
    return Path(unquote(urlparse(uri).path)).parent.name


def run_demo(settings: Settings, as_json: bool = False, progress: bool = True) -> int:
    from ingest.runner import run_ingest
    from query.search import SearchService

    if not SAMPLES_DIR.is_dir():
        raise FileNotFoundError(f"bundled samples missing: {SAMPLES_DIR}")
    from common.models.reference import REFERENCE_MODEL

    # The demo proves search offline: always the bundled reference model, whatever the default.
    settings = settings.with_overrides(clip_model=REFERENCE_MODEL, clip_pretrained="")
    summary = run_ingest(str(SAMPLES_DIR), settings, progress=progress)
    service = SearchService(settings)
    report = {"ingest": summary.to_dict(), "queries": []}
    for text, expected in TEXT_QUERIES:
        hits = service.search_text(text, 10)
        report["queries"].append(_entry(f"text: {text!r}", expected, hits))
    probe = next(iter(sorted((SAMPLES_DIR / "ankle-boot").glob("*.png"))))
    hits = service.search_image(probe.read_bytes(), 10)
    report["queries"].append(_entry(f"image: {probe.relative_to(SAMPLES_DIR)}", "ankle-boot", hits))
    if as_json:
        print(json.dumps(report, indent=2))
        return 0
    print(summary.render())
    print(f"\nmodel: {service.model.spec.label()} on {service.model.device}\n")
    for q in report["queries"]:
        print(f"{q['query']}  -> precision@10 {q['precision_at_10']:.1f} (expected class {q['expected']})")
        for rank, hit in enumerate(q["hits"][:5], 1):
            print(f"   {rank}. {hit['score']:.3f}  {class_of(hit['uri']):<11} id={hit['id']}")
    print(f"\nThe collection stays in {settings.data_dir}; try:\n"
          "  imgsearch search --text \"a warm winter coat\" -k 5\n"
          f"  imgsearch search --like {report['queries'][0]['hits'][0]['id']} -k 5")
    return 0


def _entry(query: str, expected: str, hits) -> dict:
    classes = [class_of(h.uri) for h in hits]
    return {"query": query, "expected": expected,
            "precision_at_10": sum(c == expected for c in classes[:10]) / 10.0,
            "hits": [h.to_dict() | {"class": c} for h, c in zip(hits, classes)]}
