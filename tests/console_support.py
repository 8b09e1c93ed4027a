"""The console's browser tests: a real `resv serve` and `resv archiver` on the
suite's Valkey and a fresh PostgreSQL database, and Debian's Chromium driven
headless by Playwright (its own browser download is not used).

Without /usr/bin/chromium the browser tests are skipped on a developer's
machine and fail under CI=true: CI must run them (`.ci/run` installs it).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import httpx
import psycopg
import pytest
import redis

from tests.archiver_support import database_url_of
from tests.procs import CLIENT_KEY, OPERATOR_KEY, ROOT, resv_env, resv_serve

CHROMIUM = os.environ.get("RESV_TEST_CHROMIUM", "/usr/bin/chromium")
OP = {"Authorization": f"Bearer {OPERATOR_KEY}"}
CL = {"Authorization": f"Bearer {CLIENT_KEY}"}
DOCS = ROOT / "docs"

__all__ = ["CL", "CLIENT_KEY", "DOCS", "LEAKS", "OP", "OPERATOR_KEY", "chromium_or_skip", "console_stack",
           "leak_pattern", "notifier_process"]


def leak_pattern(*secrets: str) -> re.Pattern[str]:
    """What no console page may contain: these secrets, key names, traces,
    Redis, Lua or SQL words, source paths."""
    return re.compile(
        "|".join([*(re.escape(s) for s in secrets), r"resv:\{", r"\{p\d+\}", r"KEYS\[", "Traceback",
                  r"\bredis\b", r"\bvalkey\b", r"\blua\b", "psycopg", r"\bSQL\b", r"\.py\b", "BAD_ARGUMENT",
                  r"\bFCALL\b", r"/work/", "Exception", "Error:"]),
        re.IGNORECASE)


LEAKS = leak_pattern(OPERATOR_KEY, CLIENT_KEY)


def chromium_or_skip() -> str:
    path = CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium")
    try:
        import playwright  # noqa: F401
    except ImportError:
        path = None
    if path:
        return path
    message = f"no Chromium at {CHROMIUM} (apt-get install -y chromium) or no playwright (pip install -e '.[test]')"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail("CI must run the browser tests: " + message, pytrace=False)
    pytest.skip(message)


@contextmanager
def fresh_database(server_url: str):
    name = f"resv_console_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield database_url_of(server_url, name)
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def resv_process(command: str, env: dict[str, str]):
    """`resv COMMAND` in its own process group, stopped (SIGTERM, then SIGKILL) after."""
    import signal

    log = tempfile.NamedTemporaryFile(prefix=f"resv-{command}-", suffix=".log", delete=False)
    proc = subprocess.Popen([sys.executable, "-m", "resv", command], cwd=ROOT, start_new_session=True,
                            env=env, stdout=subprocess.DEVNULL, stderr=log)
    try:
        yield proc
    finally:
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
        os.unlink(log.name)


def archiver_process(redis_url: str, database_url: str):
    return resv_process("archiver", resv_env(redis_url, DATABASE_URL=database_url,
                                             RESV_ARCHIVER_INTERVAL_MS="100"))


def notifier_process(redis_url: str, database_url: str, **settings: str):
    """`resv notifier` on the stack's database, allowed to reach loopback receivers."""
    return resv_process("notifier", resv_env(redis_url, DATABASE_URL=database_url, RESV_WEBHOOK_ALLOW_PRIVATE="1",
                                             RESV_NOTIFIER_POLL_MS="100", **settings))


@contextmanager
def console_stack(redis_url: str, pg_url: str):
    """(base URL, database URL): the API with DATABASE_URL, and an archiver."""
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    client.close()
    with fresh_database(pg_url) as database_url:
        migrated = subprocess.run([sys.executable, "-m", "resv", "migrate"], cwd=ROOT, capture_output=True,
                                  env=resv_env(redis_url, DATABASE_URL=database_url), timeout=60)
        assert migrated.returncode == 0, migrated.stderr
        with archiver_process(redis_url, database_url), \
                resv_serve(redis_url, DATABASE_URL=database_url, RESV_DURABILITY="relaxed",
                           # loopback webhook receivers; the suite signs in from one address many times
                           RESV_WEBHOOK_ALLOW_PRIVATE="1", RESV_CONSOLE_SIGN_IN_LIMIT="1000") as base:
            yield base, database_url


def wait_until(check, timeout: float = 20.0, what: str = "condition"):
    """Polls `check` until it returns something truthy (no timing is asserted)."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def create_resource(base: str, rid: str, capacity: int, **rules) -> dict:
    response = httpx.post(base + "/resources", headers=OP,
                          json={"resource_id": rid, "type": "meetup", "capacity": capacity, **rules})
    assert response.status_code == 201, response.text
    return response.json()


def docs_path(name: str) -> Path:
    DOCS.mkdir(exist_ok=True)
    return DOCS / name
