"""Settings: env parsing, validation with clear errors, secrets masked, README documents all."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.errors import ConfigError
from common.settings import FIELDS, PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]


def test_env_values_are_parsed_and_typed(tmp_path):
    s = Settings.from_env({"IMGSEARCH_DATA_DIR": str(tmp_path), "IMGSEARCH_BATCH_SIZE": "1_024",
                           "IMGSEARCH_CLIP_MODEL": "ViT-B-32", "IMGSEARCH_DEVICE": "cuda:1"})
    assert (s.data_dir, s.batch_size, s.clip_model, s.device) == (tmp_path, 1024, "ViT-B-32", "cuda:1")
    assert s.effective_milvus_uri() == str(tmp_path / "milvus.db")
    assert s.embedded


@pytest.mark.parametrize("env, fragment", [
    ({"IMGSEARCH_BATCH_SIZE": "lots"}, "IMGSEARCH_BATCH_SIZE must be an integer"),
    ({"IMGSEARCH_BATCH_SIZE": "0"}, "IMGSEARCH_BATCH_SIZE must be >= 1"),
    ({"IMGSEARCH_COLLECTION": "x; drop"}, "IMGSEARCH_COLLECTION"),
    ({"IMGSEARCH_DEVICE": "tpu"}, "IMGSEARCH_DEVICE"),
    ({"IMGSEARCH_OCR_BACKEND": "tesseract"}, "IMGSEARCH_OCR_BACKEND must be rapidocr or paddleocr"),
    ({"IMGSEARCH_CAPTION_BACKEND": "gpt"}, "IMGSEARCH_CAPTION_BACKEND must be"),
    ({"IMGSEARCH_OCR_ENABLED": "maybe"}, "IMGSEARCH_OCR_ENABLED must be true or false"),
    ({"IMGSEARCH_OCR_MIN_CONFIDENCE": "high"}, "IMGSEARCH_OCR_MIN_CONFIDENCE must be a number"),
    ({"IMGSEARCH_FUSION_WEIGHTS": "clip"}, "IMGSEARCH_FUSION_WEIGHTS takes channel=weight"),
    ({"IMGSEARCH_FUSION_WEIGHTS": "clip=-1"}, "IMGSEARCH_FUSION_WEIGHTS takes channel=weight"),
    ({"IMGSEARCH_BM25_STOPWORDS": "german"}, "IMGSEARCH_BM25_STOPWORDS must be english or none"),
])
def test_bad_values_name_the_variable(env, fragment):
    with pytest.raises(ConfigError, match=fragment):
        Settings.from_env(env)


def test_text_settings_parse_booleans_numbers_and_weights():
    from common.settings import parse_weights

    s = Settings.from_env({"IMGSEARCH_OCR_ENABLED": "off", "IMGSEARCH_OCR_MIN_CONFIDENCE": "0.75",
                           "IMGSEARCH_FUSION_WEIGHTS": "clip=2, bm25=0.5", "IMGSEARCH_CAPTION_API_KEY": "sk-1"})
    assert (s.ocr_enabled, s.ocr_min_confidence) == (False, 0.75)
    assert parse_weights(s.fusion_weights) == {"clip": 2.0, "bm25": 0.5}
    assert Settings.from_env({}).ocr_enabled and Settings.from_env({}).caption_backend == "clip"
    assert "sk-1" not in "\n".join(v for _, v, _ in s.describe())


def test_secrets_and_url_credentials_are_masked():
    s = Settings.from_env({"IMGSEARCH_S3_SECRET_KEY": "hunter2", "IMGSEARCH_MILVUS_TOKEN": "root:pw",
                           "IMGSEARCH_REDIS_URL": "redis://user:topsecret@cache:6379/0"})
    shown = "\n".join(f"{k}={v}" for k, v, _ in s.describe())
    assert "hunter2" not in shown and "root:pw" not in shown and "topsecret" not in shown
    assert "IMGSEARCH_S3_SECRET_KEY=****" in shown
    assert "redis://****@cache:6379/0" in shown
    assert not s.embedded


def test_readme_documents_every_setting():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    missing = [PREFIX + f.upper() for f in FIELDS if PREFIX + f.upper() not in readme]
    assert not missing, f"README configuration table lacks {missing}"


@pytest.mark.parametrize("url, secret, kept", [
    ("redis://cache:6379/0?password=topsecret", "topsecret", "redis://cache:6379/0?password=****"),
    ("redis://:pw1@cache/0?db=2&auth_token=tok9", "tok9", "redis://****@cache/0?db=2&auth_token=****"),
    ("http://milvus:19530?token=root:pw", "root:pw", "http://milvus:19530?token=****"),
    ("https://e/x?X-Amz-Signature=abc123&X-Amz-Credential=AK/2", "abc123", "X-Amz-Credential=****"),
    ("http://vllm:8000/v1#key=k1", "k1", "http://vllm:8000/v1#****"),
])
def test_credentials_in_url_query_strings_are_masked(url, secret, kept):
    s = Settings.from_env({"IMGSEARCH_REDIS_URL": url, "IMGSEARCH_CAPTION_ENDPOINT": url})
    shown = "\n".join(f"{k}={v}" for k, v, _ in s.describe())
    assert secret not in shown
    assert kept in shown


def test_query_limits_and_gateway_hosts():
    s = Settings.from_env({"IMGSEARCH_QUERY_URI_BUCKETS": "photos, shop-images ,photos"})
    assert s.query_buckets() == frozenset({"photos", "shop-images"})
    assert Settings.from_env({}).query_buckets() == frozenset()  # empty: every image URI refused
    assert Settings.from_env({}).trusted_hosts() == frozenset({"localhost", "127.0.0.1", "::1"})
    assert Settings.from_env({"IMGSEARCH_GATEWAY_API_KEY": "k"}).trusted_hosts() is None  # a key: any host
    pinned = Settings.from_env({"IMGSEARCH_GATEWAY_API_KEY": "k", "IMGSEARCH_GATEWAY_TRUSTED_HOSTS": "Search.Example"})
    assert pinned.trusted_hosts() == frozenset({"search.example"})
    assert Settings.from_env({"IMGSEARCH_GATEWAY_TRUSTED_HOSTS": "*"}).trusted_hosts() is None
    bound = Settings.from_env({"IMGSEARCH_GATEWAY_HOST": "10.0.0.5"})
    assert "10.0.0.5" in bound.trusted_hosts()


@pytest.mark.parametrize("env, fragment", [
    ({"IMGSEARCH_QUERY_URI_BUCKETS": "../etc"}, "IMGSEARCH_QUERY_URI_BUCKETS takes S3 bucket names"),
    ({"IMGSEARCH_QUERY_MAX_IMAGE_PIXELS": "0"}, "IMGSEARCH_QUERY_MAX_IMAGE_PIXELS must be >= 1"),
    ({"IMGSEARCH_QUERY_MAX_BACKLOG": "50", "IMGSEARCH_QUERY_STREAM_MAX_LEN": "10"},
     "IMGSEARCH_QUERY_STREAM_MAX_LEN"),
    ({"IMGSEARCH_GATEWAY_MAX_BODY_BYTES": "0"}, "IMGSEARCH_GATEWAY_MAX_BODY_BYTES must be >= 1"),
])
def test_bad_query_side_values_name_the_variable(env, fragment):
    with pytest.raises(ConfigError, match=fragment):
        Settings.from_env(env)
