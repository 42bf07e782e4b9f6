"""Render deploy/k8s the way ``kubectl kustomize`` does, in Python, for machines without kubectl.

Only the kustomization features deploy/k8s uses are implemented, and any other key is an
error (never a silently different rendering): ``resources`` (files and directories),
``components``, ``namespace``, ``patches`` (strategic-merge patch files), ``images``.
Strategic merge follows Kubernetes' patch merge keys for the lists we patch (containers and
env by ``name``, volumes by ``name``, volumeMounts by ``mountPath``, ports by
``containerPort``); other lists are replaced. ``tests/deploy/test_k8s.py`` checks that this
rendering equals kubectl's wherever kubectl is installed, so the structural checks that run
on it in CI check what kubectl would deploy.
"""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path

import yaml

KEYS = {"apiVersion", "kind", "namespace", "resources", "components", "patches", "images"}
MERGE_KEYS = {"containers": "name", "initContainers": "name", "env": "name", "volumes": "name",
              "volumeMounts": "mountPath", "ports": "containerPort"}
CLUSTER_SCOPED = {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding",
                  "PersistentVolume", "StorageClass", "PriorityClass"}


class UnsupportedKustomization(ValueError):
    """The kustomization uses a feature this renderer does not implement."""


def load_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def render(directory: Path) -> list[dict]:
    """The objects ``kubectl kustomize directory`` prints (order aside)."""
    return _build(Path(directory), component=False)


def _build(directory: Path, component: bool) -> list[dict]:
    kust = yaml.safe_load((directory / "kustomization.yaml").read_text(encoding="utf-8"))
    unknown = set(kust) - KEYS
    if unknown:
        raise UnsupportedKustomization(f"{directory}: {sorted(unknown)}")
    if (kust.get("kind") == "Component") != component:
        raise UnsupportedKustomization(f"{directory}: kind {kust.get('kind')!r} used as "
                                       f"{'a component' if component else 'a kustomization'}")
    objects: list[dict] = []
    for entry in kust.get("resources", []):
        path = directory / entry
        objects.extend(_build(path, component=False) if path.is_dir() else load_docs(path))
    for entry in kust.get("components", []):
        objects = _apply(directory / entry, objects)
    return _transform(directory, kust, objects)


def _apply(directory: Path, objects: list[dict]) -> list[dict]:
    """A component works on the objects accumulated so far, like kustomize's."""
    kust = yaml.safe_load((directory / "kustomization.yaml").read_text(encoding="utf-8"))
    unknown = set(kust) - KEYS
    if unknown or kust.get("kind") != "Component":
        raise UnsupportedKustomization(f"{directory}: not a plain Component ({sorted(unknown)})")
    objects = list(objects)
    for entry in kust.get("resources", []):
        objects.extend(load_docs(directory / entry))
    return _transform(directory, kust, objects)


def _transform(directory: Path, kust: dict, objects: list[dict]) -> list[dict]:
    objects = [copy.deepcopy(o) for o in objects]
    for patch in kust.get("patches", []):
        if set(patch) != {"path"}:
            raise UnsupportedKustomization(f"{directory}: only `patches: - path:` is implemented")
        for doc in load_docs(directory / patch["path"]):
            target = [o for o in objects if (o["kind"], o["metadata"]["name"]) ==
                      (doc["kind"], doc["metadata"]["name"])]
            if len(target) != 1:
                raise UnsupportedKustomization(f"patch {patch['path']} matches {len(target)} objects")
            merged = strategic_merge(target[0], doc)
            objects[objects.index(target[0])] = merged
    if "namespace" in kust:
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = kust["namespace"]
    for image in kust.get("images", []):
        for obj in objects:
            for container in _containers(obj):
                container["image"] = _retag(container["image"], image)
    return objects


def _containers(obj: dict) -> list[dict]:
    spec = obj.get("spec", {}).get("template", {}).get("spec", {})
    return [*spec.get("containers", []), *spec.get("initContainers", [])]


def _retag(current: str, rule: dict) -> str:
    name, _, tag = current.partition(":")
    if name != rule["name"]:
        return current
    return f"{rule.get('newName', name)}:{rule.get('newTag', tag)}".rstrip(":")


def strategic_merge(original, patch, field: str = ""):
    """Kubernetes strategic merge for what deploy/k8s patches (see the module docstring).

    Keyed lists come out as kustomize writes them: the patch's items first (merged into the
    original item of the same key), then the original items the patch did not name."""
    if isinstance(original, dict) and isinstance(patch, dict):
        out = dict(original)
        for key, value in patch.items():
            out[key] = strategic_merge(original[key], value, key) if key in original else copy.deepcopy(value)
        return out
    if isinstance(original, list) and isinstance(patch, list) and field in MERGE_KEYS:
        key = MERGE_KEYS[field]
        by_key = {item[key]: item for item in original}
        named = [strategic_merge(by_key[p[key]], p) if p[key] in by_key else copy.deepcopy(p) for p in patch]
        rest = [item for item in original if item[key] not in {p[key] for p in patch}]
        return named + rest
    return copy.deepcopy(patch)


def kubectl_render(directory: Path, kubectl: str) -> list[dict]:
    """The same through ``kubectl kustomize`` (raises CalledProcessError with its message)."""
    out = subprocess.run([kubectl, "kustomize", "--load-restrictor", "LoadRestrictionsNone", str(directory)],
                         check=True, capture_output=True, text=True, timeout=120)
    return [d for d in yaml.safe_load_all(out.stdout) if d]
