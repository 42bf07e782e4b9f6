"""One image at a time, for the gateway's ``/v1/images`` (composed by ``imgsearch serve``).

- :func:`store_upload` keeps uploaded bytes where ingest can read them: under
  ``IMGSEARCH_UPLOAD_URI`` (``s3://bucket/prefix/``) or, embedded, ``<data dir>/uploads/``,
  one folder per content hash (so a re-upload is the same object, the same id);
- :func:`index_embedded` runs the normal ingest stages (embed, OCR, captions) on that one
  object in this process: when it returns the image is searchable;
- :func:`index_distributed` submits a job for it to the Celery workers (searchable once the
  job's embed stage is done);
- :func:`delete_image` removes the image row and its text rows (and an upload's bytes);
- :func:`image_detail` its metadata, OCR lines, captions, tags and near-duplicates.

Uploaded bytes are checked with ingest's own decoder first (:func:`common.images.decode_image`),
so a bad upload gets the reason ingest would give it (``unsupported_type``, ``too_large``,
``too_many_pixels``, ``undecodable``, ``empty``) and nothing is stored.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from common.errors import ImageError, ImgsearchError
from common.ids import image_id
from common.settings import Settings
from common.sources import SourceObject, s3_client, split_s3_uri

EXT = {"image/jpeg": ".jpg", "image/png": ".png", "image/webp": ".webp", "image/gif": ".gif", "image/bmp": ".bmp",
       "image/tiff": ".tiff"}


class UploadsNotConfigured(ImgsearchError):
    """A distributed gateway has nowhere to keep uploaded bytes (IMGSEARCH_UPLOAD_URI is empty)."""


def check_image(data: bytes, settings: Settings) -> str:
    """The upload's mime type, or :class:`ImageError` with ingest's reason."""
    from common.images import decode_image

    if not data:
        raise ImageError("empty", "zero-byte upload")
    return decode_image(data, settings.max_image_bytes, settings.max_image_pixels).mime


def _safe_name(name: str | None, mime: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name or "").stem)[:80].strip("._") or "upload"
    return stem + EXT.get(mime, ".img")


def dead_letter_upload(name: str | None, exc: ImageError, settings: Settings) -> None:
    """A refused upload's dead letter, beside ingest's own (embedded: the data dir's file)."""
    import json
    import time

    from ingest.runner import dead_letter_path

    path = dead_letter_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "source": "upload",
             "uri": f"upload:{(name or 'upload')[:255]}", "reason": exc.reason, "message": exc.message}
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(entry) + "\n")


def store_upload(data: bytes, name: str | None, settings: Settings) -> str:
    """Keep checked bytes where ingest reads them; returns their URI (file:// or s3://).
    A refused upload is dead-lettered when embedded (a distributed gateway answers the
    caller with the reason; it has no job to record it in)."""
    try:
        mime = check_image(data, settings)
    except ImageError as exc:
        if settings.embedded:
            dead_letter_upload(name, exc, settings)
        raise
    digest = hashlib.sha256(data).hexdigest()[:32]
    filename = _safe_name(name, mime)
    if settings.upload_uri:
        bucket, prefix = split_s3_uri(settings.upload_uri)
        key = f"{prefix.rstrip('/') + '/' if prefix else ''}{digest}/{filename}"
        s3_client(settings).put_object(Bucket=bucket, Key=key, Body=data, ContentType=mime)
        return f"s3://{bucket}/{key}"
    if not settings.embedded:
        raise UploadsNotConfigured("uploads need IMGSEARCH_UPLOAD_URI (s3://bucket/prefix/) on a distributed gateway")
    folder = settings.data_dir / "uploads" / digest
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / filename
    if not path.is_file():
        tmp = folder / f".{filename}.part"
        tmp.write_bytes(data)
        tmp.replace(path)
    return path.as_uri()


def _object(uri: str, settings: Settings) -> tuple[str, SourceObject]:
    """(location to ingest from, the one object) for a file:// or s3:// URI."""
    if uri.startswith("s3://"):
        bucket, key = split_s3_uri(uri)
        try:
            head = s3_client(settings).head_object(Bucket=bucket, Key=key)
        except Exception as exc:  # missing key or bucket, no access: one answer
            raise ImageError("not_found", f"cannot read {uri}: {type(exc).__name__}") from None
        from urllib.parse import quote

        return f"s3://{bucket}/{key}", SourceObject(f"s3://{bucket}/{quote(key, safe='/')}",
                                                     head["ETag"].strip('"'), int(head["ContentLength"]))
    from urllib.parse import unquote, urlparse

    path = Path(unquote(urlparse(uri).path))
    st = path.stat()
    return str(path.parent), SourceObject(path.as_uri(), f"{st.st_mtime_ns}-{st.st_size}", st.st_size)


def index_embedded(uri: str, settings: Settings) -> dict:
    """Index one object through the normal stages, in this process; searchable on return."""
    from ingest.runner import run_ingest

    location, obj = _object(uri, settings)
    summary = run_ingest(location, settings, progress=False, objects=[obj])
    result = {"id": str(image_id(obj.uri)), "uri": obj.uri}
    if summary.failures:
        failure = summary.failures[0]
        raise ImageError(failure.reason, failure.message)
    return {**result, "status": "indexed" if summary.indexed else "unchanged", "searchable": True}


def index_distributed(uri: str, settings: Settings) -> dict:
    """Submit a job for one object; it is searchable once the job's embed stage is done."""
    import glob

    from ingest.distributed import submit

    location, obj = _object(uri, settings)
    name = location.rsplit("/", 1)[-1]
    # the key is the listing prefix; the include pattern keeps exactly that name ("a.png", not "a.png2")
    job_id = submit(location, settings, (glob.escape(name),))
    return {"id": str(image_id(obj.uri)), "uri": obj.uri, "status": "queued", "searchable": False, "job": job_id,
            "searchable_when": f"job {job_id} has finished its embed stage: GET /v1/jobs/{job_id}"}


def delete_image(ident: int, settings: Settings) -> dict | None:
    """Remove an image and its text rows; None when no such image is indexed."""
    from common.store import ImageStore
    from ingest.removal import remove_images

    store = ImageStore(settings)
    row = store.get(ident)
    if row is None:
        return None
    remove_images(settings, [ident])
    store.flush()
    uploads = (settings.data_dir / "uploads").resolve().as_uri() + "/"
    if row["uri"].startswith(uploads):  # bytes we stored for an upload go with it
        from urllib.parse import unquote, urlparse

        Path(unquote(urlparse(row["uri"]).path)).unlink(missing_ok=True)
    return {"id": str(ident), "uri": row["uri"], "deleted": True}


def image_detail(ident: int, settings: Settings, neighbours: int = 10) -> dict | None:
    """Metadata, OCR lines, captions, tags and near-duplicates (phash within
    IMGSEARCH_DUPLICATE_THRESHOLD bits) of one indexed image; None when unknown."""
    from common.models.phash import hamming_from_score
    from common.store import ImageStore
    from common.texts import TextStore

    store = ImageStore(settings)
    rows = store.client.query(store.alias, filter=f"id == {int(ident)}", output_fields=["*"])
    if not rows:
        return None
    row = dict(rows[0])
    phash = row.pop("phash", None)
    row.pop("clip", None)
    meta = {k: (int(v) if hasattr(v, "item") and not isinstance(v, float) else v) for k, v in row.items()}
    meta["id"] = str(ident)
    texts = TextStore(settings)
    lines = texts.rows_of(ident) if texts.exists() else []
    by_kind: dict[str, list] = {"ocr": [], "caption": [], "tag": []}
    for t in lines:
        by_kind.setdefault(t["kind"], []).append({"text": t["text"], "confidence": round(float(t["confidence"]), 4)})
    near = []
    if phash is not None:
        hits = store.search([phash], neighbours + 1, field="phash")[0]
        near = [{"id": str(h.id), "uri": h.uri, "distance": hamming_from_score(h.score)} for h in hits
                if h.id != ident and hamming_from_score(h.score) <= settings.duplicate_threshold][:neighbours]
    return {"image": meta, "ocr": by_kind["ocr"], "captions": by_kind["caption"], "tags": by_kind["tag"],
            "near_duplicates": near}
