"""The embedded servers themselves: start, answer, persist across crashes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import psycopg
import pytest
import redis

from resv.embedded import (
    MIN_REDIS_VERSION,
    EmbeddedRedis,
    ServerStartError,
    backend_binary,
    find_redis_server_binary,
    server_version,
    valkey_binary,
)
from resv.embedded_pg import EmbeddedPostgres

LIBRARY = """#!lua name=embeddedtest
redis.register_function('incrby_twice', function(keys, args)
  redis.call('INCRBY', keys[1], args[1])
  return redis.call('INCRBY', keys[1], args[1])
end)
"""

BACKEND_PARAMS = [
    "valkey",
    pytest.param(
        "redis",
        marks=pytest.mark.skipif(
            find_redis_server_binary() is None, reason="no redis-server >= 7.0 on this machine"
        ),
    ),
]


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_valkey_binary_is_recent() -> None:
    version = server_version(valkey_binary())
    assert version is not None and version >= (8, 1)


def test_backend_names() -> None:
    assert backend_binary("valkey") == valkey_binary()
    with pytest.raises(ValueError):
        backend_binary("memcached")


def test_redis_version_gate(tmp_path: Path) -> None:
    def fake(name: str, version: str) -> str:
        path = tmp_path / name
        path.write_text(f"#!/bin/sh\necho 'Redis server v={version} sha=0:0 bits=64'\n")
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
        return str(path)

    old, new = fake("old", "6.2.14"), fake("new", "7.2.4")
    assert server_version(old) == (6, 2, 14) < MIN_REDIS_VERSION
    assert find_redis_server_binary([old, None, str(tmp_path / "missing")]) is None
    assert find_redis_server_binary([old, new]) == new


def test_session_server_is_private(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    assert ":6379/" not in redis_url
    assert client.ping()
    assert client.dbsize() == 0  # redis_url flushed it
    seconds, micros = client.time()
    assert seconds > 1_600_000_000 and 0 <= micros < 1_000_000
    client.close()


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_redis_functions_and_crash_recovery(backend: str, tmp_path: Path) -> None:
    server = EmbeddedRedis(backend_binary(backend), data_dir=tmp_path / "data")
    with server:
        port, first_pid = server.port, server.pid
        assert server.url == f"redis://127.0.0.1:{port}/0"
        client = redis.Redis.from_url(server.url)
        assert client.ping()
        assert client.function_load(LIBRARY) == b"embeddedtest"
        assert client.fcall("incrby_twice", 1, "counter", 5) == 10
        client.close()

        server.kill()  # acknowledged writes must survive: appendfsync always
        assert gone(first_pid)
        server.restart()
        assert (server.port, server.data_dir) == (port, tmp_path / "data")
        assert server.pid != first_pid

        client = redis.Redis.from_url(server.url)
        assert client.get("counter") == b"10"
        assert client.fcall("incrby_twice", 1, "counter", 1) == 12  # library replayed too
        client.close()

        server.restart()  # graceful stop + start
        client = redis.Redis.from_url(server.url)
        assert client.get("counter") == b"12"
        client.close()
        last_pid = server.pid
    assert gone(last_pid)
    assert (tmp_path / "data").is_dir()  # a given data dir is never deleted


def test_redis_owned_dir_removed_and_failure_explained() -> None:
    with EmbeddedRedis() as server:
        data_dir, pid = server.data_dir, server.pid
    assert gone(pid) and not data_dir.exists()

    with pytest.raises(ServerStartError, match="no-such-directive"):
        EmbeddedRedis(extra_args=["--no-such-directive", "1"]).__enter__()


def test_redis_backend_fixture(redis_backend: EmbeddedRedis) -> None:
    client = redis.Redis.from_url(redis_backend.url)
    client.function_load(LIBRARY, replace=True)
    assert client.fcall("incrby_twice", 1, "conformance:x", 2) == 4
    client.delete("conformance:x")
    client.close()


def test_pg_fixture(pg_server) -> None:
    assert ":5432/" not in pg_server.url
    with psycopg.connect(pg_server.url) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_postgres_restart_and_crash_recovery() -> None:
    with EmbeddedPostgres() as pg:
        port = pg.port
        assert pg.url == f"postgresql://postgres@127.0.0.1:{port}/postgres"
        with psycopg.connect(pg.url, autocommit=True) as conn:
            conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
            conn.execute("INSERT INTO t VALUES (1)")

        pg.restart()  # fast shutdown + start
        assert pg.port == port
        with psycopg.connect(pg.url, autocommit=True) as conn:
            conn.execute("INSERT INTO t VALUES (2)")

        first_pid = pg.pid
        pg.kill()  # crash: committed rows come back from the WAL
        assert gone(first_pid)
        pg.restart()
        with psycopg.connect(pg.url) as conn:
            assert conn.execute("SELECT array_agg(id ORDER BY id) FROM t").fetchone() == ([1, 2],)
        data_dir, last_pid = pg.data_dir, pg.pid
    assert gone(last_pid) and not data_dir.exists()
