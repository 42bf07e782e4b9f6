"""deploy/k8s, checked offline: it renders, every object passes its schema, and it agrees with
the code it deploys (queues and their Redis lists, settings, commands, images, probes).

No cluster runs here. The manifests are rendered by ``kubectl kustomize`` where kubectl is
installed and, always, by tests/deploy/kustomize.py (checked equal to kubectl's output), so
the structural checks run in CI even without kubectl. Kubernetes objects are validated with
the schemas bundled in ``kubernetes-validate`` (strict: unknown fields fail), KEDA's with
the CRD schemas committed in tests/deploy/schemas. Queues, settings, commands, routes and
time limits are read from the code, never from a copy.
"""

from __future__ import annotations

import os
import re
import shutil
import tomllib
from pathlib import Path

import pytest
import yaml

from common.settings import FIELDS, PREFIX, Settings
from tests.deploy.kustomize import kubectl_render, render

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
K8S_VERSION = "1.32.0"  # the Kubernetes API the manifests target (kubectl v1.32 here)
TARGETS = ("base", "cpu", "gpu", "gpu+components")
EXTERNAL_SECRET_VALUE = "s3cr3t"  # stands in for the Redis chart's generated password
HEARTBEAT_DEPLOYMENTS = {"embed", "ocr", "caption", "plan-finish"}
KEDA_TRIGGER_KEYS = {  # documented trigger metadata (keda.sh/docs/latest/scalers/redis-*)
    "redis": {"address", "addressFromEnv", "host", "hostFromEnv", "port", "portFromEnv", "usernameFromEnv",
              "passwordFromEnv", "listName", "listLength", "activationListLength", "enableTLS", "unsafeSsl",
              "databaseIndex"},
    "redis-streams": {"address", "addressFromEnv", "host", "hostFromEnv", "port", "portFromEnv",
                      "usernameFromEnv", "passwordFromEnv", "stream", "consumerGroup", "pendingEntriesCount",
                      "streamLength", "lagCount", "activationLagCount", "enableTLS", "unsafeSsl",
                      "databaseIndex"},
}


def target_dir(name: str, tmp_path_factory) -> Path:
    if name == "base":
        return K8S / "base"
    if name in ("cpu", "gpu"):
        return K8S / "overlays" / name
    # the GPU overlay with both optional components, as an operator's own overlay would add them
    combo = tmp_path_factory.mktemp("overlay")
    rel = Path(os.path.relpath(K8S, combo))
    (combo / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [str(rel / "overlays" / "gpu")],
        "components": [str(rel / "components" / "ingress"), str(rel / "components" / "caption-gpu")]}))
    return combo


@pytest.fixture(scope="module", params=TARGETS)
def target(request, tmp_path_factory) -> tuple[str, Path]:
    return request.param, target_dir(request.param, tmp_path_factory)


@pytest.fixture(scope="module")
def objects(target) -> list[dict]:
    return render(target[1])


def by_kind(objects: list[dict], kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def containers(deployment: dict) -> list[dict]:
    return deployment["spec"]["template"]["spec"]["containers"]


def _expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: defined variables are replaced, others left as written."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), text)


def container_env(objects: list[dict], container: dict) -> dict[str, str]:
    """The environment the kubelet would give ``container`` (envFrom first, then env, in order)."""
    configmaps = {n: o.get("data", {}) for n, o in by_kind(objects, "ConfigMap").items()}
    secrets = {n: o.get("stringData", {}) for n, o in by_kind(objects, "Secret").items()}
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(configmaps[source["configMapRef"]["name"]])
        else:
            env.update(secrets[source["secretRef"]["name"]])
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = _expand(str(item["value"]), env)
            continue
        ref = item["valueFrom"]
        if "secretKeyRef" in ref:
            s = ref["secretKeyRef"]
            env[item["name"]] = secrets.get(s["name"], {}).get(s["key"], EXTERNAL_SECRET_VALUE)
        elif "fieldRef" in ref:
            env[item["name"]] = f"pod-{ref['fieldRef']['fieldPath'].replace('.', '-')}"
        else:
            env[item["name"]] = "1"  # resourceFieldRef: a CPU count
    return env


def container_settings(objects: list[dict], container: dict) -> Settings:
    env = container_env(objects, container)
    return Settings.from_env({k: v for k, v in env.items() if k.startswith(PREFIX)})


def cli_args(objects: list[dict], container: dict):
    """The container's command parsed by the real imgsearch command line."""
    from imgsearch.cli import build_parser

    env = container_env(objects, container)
    command = [_expand(part, env) for part in container["command"]]
    assert command[0] == "imgsearch", command
    return build_parser().parse_args(command[1:])


def celery_workers(objects: list[dict]) -> dict[str, dict]:
    return {n: d for n, d in by_kind(objects, "Deployment").items() if containers(d)[0]["command"][:2] ==
            ["imgsearch", "worker"]}


def mebibytes(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "Ti": 1024 * 1024}
    number, unit = re.fullmatch(r"([0-9.]+)([KMGT]i)", quantity).groups()
    return float(number) * units[unit]


# -- rendering and schemas -------------------------------------------------------------------

def test_python_rendering_equals_kubectl_kustomize(target):
    """What the structural checks read is what kubectl would apply."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: the structural checks below run on the Python rendering only")
    ours = {(o["kind"], o["metadata"]["name"]): o for o in render(target[1])}
    theirs = {(o["kind"], o["metadata"]["name"]): o for o in kubectl_render(target[1], kubectl)}
    assert sorted(ours) == sorted(theirs)
    for key, obj in theirs.items():
        assert ours[key] == obj, key


def _strict(schema):
    """Reject unknown fields, as the API server's strict field validation (kubectl's default) does."""
    if isinstance(schema, dict):
        if schema.get("type") == "object" and "properties" in schema and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
        for value in schema.values():
            _strict(value)
    elif isinstance(schema, list):
        for value in schema:
            _strict(value)
    return schema


@pytest.fixture(scope="module")
def keda_validators() -> dict[str, object]:
    import jsonschema

    return {kind: jsonschema.Draft7Validator(_strict(yaml.safe_load((SCHEMAS / f"keda-{kind.lower()}-v1alpha1.yaml")
                                                                     .read_text(encoding="utf-8"))))
            for kind in ("ScaledObject", "TriggerAuthentication")}


def test_every_object_passes_its_schema(objects, keda_validators):
    import kubernetes_validate

    for obj in objects:
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        if obj["apiVersion"] == "keda.sh/v1alpha1":
            errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
                      for e in keda_validators[obj["kind"]].iter_errors(obj)]
            assert not errors, f"{where}: {errors}"
        else:
            try:
                kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{where}: {'/'.join(map(str, exc.absolute_path))}: {exc.message}")


def test_the_schema_check_rejects_what_the_api_server_would(keda_validators):
    """The validators are not a rubber stamp: a typo'd field, a wrong type, a missing field fail."""
    import kubernetes_validate

    objects = render(K8S / "overlays" / "gpu")
    embed = yaml.safe_load(yaml.safe_dump(by_kind(objects, "Deployment")["embed"]))
    embed["spec"]["template"]["spec"]["containers"][0]["livenessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(embed, K8S_VERSION, strict=True)
    scaled = yaml.safe_load(yaml.safe_dump(by_kind(objects, "ScaledObject")["ocr"]))
    scaled["spec"]["minReplicas"] = 0  # the HPA's name, not KEDA's
    assert list(keda_validators["ScaledObject"].iter_errors(scaled))
    scaled = yaml.safe_load(yaml.safe_dump(by_kind(objects, "ScaledObject")["ocr"]))
    scaled["spec"]["triggers"][0]["metadata"]["listLength"] = 2  # metadata values are strings
    assert list(keda_validators["ScaledObject"].iter_errors(scaled))
    auth = yaml.safe_load(yaml.safe_dump(by_kind(objects, "TriggerAuthentication")["imgsearch-redis"]))
    del auth["spec"]["secretTargetRef"][0]["key"]
    assert list(keda_validators["TriggerAuthentication"].iter_errors(auth))


# -- queues and autoscaling ------------------------------------------------------------------

def celery_queues() -> set[str]:
    """Every queue a task can be sent to, from the Celery configuration the workers use."""
    from ingest.app import QUEUES, celery_config

    config = celery_config(Settings.from_env({}))
    routed = {route["queue"] for route in config["task_routes"].values()}
    return routed | {config["task_default_queue"]} | set(QUEUES)


def redis_triggers(objects: list[dict]) -> dict[str, tuple[str, dict]]:
    """listName -> (scaled Deployment, trigger) for every KEDA redis-list trigger."""
    out: dict[str, tuple[str, dict]] = {}
    for scaled in by_kind(objects, "ScaledObject").values():
        for trigger in scaled["spec"]["triggers"]:
            if trigger["type"] == "redis":
                name = trigger["metadata"]["listName"]
                assert name not in out, f"list {name!r} has two triggers"
                out[name] = (scaled["spec"]["scaleTargetRef"]["name"], trigger)
    return out


def test_every_celery_queue_has_a_trigger_on_its_list_in_the_deployment_that_consumes_it(objects):
    triggers = redis_triggers(objects)
    queues = celery_queues()
    assert set(triggers) == queues, "one KEDA redis trigger per Celery queue, on the list of that name"
    workers = celery_workers(objects)
    for queue, (deployment, trigger) in triggers.items():
        served = cli_args(objects, containers(workers[deployment])[0]).queues.split(",")
        assert queue in served, f"ScaledObject of {deployment} watches {queue!r}, which it does not consume"
        assert int(trigger["metadata"]["listLength"]) >= 1
        assert trigger["authenticationRef"]["name"] in by_kind(objects, "TriggerAuthentication")
    for deployment in workers:  # the Deployment's own container env names the Redis address
        env = container_env(objects, containers(workers[deployment])[0])
        for target, trigger in triggers.values():
            if target == deployment:
                host_port = env[trigger["metadata"]["addressFromEnv"]]
                assert f"@{host_port}/" in env[PREFIX + "REDIS_URL"], (deployment, host_port)


def test_every_queue_is_consumed_by_exactly_one_deployment(objects):
    from ingest.app import QUEUES

    served = [q for d in celery_workers(objects).values()
              for q in cli_args(objects, containers(d)[0]).queues.split(",")]
    assert sorted(served) == sorted(QUEUES)


def test_trigger_metadata_uses_only_documented_keda_parameters(objects):
    for scaled in by_kind(objects, "ScaledObject").values():
        target = scaled["spec"]["scaleTargetRef"]["name"]
        assert target in by_kind(objects, "Deployment"), target
        for trigger in scaled["spec"]["triggers"]:
            unknown = set(trigger["metadata"]) - KEDA_TRIGGER_KEYS[trigger["type"]]
            assert not unknown, f"{scaled['metadata']['name']}: {sorted(unknown)}"


def test_ocr_and_caption_scale_to_zero_and_keda_owns_the_replica_counts(objects):
    scaled = by_kind(objects, "ScaledObject")
    deployments = by_kind(objects, "Deployment")
    assert scaled["ocr"]["spec"]["minReplicaCount"] == 0
    assert scaled["caption"]["spec"]["minReplicaCount"] == 0
    for name, so in scaled.items():
        target = deployments[so["spec"]["scaleTargetRef"]["name"]]
        assert "replicas" not in target["spec"], f"{name}: kubectl apply would reset what the HPA set"
        assert so["spec"]["maxReplicaCount"] >= max(1, so["spec"].get("minReplicaCount", 0))
    assert set(scaled) == {"embed", "ocr", "caption", "plan-finish", "query-worker"}


def test_query_workers_scale_on_the_lag_of_the_stream_and_group_they_read(objects):
    deployment = by_kind(objects, "Deployment")["query-worker"]
    settings = container_settings(objects, containers(deployment)[0])
    triggers = by_kind(objects, "ScaledObject")["query-worker"]["spec"]["triggers"]
    assert {t["type"] for t in triggers} == {"redis-streams"}
    for t in triggers:
        assert (t["metadata"]["stream"], t["metadata"]["consumerGroup"]) == (settings.query_stream,
                                                                               settings.query_group)
    kinds = {key for t in triggers for key in ("lagCount", "pendingEntriesCount") if key in t["metadata"]}
    assert kinds == {"lagCount", "pendingEntriesCount"}


# -- settings, commands, images --------------------------------------------------------------

def test_every_imgsearch_variable_is_a_setting_and_every_container_configures_cleanly(objects):
    known = {PREFIX + f.upper() for f in FIELDS}
    named = set()
    for obj in objects:
        if obj["kind"] in ("ConfigMap", "Secret"):
            named |= set(obj.get("data", {})) | set(obj.get("stringData", {}))
    for deployment in by_kind(objects, "Deployment").values():
        for container in containers(deployment):
            named |= {e["name"] for e in container.get("env", [])}
            env = container_env(objects, container)
            unresolved = {k: v for k, v in env.items() if k.startswith(PREFIX) and "$(" in v}
            assert not unresolved, unresolved
            container_settings(objects, container)  # raises ConfigError on a bad value
    used = {n for n in named if n.startswith(PREFIX)}
    assert used and used <= known, f"not settings: {sorted(used - known)}"


def test_commands_and_probes_are_real_invocations(objects):
    from imgsearch.probe import build_parser as probe_parser
    from query.gateway import create_app

    for name, deployment in by_kind(objects, "Deployment").items():
        container = containers(deployment)[0]
        args = cli_args(objects, container)
        probes = [container[p] for p in ("startupProbe", "readinessProbe", "livenessProbe") if p in container]
        for probe in probes:
            if "exec" in probe:
                command = probe["exec"]["command"]
                assert command[:3] == ["python", "-m", "imgsearch.probe"], (name, command)
                kind = probe_parser().parse_args(command[3:]).kind
                assert kind == ("worker" if name in HEARTBEAT_DEPLOYMENTS else "query-worker"), name
        if args.command == "serve":
            routes = {r.path for r in create_app(container_settings(objects, container)).routes}
            assert {p["httpGet"]["path"] for p in probes} == {"/healthz", "/readyz"} <= routes
            port = container_settings(objects, container).gateway_port
            assert container["ports"][0]["containerPort"] == port
        if args.command == "query-worker":
            assert args.name == container_env(objects, container)["POD_NAME"], "the probe looks up the pod name"


def test_every_deployment_but_beat_has_readiness_and_liveness_probes(objects):
    from ingest.health import HEARTBEAT_EVERY_S

    for name, deployment in by_kind(objects, "Deployment").items():
        container = containers(deployment)[0]
        if name == "beat":
            assert "livenessProbe" not in container
            continue
        assert "readinessProbe" in container and "livenessProbe" in container, name
        if name in HEARTBEAT_DEPLOYMENTS:
            ages = {p: float(container[p]["exec"]["command"][-1]) for p in ("readinessProbe", "livenessProbe")}
            assert min(ages.values()) >= 2 * HEARTBEAT_EVERY_S, (name, ages)  # one late beat is no failure


def test_images_are_the_ones_the_dockerfiles_build(objects):
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    built = {svc["image"].split(":")[0]: svc["build"]["dockerfile"] for svc in compose["services"].values()
             if "build" in svc}
    version = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
    for name, deployment in by_kind(objects, "Deployment").items():
        for container in containers(deployment):
            image = re.fullmatch(r"(?P<path>[^@]+?)(?::(?P<tag>[\w.-]+))?(?:@[\w:]+)?", container["image"])
            repo = image["path"].rsplit("/", 1)[-1]  # a registry prefix is the operator's choice
            assert repo in built, f"{name}: {container['image']} is not built by a deploy/ Dockerfile"
            assert (ROOT / built[repo]).is_file()
            if image["tag"]:
                assert image["tag"] == version, f"{name}: tag {image['tag']} is not the project version {version}"
            gpu = "nvidia.com/gpu" in container["resources"].get("limits", {})
            cuda = "FROM nvidia/cuda" in (ROOT / built[repo]).read_text(encoding="utf-8")
            assert gpu == cuda, f"{name}: GPU pods run the CUDA image, CPU pods the slim one"
            device = container_settings(objects, container).device
            assert (device == "cuda") == gpu, f"{name}: IMGSEARCH_DEVICE={device} with gpu={gpu}"


def test_overlays_tag_every_image_and_the_base_none(target, objects):
    tagged = {":" in c["image"] for d in by_kind(objects, "Deployment").values() for c in containers(d)}
    assert tagged == {target[0] != "base"}, "the base names images; each overlay sets the release tag"


def test_gpu_deployment_requests_one_gpu_per_single_process_worker(target, objects):
    deployments = by_kind(objects, "Deployment")
    gpu_pods = {n for n, d in deployments.items() if "nvidia.com/gpu" in containers(d)[0]["resources"].get(
        "limits", {})}
    expected = {"base": set(), "cpu": set(), "gpu": {"embed"}, "gpu+components": {"embed", "caption"}}[target[0]]
    assert gpu_pods == expected
    for name in gpu_pods:
        container = containers(deployments[name])[0]
        resources = container["resources"]
        assert int(resources["limits"]["nvidia.com/gpu"]) == 1 == int(resources["requests"]["nvidia.com/gpu"])
        args = cli_args(objects, container)
        assert (args.concurrency, args.pool) == (1, "prefork"), "one process per GPU, models loaded after fork"
        tolerations = deployments[name]["spec"]["template"]["spec"].get("tolerations", [])
        assert any(t["key"] == "nvidia.com/gpu" for t in tolerations)
        assert deployments[name]["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0


# -- lifecycle: termination, beat, budgets, resources ------------------------------------------

def test_termination_grace_outlasts_a_batchs_hard_time_limit(objects):
    from ingest.app import celery_config

    for name, deployment in celery_workers(objects).items():
        settings = container_settings(objects, containers(deployment)[0])
        hard_limit = celery_config(settings)["task_time_limit"]
        grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace > hard_limit, f"{name}: a scale-in would cut a batch ({grace} s <= {hard_limit} s)"


def test_leak_guard_trips_before_the_memory_limit(objects):
    for name, deployment in celery_workers(objects).items():
        container = containers(deployment)[0]
        settings = container_settings(objects, container)
        processes = cli_args(objects, container).concurrency
        limit = mebibytes(container["resources"]["limits"]["memory"])
        assert 0 < settings.worker_max_memory_mb * processes + 512 <= limit, name


def test_beat_is_a_single_replica_replaced_with_recreate(objects):
    deployments = by_kind(objects, "Deployment")
    beats = [n for n, d in deployments.items() if cli_args(objects, containers(d)[0]).command == "beat"]
    assert beats == ["beat"]
    spec = deployments["beat"]["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    assert "beat" not in by_kind(objects, "ScaledObject")
    volumes = {v["name"]: v for v in spec["template"]["spec"]["volumes"]}
    claim = volumes["state"]["persistentVolumeClaim"]["claimName"]
    assert by_kind(objects, "PersistentVolumeClaim")[claim]["spec"]["accessModes"] == ["ReadWriteOnce"]


def test_every_deployment_but_beat_has_a_disruption_budget(objects):
    budgets = by_kind(objects, "PodDisruptionBudget").values()
    for name, deployment in by_kind(objects, "Deployment").items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        matching = [b for b in budgets if b["spec"]["selector"]["matchLabels"].items() <= labels.items()]
        assert len(matching) == (0 if name == "beat" else 1), name
        if name in by_kind(objects, "ScaledObject"):
            assert matching[0]["spec"].get("maxUnavailable") == 1, f"{name}: minAvailable would block drains at 0-1"


def test_containers_have_requests_limits_and_restricted_security(objects):
    for deployment in by_kind(objects, "Deployment").values():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        for container in pod["containers"]:
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]) and {"cpu", "memory"} <= set(resources["limits"])
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]


# -- dependencies and docs -----------------------------------------------------------------------

def test_redis_and_milvus_values_match_what_the_manifests_expect():
    objects = render(K8S / "overlays" / "gpu")
    config = by_kind(objects, "ConfigMap")["imgsearch-config"]["data"]
    redis_values = yaml.safe_load((K8S / "dependencies" / "redis-values.yaml").read_text(encoding="utf-8"))
    conf = redis_values["commonConfiguration"].split("\n")
    assert "appendonly yes" in conf and "maxmemory-policy noeviction" in conf
    assert redis_values["architecture"] == "standalone" and redis_values["auth"]["enabled"] is True
    assert config["REDIS_ADDRESS"] == "redis-master:6379"  # release "redis", standalone
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    milvus_tag = compose["services"]["milvus"]["image"].split(":")[1]
    for mode, clustered in (("standalone", False), ("cluster", True)):
        values = yaml.safe_load((K8S / "dependencies" / f"milvus-{mode}-values.yaml").read_text(encoding="utf-8"))
        assert values["cluster"]["enabled"] is clustered
        assert values["image"]["all"]["tag"] == milvus_tag, "the Milvus that docker-compose and the tests use"
    assert config[PREFIX + "MILVUS_URI"] == "http://milvus:19530"  # release "milvus"


def test_readme_deploy_section_marks_every_sizing_figure_and_cites_measured_rows():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Deploy on Kubernetes", 1)[1].split("\n## ", 1)[0]
    results = (ROOT / "bench" / "RESULTS.md").read_text(encoding="utf-8")
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| what")]
    sizing = [r for r in rows if "measured" in r or "estimated" in r]
    assert len(sizing) >= 4, "images/s per GPU and per OCR core, Milvus memory, query workers per 100 QPS"
    for row in sizing:
        if "measured" in row:
            cited = re.findall(r"`(bench/[^`]+)`", row)
            assert cited and all(c in results for c in cited), f"measured figure without its RESULTS.md row: {row}"
    for topic in ("per GPU", "per OCR core", "per million vectors", "per 100 QPS"):
        assert any(topic in r for r in sizing), topic
    for path in ("deploy/k8s/overlays/gpu", "deploy/k8s/overlays/cpu", "dependencies/redis-values.yaml"):
        assert path in section


def test_the_readme_overlay_example_renders(tmp_path):
    """The operator's overlay shown in the README builds on this tree as written."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (the example uses secretGenerator and JSON patches)")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    example = readme.split("# my-overlay/kustomization.yaml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "imgsearch").symlink_to(ROOT)
    overlay = tmp_path / "my-overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(example, encoding="utf-8")
    (overlay / "secrets.env").write_text("IMGSEARCH_GATEWAY_API_KEY=k3y\n", encoding="utf-8")
    objects = kubectl_render(overlay, kubectl)
    assert by_kind(objects, "Secret")["imgsearch-secrets"]["data"] == {"IMGSEARCH_GATEWAY_API_KEY": "azN5"}
    assert by_kind(objects, "ConfigMap")["imgsearch-config"]["data"][PREFIX + "CLIP_MODEL"] == "ViT-L-14"
    assert "Ingress" in {o["kind"] for o in objects}
    images = {c["image"] for d in by_kind(objects, "Deployment").values() for c in containers(d)}
    assert images == {"registry.example.com/imgsearch-cpu:0.1.0", "registry.example.com/imgsearch-gpu:0.1.0"}
    for deployment in by_kind(objects, "Deployment").values():
        for container in containers(deployment):
            container_settings(objects, container)
