"""The Milvus store (real Milvus Lite): model record, alias naming, idempotent upserts."""

from __future__ import annotations

import numpy as np
import pytest

from common.errors import CollectionNotFoundError, ModelMismatchError
from common.models.clip import ModelSpec
from common.store import ImageStore, quote_string

SPEC = ModelSpec("toy-model", "toy-weights", "abc123", 8)


def row(i: int, vec) -> dict:
    return {"id": i, "uri": f"file:///x/{i}.png", "etag": f"e{i}", "source": "file:///x",
            "width": 1, "height": 1, "bytes": 1, "mime": "image/png", "indexed_at": 0,
            "model": "toy-model@abc123", "clip": list(map(float, vec)), "phash": [1.0] * 64}


def test_collection_is_versioned_behind_an_alias_and_records_its_model(make_settings):
    store = ImageStore(make_settings(collection="photos"))
    with pytest.raises(CollectionNotFoundError, match="imgsearch ingest"):
        store.model_spec()
    assert store.ensure(SPEC) == "photos_v1"
    assert store.physical_name() == "photos_v1"
    assert store.model_spec() == SPEC
    assert store.ensure(SPEC) == "photos_v1"  # idempotent


def test_another_model_is_refused(make_settings):
    store = ImageStore(make_settings())
    store.ensure(SPEC)
    other = ModelSpec("toy-model", "retrained", "def456", 8)
    with pytest.raises(ModelMismatchError, match="was built with toy-model"):
        store.ensure(other)


def test_upserts_are_idempotent_and_search_ranks_by_inner_product(make_settings):
    store = ImageStore(make_settings())
    store.ensure(SPEC)
    vecs = np.eye(8, dtype=np.float32)
    store.upsert([row(i + 1, vecs[i]) for i in range(8)])
    store.upsert([row(i + 1, vecs[i]) for i in range(8)])
    assert store.count() == 8
    hits = store.search([vecs[3] * 0.9 + vecs[5] * 0.1], k=3)[0]
    assert [h.id for h in hits[:2]] == [4, 6]
    assert hits[0].score == pytest.approx(0.9, abs=1e-5)
    assert [h.id for h in store.search([vecs[3]], k=2, exclude_ids=[4])[0]][0] != 4
    assert store.get_by_uri('file:///x/4.png')["id"] == 4
    assert set(store.existing([1, 2, 99])) == {1, 2}


def test_string_literals_cannot_break_out():
    assert quote_string('a"b\\c') == '"a\\"b\\\\c"'
    with pytest.raises(ValueError):
        quote_string("line\nbreak")


def test_model_record_survives_reopening(make_settings):
    from common.store import close_clients

    settings = make_settings()
    ImageStore(settings).ensure(SPEC)
    close_clients()
    assert ImageStore(settings).model_spec() == SPEC


def test_a_released_collection_is_loaded_again_on_open(make_settings):
    # What another process (or a restart) leaves behind: the collection exists but is released.
    settings = make_settings()
    store = ImageStore(settings)
    store.ensure(SPEC)
    store.upsert([row(i + 1, np.eye(8, dtype=np.float32)[i]) for i in range(8)])
    store.client.release_collection(store.physical_name())
    fresh = ImageStore(settings)
    assert fresh.model_spec() == SPEC
    assert [h.id for h in fresh.search([np.eye(8)[2]], k=1)[0]] == [3]


@pytest.mark.integration
def test_our_client_keeps_its_own_connection_whoever_connected_first(make_settings):
    """pymilvus shares one connection per address among all clients of a process, with the
    options of whichever client came first. A client made elsewhere with the defaults (pings
    every 10 s, even idle) must not become ours: ``milvus-lite server`` answers those pings
    with GOAWAY "too_many_pings" and our next call fails (seen in CI: a whole session
    fixture failed at its first Connect)."""
    from pymilvus import MilvusClient

    from common.store import GRPC_OPTIONS, close_clients, milvus_client
    from tests.servers import MilvusLiteServer

    with MilvusLiteServer() as server:
        other = MilvusClient(uri=server.uri)  # shared, pymilvus' default options
        try:
            ours = milvus_client(make_settings(milvus_uri=server.uri))
            assert ours._handler is not other._handler
            assert ours._handler._grpc_options == GRPC_OPTIONS
            other.create_collection("made_by_other", dimension=4)
            assert "made_by_other" in ours.list_collections()
        finally:
            other.close()
            close_clients()
