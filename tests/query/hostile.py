"""Helpers for the hostile-caller tests: raw stream entries, one-batch delivery, process memory.

``add_as_one_batch`` puts entries on the stream inside one MULTI/EXEC: Redis serves a
blocked reader only after the transaction, so a waiting worker reads them all in one
XREADGROUP, i.e. answers them as ONE batch (what a busy worker sees under load).
"""

from __future__ import annotations

import base64
import io
import json
import uuid
from pathlib import Path

import redis
from PIL import Image

from query.protocol import SCHEMA_VERSION, now_ms, reply_key


def search_doc(query: dict, **fields) -> dict:
    return {"v": SCHEMA_VERSION, "id": f"r-{uuid.uuid4().hex[:10]}", "deadline": now_ms() + 120_000,
            "query": query, "k": 5, **fields}


def op_doc(op: str, **fields) -> dict:
    return {"v": SCHEMA_VERSION, "id": f"o-{uuid.uuid4().hex[:10]}", "deadline": now_ms() + 120_000, "op": op,
            **fields}


def entry(doc: dict | str, request_id: str | None = None) -> dict:
    """The stream entry for a search (``req``) or op (``op``) document; JSON escapes lone surrogates."""
    if isinstance(doc, str):
        return {"id": request_id or f"x-{uuid.uuid4().hex[:10]}", "req": doc}
    return {"id": doc["id"], ("op" if "op" in doc else "req"): json.dumps(doc)}


def add_as_one_batch(r: redis.Redis, stream: str, entries: list[dict]) -> None:
    pipe = r.pipeline(transaction=True)
    for fields in entries:
        pipe.xadd(stream, fields)
    pipe.execute()


def replies(r: redis.Redis, stream: str, entries: list[dict], timeout: float = 180) -> dict[str, dict]:
    out = {}
    for fields in entries:
        popped = r.blpop([reply_key(stream, fields["id"])], timeout=timeout)
        assert popped is not None, f"no reply for {fields}"
        out[fields["id"]] = json.loads(popped[1])
    return out


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG", optimize=True)
    return buf.getvalue()


def huge_png(side: int = 10_000, mode: str = "1") -> bytes:
    """A PNG that declares side x side pixels in a few KB (a decompression bomb for queries)."""
    return png(Image.new(mode, (side, side)))


# -- process memory and I/O (Linux /proc) ---------------------------------------------------
def reset_peak_rss(pid: int) -> None:
    """Make VmHWM (peak RSS) start again from the current RSS (clear_refs 5, Linux >= 4.0)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def written_bytes(pid: int) -> int:
    """Bytes the process passed to write()-like calls so far (files, sockets, pipes): ``wchar``."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise KeyError("wchar")
