"""Model migration under query load: real Redis, S3, milvus-lite server, Celery workers and a
query worker subprocess.

The second model is the bundled reference model with perturbed image-tower weights, saved as
a checkpoint file and passed as ``--pretrained PATH`` (no download, quick on a CPU). Its image
vectors differ from the reference model's, so every answer can be traced to one collection:
each must equal, ids and scores, the in-process answer of the old or of the new collection,
never a mix; no query may fail; queries sent after the swap must be answered by the new one.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from common.models.reference import REFERENCE_MODEL, reference_checkpoint
from query.client import SearchClient
from query.search import SearchService
from tests.query.conftest import WorkerProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

TEXTS = ["a pair of trousers", "a sneaker", "a handbag", "an ankle boot", "a summer dress", "a warm coat"]


@pytest.fixture(scope="module")
def perturbed_checkpoint(tmp_path_factory, model_cache) -> str:
    """The reference checkpoint with noise on the image tower: another model, same shape."""
    import torch
    from safetensors.torch import load_file, save_file

    state = load_file(str(reference_checkpoint(model_cache)))
    gen = torch.Generator().manual_seed(7)
    for key, value in state.items():
        # weights only: batch-norm running statistics must stay valid (a negative variance gives NaN)
        if key.startswith("visual.") and "running_" not in key and value.is_floating_point() and value.numel() > 1:
            value.add_(torch.randn(value.shape, generator=gen) * 0.3 * value.float().std())
    path = tmp_path_factory.mktemp("ckpt") / "reference-perturbed.safetensors"
    save_file(state, str(path))
    return str(path)


def as_pairs(hits) -> list[tuple[int, float]]:
    return [(h.id, float(h.score)) for h in hits]


def same(a: list[tuple[int, float]], b: list[tuple[int, float]]) -> bool:
    return len(a) == len(b) and all(x[0] == y[0] and abs(x[1] - y[1]) < 1e-4 for x, y in zip(a, b))


def test_migration_under_query_load_swaps_with_no_mixed_or_failed_answers(dist, samples_dir, perturbed_checkpoint):
    for path in sorted(samples_dir.glob("*/*.png"))[::7]:  # 29 images, every class
        dist.put(f"cat/{path.parent.name}/{path.name}", path.read_bytes())
    dist.set(query_timeout_ms=120_000)
    dist.start_worker("embed", "embed")
    dist.start_worker("ocr,caption,finish,plan", "cpu")
    run = dist.cli("ingest", f"s3://{dist.bucket}/cat/", "--wait", "--json")
    assert run.returncode == 0, run.stderr + dist.logs()
    rows = json.loads(run.stdout)["indexed"]
    old_name, new_name = f"{dist.collection}_v1", f"{dist.collection}_v2"

    settings = dist.settings
    qworker = WorkerProcess(settings, "qw", dist.tmp)
    answers: list[tuple[str, list, float, float]] = []
    errors: list[str] = []
    stop = threading.Event()
    try:
        qworker.wait_ready()
        client = SearchClient(settings=settings)

        def load(n: int) -> None:
            i = n
            while not stop.is_set():
                text = TEXTS[i % len(TEXTS)]
                i += 1
                sent = time.time()
                try:
                    hits = client.search(text=text, k=5, channels=["clip"]).hits
                except Exception as exc:  # any failure is a test failure, collected
                    errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                answers.append((text, as_pairs(hits), sent, time.time()))

        with ThreadPoolExecutor(3) as pool:
            for n in range(3):
                pool.submit(load, n)
            time.sleep(2)
            mig = dist.cli("migrate", "--model", REFERENCE_MODEL, "--pretrained", perturbed_checkpoint,
                           "--wait", "--json", timeout=600)
            swapped_at = time.time()
            time.sleep(4)  # keep the load on after the swap
            stop.set()
        # an image query after the swap: the image towers differ, so this shows the model used
        query_image = next(iter(sorted(samples_dir.glob("sneaker/*.png")))).read_bytes()
        image_answer = as_pairs(client.search(image=query_image, k=5, channels=["clip"]).hits)
        client.close()
    finally:
        stop.set()
        qworker.stop()
    assert mig.returncode == 0, mig.stdout + mig.stderr + dist.logs() + qworker.log()
    report = json.loads(mig.stdout)
    assert (report["old"], report["new"], report["swapped"], report["failed"]) == (old_name, new_name, True, 0)
    assert report["rows"] == rows and report["indexed"] == rows

    assert not errors, errors[:5]
    dist.store()  # a fresh Milvus connection (idle ones are dropped by the server, see Cluster.store)
    old = SearchService(settings.with_overrides(collection=old_name))
    new = SearchService(settings.with_overrides(collection=new_name))
    assert old.model.spec.digest != new.model.spec.digest
    expected = {t: (as_pairs(old.search_text(t, 5)), as_pairs(new.search_text(t, 5))) for t in TEXTS}
    assert all(len(o) == len(n) == 5 for o, n in expected.values()), expected
    assert all(not same(o, n) for o, n in expected.values()), "the two collections must answer differently"
    origin = []
    for text, got, sent, _ in answers:
        o, n = expected[text]
        assert same(got, o) or same(got, n), f"answer for {text!r} matches neither collection: {got}"
        origin.append(("old" if same(got, o) else "new", sent))
    assert all(len(got) == 5 for _, got, _, _ in answers)
    assert any(w == "old" for w, _ in origin), "no answer came from the old collection during the migration"
    after = [w for w, sent in origin if sent > swapped_at + 0.5]
    assert after and set(after) == {"new"}, "queries after the swap must use the new collection"

    assert len(image_answer) == 5 and same(image_answer, as_pairs(new.search_image(query_image, 5)))
    assert not same(image_answer, as_pairs(old.search_image(query_image, 5)))

    listing = json.loads(dist.cli("collections", "--json").stdout)
    by_name = {c["name"]: c for c in listing}
    assert by_name[old_name]["aliases"] == [] and by_name[new_name]["aliases"] == [dist.collection]
    assert by_name[new_name]["rows"] == by_name[old_name]["rows"] == rows
    assert by_name[new_name]["digest"] == new.model.spec.digest

    drop = dist.cli("migrate", "--drop-old", "--json")
    assert drop.returncode == 0, drop.stderr
    assert json.loads(drop.stdout)["dropped"] == [old_name]
    assert old_name not in {c["name"] for c in json.loads(dist.cli("collections", "--json").stdout)}
    shutil.rmtree(dist.tmp / "data", ignore_errors=True)
