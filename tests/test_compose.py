"""docker-compose.yml cannot be started here (no Docker engine), so it is checked by reading it:
the services of the full stack exist, images are built from deploy/ Dockerfiles, infrastructure
has healthchecks, the embed worker reserves a GPU, and every IMGSEARCH_* name is a real setting."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from common.settings import FIELDS, PREFIX

ROOT = Path(__file__).resolve().parents[1]
SERVICES = {"redis", "etcd", "milvus-minio", "milvus", "minio", "embed-worker", "ocr-worker",
            "caption-worker", "beat", "query-worker", "flower"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))


def env_of(service: dict) -> dict:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return env


def test_full_stack_services_are_declared(compose):
    assert SERVICES <= set(compose["services"])


def test_every_imgsearch_variable_is_a_setting(compose):
    known = {PREFIX + f.upper() for f in FIELDS}
    used = {name for svc in compose["services"].values() for name in env_of(svc) if name.startswith(PREFIX)}
    assert used, "no IMGSEARCH_* settings passed to any service"
    assert used <= known, f"unknown settings in docker-compose.yml: {sorted(used - known)}"


def test_workers_get_redis_milvus_and_s3_from_the_stack(compose):
    for name in ("embed-worker", "ocr-worker", "caption-worker", "query-worker"):
        env = env_of(compose["services"][name])
        assert env[PREFIX + "REDIS_URL"].startswith("redis://redis:"), name
        assert env[PREFIX + "MILVUS_URI"] == "http://milvus:19530", name
        assert env[PREFIX + "S3_ENDPOINT_URL"] == "http://minio:9000", name


def test_images_are_built_from_deploy_dockerfiles(compose):
    builds = {svc["build"]["dockerfile"]: svc["image"] for svc in compose["services"].values() if "build" in svc}
    assert builds == {"deploy/Dockerfile.gpu": "imgsearch-gpu:latest", "deploy/Dockerfile.cpu": "imgsearch-cpu:latest"}
    for dockerfile in builds:
        assert (ROOT / dockerfile).is_file()
    assert "nvidia/cuda" in (ROOT / "deploy/Dockerfile.gpu").read_text()
    assert "slim" in (ROOT / "deploy/Dockerfile.cpu").read_text()
    images = {name: svc.get("image") for name, svc in compose["services"].items()}
    assert images["caption-worker"] == images["embed-worker"] == "imgsearch-gpu:latest"
    assert images["ocr-worker"] == images["query-worker"] == images["beat"] == "imgsearch-cpu:latest"


def test_worker_queues_cover_every_stage_and_embed_is_one_process_on_a_gpu(compose):
    from ingest.app import QUEUES

    served = set()
    for svc in compose["services"].values():
        cmd = svc.get("command") or []
        if cmd[:2] == ["imgsearch", "worker"]:
            served.update(cmd[cmd.index("--queues") + 1].split(","))
    assert served == set(QUEUES)
    embed = compose["services"]["embed-worker"]
    assert embed["command"][-2:] == ["--concurrency", "1"]
    devices = embed["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]


def test_infrastructure_has_healthchecks_and_workers_wait_for_them(compose):
    services = compose["services"]
    for name in ("redis", "etcd", "milvus-minio", "milvus", "minio", "flower", "embed-worker", "ocr-worker"):
        assert "test" in services[name].get("healthcheck", {}), name
    for name in ("embed-worker", "ocr-worker", "caption-worker", "query-worker"):
        deps = services[name]["depends_on"]
        assert all(deps[d]["condition"] == "service_healthy" for d in ("redis", "milvus", "minio")), name
    assert services["beat"]["command"][:4] == ["celery", "-A", "ingest.app", "beat"]
    assert sum(1 for s in services.values() if "beat" in (s.get("command") or [])) == 1
