"""Shared fixtures: private servers on free loopback ports.

Tests never touch a server they did not start. Nothing here (and no test)
may rely on 127.0.0.1:6379 or :5432: the machine may run its own
Redis/PostgreSQL there, or none. REDIS_URL and DATABASE_URL are ignored (and
removed from the environment before any test runs, so no code under test or
child process reads them): the CLI steps make operators set them, and a
test run must not write to the servers they name.

To run the suite against servers of your own, name them with variables of
the suite's own: RESV_TEST_REDIS_URL (a server holding no key when the run
starts: the run refuses another; between tests it deletes the keys the tests
made, never FLUSHALL/FLUSHDB, and tests that wipe a whole server skip) and
RESV_TEST_DATABASE_URL (the run creates its databases `resv_test_<random>`
there and drops only those).
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
from resv.embedded_cluster import EmbeddedCluster
from resv.embedded_pg import EmbeddedPostgres
from tests.support import OWN_SERVERS

__all__ = ["BACKENDS", "backend_binary"]

# PostgreSQL fixtures (empty_database, database_url, pool, engine, make_archiver)
pytest_plugins = ["tests.archiver_support", "tests.webhook_support"]

# Backends available here (tests may import this and backend_binary from
# tests.conftest): valkey ships with the project; redis-server only where the
# machine has one >= 7.0.
BACKENDS = ["valkey"] + (["redis"] if find_redis_server_binary() else [])


FOREIGN = ("REDIS_URL", "DATABASE_URL")
"""The operators' variables: never used by the suite."""


def pytest_configure(config: pytest.Config) -> None:
    # SIGTERM (a CI timeout, `kill`) would end Python without fixture
    # finalizers or atexit hooks, leaving servers behind; treat it as Ctrl-C.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    for name in FOREIGN:
        os.environ.pop(name, None)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[Any]:
    """The suite's Redis-compatible server: valkey, started here, unless
    RESV_TEST_REDIS_URL names one (which must hold no key)."""
    if url := os.environ.get("RESV_TEST_REDIS_URL"):
        client = redis.Redis.from_url(url)
        try:
            held = client.dbsize()
        finally:
            client.close()
        if held:
            pytest.exit(f"RESV_TEST_REDIS_URL holds {held} keys: the suite runs only on a server holding "
                        "none (it never flushes a server it did not start)", returncode=2)
        yield SimpleNamespace(url=url)
        return
    with EmbeddedRedis() as server:
        OWN_SERVERS.add(server.url)
        yield server
        OWN_SERVERS.discard(server.url)


@pytest.fixture(scope="session", params=BACKENDS)
def redis_backend(request: pytest.FixtureRequest) -> Iterator[EmbeddedRedis]:
    """A started server per available backend, for conformance tests."""
    with EmbeddedRedis(backend_binary(request.param)) as server:
        OWN_SERVERS.add(server.url)
        yield server
        OWN_SERVERS.discard(server.url)


ENGINE_BACKENDS = [*BACKENDS, "cluster"]
"""The engine's conformance runs: each server backend, and a Redis Cluster."""


@pytest.fixture(scope="session", params=ENGINE_BACKENDS)
def engine_backend(request: pytest.FixtureRequest) -> Iterator[SimpleNamespace]:
    """A started server of each backend, then the session cluster: `url`,
    `name`, `cluster` (the EmbeddedCluster, or None)."""
    if request.param == "cluster":
        cluster = request.getfixturevalue("redis_cluster")
        yield SimpleNamespace(url=cluster.url, name="cluster", cluster=cluster)
        return
    with EmbeddedRedis(backend_binary(request.param)) as server:
        OWN_SERVERS.add(server.url)
        yield SimpleNamespace(url=server.url, name=request.param, cluster=None)
        OWN_SERVERS.discard(server.url)


def sync_client(backend: SimpleNamespace) -> Any:
    """A decoding client of the backend: redis.RedisCluster on a cluster."""
    if backend.cluster is not None:
        return redis.RedisCluster.from_url(backend.url, decode_responses=True)
    return redis.Redis.from_url(backend.url, decode_responses=True)


def empty_backend(backend: SimpleNamespace) -> None:
    """FLUSHALL on the server or on every primary, then the library loaded
    on each (as a process that starts finds it)."""
    from resv.engine.library import library_source

    if backend.cluster is None:
        clients = [redis.Redis.from_url(backend.url, decode_responses=True)]
    else:
        clients = [backend.cluster.client(node) for node in backend.cluster.primary_nodes()]
    for client in clients:
        try:
            client.flushall()
            client.execute_command("FUNCTION", "LOAD", "REPLACE", library_source())
        finally:
            client.close()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[EmbeddedCluster]:
    """A Redis Cluster of the suite's server binary (valkey): 3 primaries with
    one replica each, cluster-node-timeout 1500 ms, on free loopback ports
    whose bus ports (port + 10000) are free too. Tests that kill a node
    start a cluster of their own."""
    with EmbeddedCluster(node_timeout_ms=1500) as cluster:
        OWN_SERVERS.update(cluster.urls)
        yield cluster
        OWN_SERVERS.difference_update(cluster.urls)


@pytest.fixture
def redis_cluster_url(redis_cluster: EmbeddedCluster) -> str:
    """URL of the session cluster's first primary, every primary flushed
    (the library stays loaded)."""
    flush_cluster(redis_cluster)
    return redis_cluster.url


def flush_cluster(cluster: EmbeddedCluster) -> None:
    for node in cluster.primary_nodes():
        client = cluster.client(node)
        try:
            client.flushall()
        finally:
            client.close()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Any]:
    """The suite's PostgreSQL (embedded unless RESV_TEST_DATABASE_URL is set)."""
    if url := os.environ.get("RESV_TEST_DATABASE_URL"):
        yield SimpleNamespace(url=url)
        return
    with EmbeddedPostgres() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: Any) -> Iterator[str]:
    """URL of the session server, emptied of keys first.

    The suite's own server is flushed (FLUSHALL, not FUNCTION FLUSH: the
    loaded library stays, so tests do not pay for reloading it). On a
    RESV_TEST_REDIS_URL server, which held no key when the run started, the
    keys are deleted one by one instead, before and after each test: all of
    them are the tests'.
    """
    own = redis_server.url in OWN_SERVERS
    _empty(redis_server.url, own)
    yield redis_server.url
    if not own:
        _empty(redis_server.url, own)


def _empty(url: str, own: bool) -> None:
    client = redis.Redis.from_url(url)
    try:
        if own:
            client.flushall()
        else:
            for key in client.scan_iter(count=1000):
                client.unlink(key)
    finally:
        client.close()
