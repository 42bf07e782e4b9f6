"""Embedded ingest with the endpoint caption backend: captions stored per image; with the
endpoint gone, the new image is dead-lettered (caption_error) and the run still finishes."""

from __future__ import annotations

import socket

from PIL import Image

from common.ids import image_id
from common.store import ImageStore
from common.texts import TextStore
from ingest.runner import run_ingest
from tests.text_images import png, text_image
from tests.vision_server import VisionEndpoint


def test_endpoint_captions_and_an_outage_dead_lettered(make_settings, tmp_path):
    folder = tmp_path / "src"
    folder.mkdir()
    Image.new("RGB", (64, 48), "red").save(folder / "red.png")
    (folder / "sign.png").write_bytes(png(text_image(["EXIT 12"], size=(200, 70))))
    with VisionEndpoint() as endpoint:
        settings = make_settings(caption_backend="openai", caption_endpoint=endpoint.url, caption_model="m",
                                 caption_grid=0)
        summary = run_ingest(str(folder), settings, progress=False)
    assert (summary.indexed, summary.failed) == (2, 0), summary.render()
    texts = TextStore(settings)
    red = texts.rows_of(image_id((folder / "red.png").as_uri()))
    assert [(r["kind"], r["text"]) for r in red] == [("caption", "a red picture 64x48"), ("tag", "red"),
                                                    ("tag", "wide")]
    sign = texts.rows_of(image_id((folder / "sign.png").as_uri()))
    assert [r["text"] for r in sign if r["kind"] == "ocr"] == ["EXIT 12"]

    with socket.socket() as s:  # a port nobody listens on: the endpoint is down
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    Image.new("RGB", (64, 48), "blue").save(folder / "blue.png")
    again = run_ingest(str(folder), settings.with_overrides(caption_endpoint=dead), progress=False)
    assert (again.indexed, again.unchanged, again.failed) == (0, 2, 1), again.render()
    failure = again.failures[0]
    assert failure.uri.endswith("/blue.png") and failure.reason == "caption_error"
    assert "unreachable" in failure.message and again.dead_letter_file
    assert ImageStore(settings).get(image_id(failure.uri)) is not None  # its CLIP vector is indexed
