"""Labelled evaluation datasets: what `imgsearch eval DATASET` reads (format: README "Evaluation").

Two layouts:

- **JSONL**: ``DATASET/queries.jsonl``, one query per line: ``{"id", "kind", "text" | "image",
  "relevant": [...]}``. ``image`` is a path relative to DATASET; each relevant entry is a
  path relative to DATASET, a full URI (``s3://...``) or an image id (int). The images are
  every image file under DATASET.
- **Folder per class** (no ``queries.jsonl``): every image of ``DATASET/<class>/`` is an
  image query whose relevant items are the other images of its class; folders whose name
  starts with ``_`` (``_distractors``) hold images that are indexed but belong to no class.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from common.errors import ImgsearchError
from common.ids import image_id

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
IMAGE_GLOBS = tuple(f"*{s}" for s in IMAGE_SUFFIXES)
QUERIES_FILE = "queries.jsonl"


class DatasetError(ImgsearchError):
    """The dataset folder or its queries file is malformed (message says where)."""


@dataclass(frozen=True)
class EvalQuery:
    id: str
    kind: str
    relevant: tuple[str, ...]      # relative paths, URIs or ids, as written
    text: str | None = None
    image: Path | None = None      # a local file


@dataclass
class Dataset:
    root: Path
    layout: str                    # "jsonl" | "folders"
    queries: list[EvalQuery] = field(default_factory=list)

    def images(self) -> list[Path]:
        return sorted(p for p in self.root.rglob("*")
                      if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                      and not any(part.startswith(".") for part in p.relative_to(self.root).parts))

    def kinds(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for q in self.queries:
            out[q.kind] = out.get(q.kind, 0) + 1
        return out

    def resolve(self, ref: str | int, uri_prefix: str = "") -> int:
        """The image id a relevant entry (path, URI or id) stands for once indexed.

        Paths become ``uri_prefix + path`` when a prefix is given (an existing collection
        ingested from elsewhere, e.g. ``s3://bucket/evalsets/ocr/``), else the file URI of the
        path under the dataset folder, which is what ingesting the folder stores."""
        if isinstance(ref, int):
            return ref
        if "://" in ref:
            return image_id(ref)
        if uri_prefix:
            return image_id(uri_prefix.rstrip("/") + "/" + ref)
        return image_id((self.root / ref).resolve().as_uri())


def load_dataset(path: str | Path) -> Dataset:
    root = Path(path).expanduser().resolve()
    if not root.is_dir():
        raise DatasetError(f"dataset folder not found: {path}")
    if (root / QUERIES_FILE).is_file():
        dataset = Dataset(root, "jsonl", _read_jsonl(root, root / QUERIES_FILE))
    else:
        dataset = Dataset(root, "folders", _folder_queries(root))
    if not dataset.queries:
        raise DatasetError(f"{path}: no queries (need {QUERIES_FILE}, or class folders with 2+ images each)")
    return dataset


def _read_jsonl(root: Path, path: Path) -> list[EvalQuery]:
    queries, seen = [], set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path.name} line {number}"
        try:
            doc = json.loads(line)
        except ValueError as exc:
            raise DatasetError(f"{where}: not JSON ({exc})") from None
        if not isinstance(doc, dict):
            raise DatasetError(f"{where}: expected an object")
        qid = str(doc.get("id") or f"line-{number}")
        if qid in seen:
            raise DatasetError(f"{where}: duplicate query id {qid!r}")
        seen.add(qid)
        text, image = doc.get("text"), doc.get("image")
        if (text is None) == (image is None):
            raise DatasetError(f"{where}: give exactly one of \"text\" and \"image\"")
        relevant = doc.get("relevant")
        if not isinstance(relevant, list) or not relevant or \
                not all(isinstance(r, str | int) and not isinstance(r, bool) for r in relevant):
            raise DatasetError(f"{where}: \"relevant\" must be a non-empty list of paths, URIs or ids")
        image_path = None
        if image is not None:
            image_path = (root / str(image)).resolve()
            if not image_path.is_file():
                raise DatasetError(f"{where}: query image not found: {image}")
        if text is not None and (not isinstance(text, str) or not text.strip()):
            raise DatasetError(f"{where}: \"text\" must be a non-empty string")
        queries.append(EvalQuery(qid, str(doc.get("kind") or ("text" if text is not None else "image")),
                                 tuple(relevant), text=text, image=image_path))
    return queries


def _folder_queries(root: Path) -> list[EvalQuery]:
    queries = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        rel = [p.relative_to(root).as_posix() for p in files]
        if len(files) < 2:
            continue  # a class of one has nothing to find
        for path, name in zip(files, rel):
            queries.append(EvalQuery(name, folder.name, tuple(r for r in rel if r != name), image=path))
    # one kind for the whole set keeps the table short; the class is in each query's id
    return [EvalQuery(q.id, "class", q.relevant, image=q.image) for q in queries]
