"""OCR and caption stages in the distributed chain: real Celery worker, Redis, SeaweedFS,
milvus-lite server, the PP-OCRv6 models, and a local OpenAI-compatible vision endpoint
(tests/vision_server.py) as the caption backend. Printed text becomes searchable; an image
the endpoint refuses is dead-lettered with its reason; an endpoint outage is retried."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from common.ids import image_id
from common.settings import Settings
from tests.ingest.conftest import png_bytes
from tests.text_images import png, text_image
from tests.vision_server import VisionEndpoint

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

SIGNS = {"serial": ["SERIAL XK-4471-B"], "invoice": ["INVOICE 2026-0088", "total due 431 EUR"],
         "cafe": ["Fresh coffee beans"]}


def fresh_texts(dist):
    """A TextStore on a fresh connection (see Cluster.store: idle channels get dropped)."""
    from common.texts import TextStore

    dist.store()  # reconnects, with retries
    texts = TextStore(dist.settings)
    texts.exists()
    return texts


def test_printed_text_is_searchable_and_refused_images_are_dead_lettered(dist, warm_model):
    with VisionEndpoint() as endpoint:
        dist.set(caption_backend="openai", caption_endpoint=endpoint.url, caption_model="test-vl", caption_grid=0,
                 batch_size=4, batches_per_task=2)
        uris = {name: dist.put(f"docs/{name}.png", png(text_image(lines))) for name, lines in SIGNS.items()}
        uris["refused"] = dist.put("docs/refused.png", png(Image.new("RGB", (64, 64), (230, 20, 230))))
        uris["noise"] = dist.put("docs/noise.png", png_bytes(3))
        dist.put("docs/broken.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
        endpoint.fail_next = 2  # the endpoint is restarting: the caption stage retries with backoff
        dist.start_worker("plan,embed,ocr,caption,finish", "all")

        run = dist.cli("ingest", f"s3://{dist.bucket}/docs/", "--wait", "--json")
        assert run.returncode == 3, run.stderr + dist.logs()
        job = json.loads(run.stdout)
        assert (job["listed"], job["indexed"], job["failed"]) == (6, 4, 2), job
        reasons = {e["uri"].rsplit("/", 1)[1]: (e["reason"], e["message"]) for e in job["dead_letters"]}
        assert reasons["refused.png"][0] == "caption_error" and "content refused" in reasons["refused.png"][1]
        assert reasons["broken.png"][0] == "unsupported_type"  # a PNG signature and nothing else
        # one answered request per decodable image; requests of a batch are concurrent, so ones
        # answered beside a 503 are sent again when the stage retries (at most 7 per 503: a task
        # holds 2 batches of 4)
        assert 5 <= len(endpoint.requests) <= 5 + 2 * 7
        assert "retry" in dist.logs().lower()

    texts = fresh_texts(dist)
    serial = texts.rows_of(image_id(uris["serial"]))
    assert [r["text"] for r in serial if r["kind"] == "ocr"] == ["SERIAL XK-4471-B"]
    assert [r["text"] for r in serial if r["kind"] == "caption"] == ["a white picture 420x150"]
    assert {r["text"] for r in serial if r["kind"] == "tag"} == {"white", "wide"}
    assert {"caption", "tag"} <= {r["kind"] for r in texts.rows_of(image_id(uris["noise"]))}

    from query.search import SearchService

    fresh_texts(dist)
    service = SearchService(dist.settings)
    for query, name in (("XK-4471-B", "serial"), ("2026-0088", "invoice")):
        hits = service.search(text=query, k=3)
        assert hits[0].uri == uris[name], (query, [h.to_dict() for h in hits])
    # a paraphrase through the text channels (the reference CLIP model only knows clothing)
    assert service.search(text="espresso", k=3, channels=["bm25", "dense"])[0].uri == uris["cafe"]
    assert [h.uri for h in service.search(text="a sign", must=["EUR"], k=5)] == [uris["invoice"]]

    # a redelivered text stage rewrites the same rows (ids derived from image, kind, position)
    from ingest.text_stages import TextContext, ocr_stage

    texts = fresh_texts(dist)
    before = {n: texts.rows_of(image_id(u)) for n, u in uris.items()}
    result = {"job": "", "batch": 0, "source": f"s3://{dist.bucket}/docs/", "collection": dist.collection,
              "indexed": 3, "failures": [], "manifest": [{"uri": uris[n], "etag": "e", "size": 1} for n in SIGNS]}
    settings = Settings.from_env({f"IMGSEARCH_{k}": v for k, v in dist.vars.items()})
    again = ocr_stage(result, TextContext(settings))
    assert again["indexed"] == 3 and again["failures"] == [] and again["stages"] == ["ocr"]
    texts = fresh_texts(dist)
    assert {n: texts.rows_of(image_id(u)) for n, u in uris.items()} == before
