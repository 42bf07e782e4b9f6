"""Who holds an embedded data dir: one process at a time, named when another asks.

Milvus Lite lets one process open a database file; a second one fails with "Open local
milvus failed" (and, before this module, a traceback). Every embedded command that opens
the data dir's Milvus Lite file first takes ``<data dir>/holder.lock`` (``flock``, released
by the kernel when the process ends, however it ends) and writes what it is into
``<data dir>/holder.json``: pid, command and, for ``imgsearch serve``, the URL it answers on,
and a random ``local_token``. The record is readable by its owner only (mode 0600): the token
proves that a caller of the server can read the data dir, i.e. runs as the same user, which is
what allows ``imgsearch ingest FOLDER`` to hand a folder to the server that holds the dir. No
other caller can make the server read a folder of its machine.

A command that finds the lock taken reads that record: it then goes through the server
(``search``, ``ingest`` while ``serve`` holds the dir) or stops with one line naming the
holder (:class:`DataDirBusy`). It never touches the database, so it can neither fail on
Milvus' own lock nor corrupt it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import time
from pathlib import Path

from common.errors import ImgsearchError
from common.settings import Settings

LOCK_NAME = "holder.lock"
INFO_NAME = "holder.json"


class DataDirBusy(ImgsearchError):
    """Another live process holds the data dir; ``holder`` is its record (pid, command, url)."""

    def __init__(self, message: str, holder: dict):
        super().__init__(message)
        self.holder = holder


def uses_lite(settings: Settings) -> bool:
    """True when the data dir's Milvus Lite file is the database (no Milvus server)."""
    return not settings.milvus_uri


def busy_message(settings: Settings, holder: dict, command: str) -> str:
    who = f"`imgsearch {holder.get('command', '?')}` (pid {holder.get('pid', '?')})"
    line = (f"the data dir {settings.data_dir} is in use by {who}; Milvus Lite lets one process open it at a "
            f"time, so `imgsearch {command}` cannot run now")
    if holder.get("url"):
        line += (f". The server answers at {holder['url']}: `imgsearch search` and `imgsearch ingest` go through it; "
                 "for this command stop the server (Ctrl-C) first")
    else:
        line += "; wait for it to finish, or stop it"
    return line


class Holding:
    """This process' hold on a data dir (context manager); ``update`` adds to its record."""

    def __init__(self, settings: Settings, command: str):
        self.dir = Path(settings.data_dir)
        self.settings = settings
        self.command = command
        self.fd: int | None = None
        self.info: dict = {}

    def __enter__(self) -> Holding:
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = read_holder(self.dir)
            raise DataDirBusy(busy_message(self.settings, holder, self.command), holder) from None
        self.fd = fd
        self.update(pid=os.getpid(), command=self.command, since=time.time(), local_token=secrets.token_urlsafe(32))
        return self

    def update(self, **values) -> None:
        self.info.update(values)
        tmp = self.dir / f".{INFO_NAME}.{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # the token: owner only
        with os.fdopen(fd, "w") as out:
            out.write(json.dumps(self.info))
        tmp.replace(self.dir / INFO_NAME)

    def __exit__(self, *exc) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            (self.dir / INFO_NAME).unlink()
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None


def read_holder(data_dir: Path, attempts: int = 50) -> dict:
    """The record of the process holding ``data_dir`` (it writes it right after locking:
    read again while it is not there yet, a bounded number of times)."""
    for _ in range(attempts):
        try:
            return json.loads((Path(data_dir) / INFO_NAME).read_text())
        except (OSError, ValueError):
            time.sleep(0.02)
    return {}


def holder_of(settings: Settings) -> dict | None:
    """The live holder's record, or None when nobody holds the data dir (a stale record of a
    dead process is ignored: its lock went with it)."""
    path = Path(settings.data_dir) / LOCK_NAME
    if not path.exists():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return read_holder(Path(settings.data_dir))
    finally:
        os.close(fd)
    return None
