"""Shared fixtures: private servers on free loopback ports.

Nothing here (and no test) may rely on 127.0.0.1:6379 or :5432: the machine
may run its own Redis/PostgreSQL there, or none. Set REDIS_URL / DATABASE_URL
to run the suite against external servers instead.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import redis

from resv.embedded import EmbeddedRedis, backend_binary, find_redis_server_binary
from resv.embedded_pg import EmbeddedPostgres

__all__ = ["BACKENDS", "backend_binary"]

# PostgreSQL fixtures (empty_database, database_url, pool, engine, make_archiver)
pytest_plugins = ["tests.archiver_support"]

# Backends available here (tests may import this and backend_binary from
# tests.conftest): valkey ships with the project; redis-server only where the
# machine has one >= 7.0.
BACKENDS = ["valkey"] + (["redis"] if find_redis_server_binary() else [])


def pytest_configure(config: pytest.Config) -> None:
    # SIGTERM (a CI timeout, `kill`) would end Python without fixture
    # finalizers or atexit hooks, leaving servers behind; treat it as Ctrl-C.
    signal.signal(signal.SIGTERM, signal.default_int_handler)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[Any]:
    """The suite's Redis-compatible server (valkey unless REDIS_URL is set)."""
    if url := os.environ.get("REDIS_URL"):
        yield SimpleNamespace(url=url)
        return
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture(scope="session", params=BACKENDS)
def redis_backend(request: pytest.FixtureRequest) -> Iterator[EmbeddedRedis]:
    """A started server per available backend, for conformance tests."""
    with EmbeddedRedis(backend_binary(request.param)) as server:
        yield server


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Any]:
    """The suite's PostgreSQL (embedded unless DATABASE_URL is set)."""
    if url := os.environ.get("DATABASE_URL"):
        yield SimpleNamespace(url=url)
        return
    with EmbeddedPostgres() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: Any) -> str:
    """URL of the session server, emptied of keys first.

    FLUSHALL, not FUNCTION FLUSH: the loaded function library stays, so tests
    do not pay for reloading it.
    """
    client = redis.Redis.from_url(redis_server.url)
    try:
        client.flushall()
    finally:
        client.close()
    return redis_server.url
