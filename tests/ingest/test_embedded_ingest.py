"""Embedded ingest end to end: real Milvus Lite, the real reference model, real files/S3."""

from __future__ import annotations

import json
import shutil

import pytest

from common.errors import ModelMismatchError
from common.ids import image_id
from common.models.clip import ClipModel
from common.store import ImageStore
from ingest.runner import dead_letter_path, run_ingest
from tests.ingest.bad_files import bad_files


@pytest.fixture
def encoder_calls(monkeypatch):
    """Counts images that go through the real encoder (a spy: the real method still runs)."""
    calls = []
    original = ClipModel.encode_image_tensors

    def counting(self, batch):
        calls.append(len(batch))
        return original(self, batch)

    monkeypatch.setattr(ClipModel, "encode_image_tensors", counting)
    return calls


def test_bundled_subset_is_indexed(indexed_samples):
    settings, summary = indexed_samples
    assert (summary.listed, summary.indexed, summary.unchanged, summary.failed) == (200, 200, 0, 0)
    assert ImageStore(settings).count() == 200


def test_second_ingest_does_no_model_work_and_keeps_the_count(indexed_samples, samples_dir,
                                                              encoder_calls):
    settings, _ = indexed_samples
    again = run_ingest(str(samples_dir), settings, progress=False)
    assert (again.indexed, again.unchanged, again.failed) == (0, 200, 0)
    assert encoder_calls == []
    assert ImageStore(settings).count() == 200


def test_bad_files_fail_with_reasons_while_the_rest_is_indexed(tmp_path, samples_dir, make_settings,
                                                               encoder_calls):
    folder = tmp_path / "mixed"
    folder.mkdir()
    good = sorted(samples_dir.glob("*/*.png"))[:12]
    for i, path in enumerate(good):
        shutil.copy(path, folder / f"good{i}.png")
    settings = make_settings(max_image_bytes=200_000, max_image_pixels=10_000_000, batch_size=8)
    expected = bad_files(settings.max_image_bytes)
    for name, (content, _) in expected.items():
        (folder / name).write_bytes(content)

    summary = run_ingest(str(folder), settings, progress=False)

    assert (summary.listed, summary.indexed, summary.failed) == (19, 12, 7)
    got = {f.uri.rsplit("/", 1)[1]: f.reason for f in summary.failures}
    assert got == {name: reason for name, (_, reason) in expected.items()}
    assert ImageStore(settings).count() == 12
    assert sum(encoder_calls) == 12  # bad files never reach the model
    letters = [json.loads(line) for line in dead_letter_path(settings).read_text().splitlines()]
    assert {(e["uri"].rsplit("/", 1)[1], e["reason"]) for e in letters} == set(got.items())
    assert all(e["message"] for e in letters)


def test_changed_file_is_reencoded_and_others_skipped(tmp_path, samples_dir, make_settings,
                                                      encoder_calls):
    folder = tmp_path / "f"
    folder.mkdir()
    paths = sorted(samples_dir.glob("*/*.png"))
    for i in range(5):
        shutil.copy(paths[i], folder / f"{i}.png")
    settings = make_settings()
    run_ingest(str(folder), settings, progress=False)
    shutil.copy(paths[100], folder / "3.png")  # new content under an old name
    encoder_calls.clear()
    again = run_ingest(str(folder), settings, progress=False)
    assert (again.indexed, again.unchanged) == (1, 4)
    assert encoder_calls == [1]
    row = ImageStore(settings).get(image_id((folder / "3.png").as_uri()))
    assert row["etag"] == f"{(folder / '3.png').stat().st_mtime_ns}-{(folder / '3.png').stat().st_size}"


def test_ingest_with_another_model_is_refused(indexed_samples, samples_dir):
    settings, _ = indexed_samples
    other = settings.with_overrides(clip_model="ViT-B-32", clip_pretrained="none")
    with pytest.raises(ModelMismatchError, match="was built with imgsearch-fmnist-lit-minilm"):
        run_ingest(str(samples_dir), other, progress=False)


@pytest.mark.integration
def test_s3_prefix_is_listed_page_by_page_and_indexed(s3_server, s3_settings, samples_dir,
                                                      encoder_calls):
    client = s3_server.client()
    client.create_bucket(Bucket="listing")  # its own bucket: the S3 server is shared by the session
    paths = sorted(samples_dir.glob("*/*.png"))[::5]  # 40 images, all classes
    for path in paths:
        client.put_object(Bucket="listing", Key=f"shop/{path.parent.name}/{path.name}",
                          Body=path.read_bytes())
    client.put_object(Bucket="listing", Key="shop/broken.jpg", Body=b"<html>oops</html>")
    client.put_object(Bucket="listing", Key="other/ignored.png", Body=paths[0].read_bytes())
    settings = s3_settings(batch_size=16)

    summary = run_ingest("s3://listing/shop/", settings, progress=False)

    assert (summary.listed, summary.indexed, summary.failed) == (41, 40, 1)
    assert summary.failures[0].uri == "s3://listing/shop/broken.jpg"
    assert summary.failures[0].reason == "unsupported_type"
    store = ImageStore(settings)
    assert store.count() == 40
    row = store.get_by_uri(f"s3://listing/shop/{paths[0].parent.name}/{paths[0].name}")
    assert row is not None and row["source"] == "s3://listing/shop/"
    encoder_calls.clear()
    again = run_ingest("s3://listing/shop/", settings, progress=False)
    assert (again.indexed, again.unchanged, again.failed) == (0, 40, 1)
    assert encoder_calls == []


@pytest.mark.integration
def test_s3_wrong_credentials_are_a_clear_error(s3_server, s3_settings):
    from common.errors import SourceError

    settings = s3_settings(s3_secret_key="wrong-secret")
    with pytest.raises(SourceError, match="cannot list s3://photos"):
        run_ingest("s3://photos/", settings, progress=False)


def test_a_checkpoint_that_gives_nan_vectors_dead_letters_instead_of_indexing(tmp_path, samples_dir,
                                                                               make_settings):
    """A broken checkpoint (NaN in the image tower) is bad input too: every image it encodes is
    dead-lettered as ``non_finite_vector``, nothing is indexed, no text rows are written."""
    import torch

    from common.models import reference
    from common.texts import TextStore

    base = make_settings()
    reference.register_config(base.cache_dir)
    state = torch.load(reference.reference_checkpoint(base.cache_dir), map_location="cpu", weights_only=False)
    weights = state.get("state_dict", state)
    name = next(k for k, v in weights.items() if k.startswith("visual.") and v.is_floating_point())
    weights[name] = torch.full_like(weights[name], float("nan"))
    broken = tmp_path / "broken.pt"
    torch.save(state, broken)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, path in enumerate(sorted(samples_dir.glob("*/*.png"))[:4]):
        shutil.copy(path, folder / f"img{i}.png")
    settings = make_settings(clip_pretrained=str(broken))

    summary = run_ingest(str(folder), settings, progress=False)

    assert (summary.listed, summary.indexed, summary.failed) == (4, 0, 4)
    assert {f.reason for f in summary.failures} == {"non_finite_vector"}
    assert "NaN" in summary.failures[0].message
    assert ImageStore(settings).count() == 0
    texts = TextStore(settings)
    assert not texts.exists() or all(texts.rows_of(image_id(f.uri)) == [] for f in summary.failures)
