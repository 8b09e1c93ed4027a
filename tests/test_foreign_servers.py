"""The suite never touches a server it did not start: `make test` with
REDIS_URL and DATABASE_URL pointing at servers holding data (as the CLI
steps make operators set them) leaves that data alone, and a
RESV_TEST_REDIS_URL server that holds keys is refused, not flushed."""

from __future__ import annotations

import os
import subprocess
import uuid

import psycopg
import pytest
import redis

from resv.embedded import EmbeddedRedis
from tests.archiver_support import database_url_of
from tests.procs import ROOT

pytestmark = pytest.mark.slow

# Tests that flush Redis (FLUSHALL, FUNCTION FLUSH), restore, and create and
# drop databases: what would wipe a foreign server if the suite used it.
WIPERS = ["tests/test_restore.py", "tests/test_library.py", "tests/test_lua_bad_input.py"]


def make_test(env: dict[str, str], args: list[str]) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("RESV_", "PYTEST_"))}
    return subprocess.run(["make", "-s", "test", f"ARGS={' '.join(args)} -p no:cacheprovider"],
                          cwd=ROOT, env={**base, **env}, capture_output=True, text=True, timeout=900)


def foreign_redis(server: EmbeddedRedis) -> redis.Redis:
    r = redis.Redis.from_url(server.url, decode_responses=True)
    r.set("precious", "kept")
    r.hset("resv:{p0}:res:theirs", mapping={"capacity": "7"})  # even keys that look like ours
    return r


def test_make_test_leaves_the_servers_of_redis_url_and_database_url_alone(pg_server):
    name = f"foreign_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_server.url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    foreign_db = database_url_of(pg_server.url, name)
    with psycopg.connect(foreign_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE events (id int)")
        conn.execute("INSERT INTO events VALUES (1)")
    try:
        with EmbeddedRedis() as server:
            r = foreign_redis(server)
            done = make_test({"REDIS_URL": server.url, "DATABASE_URL": foreign_db}, WIPERS)
            assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
            assert " passed" in done.stdout and "skipped" not in done.stdout  # ran on its own servers
            assert r.get("precious") == "kept" and r.hget("resv:{p0}:res:theirs", "capacity") == "7"
            assert r.dbsize() == 2 and r.execute_command("FUNCTION", "LIST") == []
            r.close()
        with psycopg.connect(foreign_db) as conn:
            assert conn.execute("SELECT id FROM events").fetchall() == [(1,)]
            tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()
            assert tables == (1,)
    finally:
        with psycopg.connect(pg_server.url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # the one this test made


def test_a_test_server_that_holds_keys_is_refused_not_flushed():
    with EmbeddedRedis() as server:
        r = foreign_redis(server)
        done = make_test({"RESV_TEST_REDIS_URL": server.url}, ["tests/test_library.py"])
        assert done.returncode != 0
        assert "RESV_TEST_REDIS_URL holds 2 keys" in done.stdout + done.stderr
        assert r.get("precious") == "kept" and r.dbsize() == 2
        r.close()


def test_tests_that_wipe_a_server_skip_on_a_test_server_of_your_own():
    with EmbeddedRedis() as server:
        done = make_test({"RESV_TEST_REDIS_URL": server.url}, ["tests/test_library.py", "tests/test_lua_bad_input.py"])
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert "skipped" in done.stdout  # the FUNCTION FLUSH tests
        r = redis.Redis.from_url(server.url)
        assert r.dbsize() == 0  # what the tests made is gone, one key at a time
        r.close()
