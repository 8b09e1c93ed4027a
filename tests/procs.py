"""Real `resv` processes for end-to-end and fault tests."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import httpx

from resv.embedded import free_port

ROOT = Path(__file__).resolve().parent.parent
OPERATOR_KEY = "op-test-key"
CLIENT_KEY = "client-test-key"
API_KEYS = f"operator:{OPERATOR_KEY},client:{CLIENT_KEY}"


def resv_env(redis_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "RESV_RATE_LIMIT")}
    env.update(REDIS_URL=redis_url, RESV_API_KEYS=API_KEYS, PYTHONPATH=str(ROOT), **extra)
    return env


@contextmanager
def resv_serve(redis_url: str, workers: int = 1, *, log_to: Path | None = None, **extra_env: str):
    """Starts `resv serve` on a free port; yields its base URL; kills it after.
    log_to: keep the server's log (stderr) there, for a test to show."""
    port = free_port()
    # The operator log goes to a file: an unread pipe would fill and block the server.
    log = open(log_to, "wb") if log_to is not None else \
        tempfile.NamedTemporaryFile(prefix="resv-serve-", suffix=".log", delete=False)
    proc = subprocess.Popen(
        [sys.executable, "-m", "resv", "serve", "--host", "127.0.0.1", "--port", str(port),
         "--workers", str(workers)],
        env=resv_env(redis_url, **extra_env), cwd=ROOT, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=log,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"resv serve exited: {Path(log.name).read_text()[-2000:]}")
            try:
                if httpx.get(base + "/health", timeout=0.5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("resv serve did not come up")
            time.sleep(0.1)
        yield base
    finally:
        import signal

        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(5)
        log.close()
        if log_to is None:
            os.unlink(log.name)
