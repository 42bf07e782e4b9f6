"""A mixed bucket through the workers: odd-but-valid images indexed (upright), bad ones
dead-lettered with distinct reasons, and ``dead-letters retry`` runs them again."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image, ImageOps

from common.ids import image_id
from tests.ingest.bad_files import bad_files
from tests.ingest.conftest import png_bytes

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def odd_valid_files() -> dict[str, bytes]:
    """Images that need care but must be indexed."""
    rng = np.random.default_rng(7)
    ramp = (np.linspace(0, 65535, 40 * 40).reshape(40, 40)).astype(np.uint16)
    cmyk = Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).convert("CMYK")
    frames = [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).convert("P") for _ in range(3)]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return {
        "deep16.png": encode(Image.fromarray(ramp), "PNG"),  # mode I;16
        "cmyk.jpg": encode(cmyk, "JPEG"),
        "animated.gif": gif.getvalue(),
        "rotated.jpg": rotated_jpeg(),
    }


def rotated_jpeg() -> bytes:
    """A 60x30 picture stored sideways with EXIF orientation 6 (display: rotate 90 clockwise)."""
    img = Image.new("RGB", (60, 30), (20, 20, 200))
    img.paste((230, 30, 30), (0, 0, 20, 30))  # a red band on the left
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(img, "JPEG", exif=exif, quality=95)


def test_mixed_bucket_valid_indexed_upright_bad_dead_lettered_then_retried(dist, warm_model):
    dist.set(max_image_bytes=200_000, max_image_pixels=10_000_000, batch_size=4, batches_per_task=2)
    good = {f"mixed/good{i}.png": png_bytes(500 + i) for i in range(8)}
    odd = {f"mixed/{name}": body for name, body in odd_valid_files().items()}
    bad = {f"mixed/{name}": (body, reason) for name, (body, reason) in bad_files(200_000).items()}
    for key, body in {**good, **odd, **{k: v[0] for k, v in bad.items()}}.items():
        dist.put(key, body)
    dist.start_worker("plan,embed,ocr,caption,finish", "all")

    run = dist.cli("ingest", f"s3://{dist.bucket}/mixed/", "--wait", "--json")
    assert run.returncode == 3, run.stderr + dist.logs()  # done, but some images failed
    job = json.loads(run.stdout)
    n_valid = len(good) + len(odd)
    assert (job["listed"], job["indexed"], job["failed"]) == (n_valid + len(bad), n_valid, len(bad))
    got = {e["uri"].rsplit("/", 1)[1]: e["reason"] for e in job["dead_letters"]}
    assert got == {k.rsplit("/", 1)[1]: reason for k, (_, reason) in bad.items()}
    kinds = ("zero.jpg", "page.jpg", "corrupt.png", "bomb.png", "truncated.png", "huge.png")
    assert len({got[name] for name in kinds}) == len(kinds)  # each kind of damage has its own reason
    html = next(e for e in job["dead_letters"] if e["uri"].endswith("/page.jpg"))
    assert "HTML" in html["message"]

    store = dist.store()
    assert store.count() == n_valid
    uri = f"s3://{dist.bucket}/mixed/rotated.jpg"
    row = store.get(image_id(uri), with_vector=True)
    assert (row["width"], row["height"]) == (30, 60)  # upright, not as stored
    upright = ImageOps.exif_transpose(Image.open(io.BytesIO(odd["mixed/rotated.jpg"]))).convert("RGB")
    assert float(np.dot(warm_model.encode_images([upright])[0], row["clip"])) > 0.999
    for key in odd:
        assert store.get(image_id(f"s3://{dist.bucket}/{key}")) is not None, key

    listing = dist.cli("dead-letters", "list", job["id"], "--json")
    assert listing.returncode == 0, listing.stderr
    letters = json.loads(listing.stdout)
    assert all(e["attempts"] == 1 and e["message"] for e in letters)

    # the operator fixes one object, then retries the job's dead letters
    dist.put("mixed/truncated.png", png_bytes(777))
    retry = dist.cli("dead-letters", "retry", job["id"], "--wait", "--json")
    assert retry.returncode == 3, retry.stderr + dist.logs()
    after = json.loads(retry.stdout)
    assert (after["status"], after["indexed"], after["failed"]) == ("done", n_valid + 1, len(bad) - 1)
    assert after["indexed"] + after["unchanged"] + after["failed"] == after["listed"]
    left = {e["uri"].rsplit("/", 1)[1]: e["attempts"] for e in after["dead_letters"]}
    assert "truncated.png" not in left and set(left.values()) == {2}
    assert dist.store().count() == n_valid + 1
