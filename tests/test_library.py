"""Loading the Lua library: idempotent, reloaded when it vanishes, and only
ever moved forward (docs/guarantees.md, Upgrades)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from resv.engine import Engine, LibraryVersionError, ResourceSpec, Settings
from resv.engine.library import (
    ensure_library,
    library_source,
    library_version,
    released_versions,
    version_of,
)

from tests.support import own

LUA = Path(__file__).resolve().parent.parent / "lua"
# Released libraries never change: replaying an old audit depends on it.
RELEASED_SHA256 = {
    1: "ef88d92b74138f7202dab7cedfd5ac7ad989d976fe9208e7c414bed915bc312d",
    2: "2d132ea975f5d6f919dce18c64a0d9fbfc3177854db08c4bc7b522cd435e6cfc",
}


def as_version(n: int) -> str:
    """The current library under another release number (a release that
    does not exist: a newer one, or other code under this number)."""
    source = library_source()
    return source.replace(f"LIBRARY_VERSION = '{library_version()}'", f"LIBRARY_VERSION = '{n}'")


@pytest.fixture
async def r(redis_url):
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    await own(client).execute_command("FUNCTION", "FLUSH")
    yield client
    # leave the session server with the current library, as other tests expect
    await client.execute_command("FUNCTION", "LOAD", "REPLACE", library_source())
    await client.aclose()


def test_every_release_is_kept_verbatim() -> None:
    current = library_version()
    assert released_versions() == tuple(range(1, current)), "lua/releases/ must hold every earlier release"
    for n in released_versions():
        source = library_source(n)
        assert version_of(source) == n
        assert hashlib.sha256(source.encode()).hexdigest() == RELEASED_SHA256[n], f"resv_{n}.lua changed"
    assert set(RELEASED_SHA256) == set(released_versions())
    assert re.search(r"^local LIBRARY_VERSION = '\d+'$", (LUA / "resv.lua").read_text(), re.M)
    with pytest.raises(KeyError):
        library_source(current + 1)


async def test_ensure_library_loads_once(r):
    assert await ensure_library(r) is True
    assert await ensure_library(r) is False
    assert await r.fcall_ro("resv_version", 0) == str(library_version())


async def test_a_newer_process_upgrades_an_older_library(r):
    await r.execute_command("FUNCTION", "LOAD", library_source(1))
    assert await r.fcall_ro("resv_version", 0) == "1"
    assert await ensure_library(r) is True
    assert await r.fcall_ro("resv_version", 0) == str(library_version())


async def test_an_older_process_refuses_a_newer_library(r, redis_url):
    newer = library_version() + 1
    await r.execute_command("FUNCTION", "LOAD", as_version(newer))
    message = f"version {newer}, newer than this process's version {library_version()}"
    with pytest.raises(LibraryVersionError, match=message):
        await ensure_library(r)
    engine = Engine(Settings(redis_url=redis_url))
    try:
        with pytest.raises(LibraryVersionError, match=message):
            await engine.start()
        # a process already running keeps the newer library (it accepts this
        # release's calls) when it checks readiness
        assert await engine.library_ready()
    finally:
        await engine.aclose()
    assert await r.fcall_ro("resv_version", 0) == str(newer)


async def test_the_same_number_with_other_code_is_refused(r):
    changed = library_source() + "\n-- a code change without a new release number\n"
    assert changed != library_source()
    await r.execute_command("FUNCTION", "LOAD", changed)
    with pytest.raises(LibraryVersionError, match="a code change needs a new LIBRARY_VERSION"):
        await ensure_library(r)
    await r.execute_command("FUNCTION", "LOAD", "REPLACE", as_version("old"))  # type: ignore[arg-type]
    with pytest.raises(LibraryVersionError, match="no release number"):
        await ensure_library(r)
    assert await r.fcall_ro("resv_version", 0) == "old"


async def test_readiness_upgrades_a_library_pushed_back(r, redis_url):
    async with Engine(Settings(redis_url=redis_url)) as engine:
        # a process of the previous release, started late, loads its own
        await r.execute_command("FUNCTION", "LOAD", "REPLACE", library_source(1))
        assert await engine.library_ready()
        assert await r.fcall_ro("resv_version", 0) == str(library_version())


async def test_engine_reloads_a_flushed_library(redis_url):
    async with Engine(Settings(redis_url=redis_url)) as engine:
        await engine.create_resource(ResourceSpec(resource_id="f", type="meetup", capacity=3))
        own(engine.redis)
        await own(engine.redis).execute_command("FUNCTION", "FLUSH")
        d = await engine.reserve("f", "al", 1)
        assert d.confirmed
        await own(engine.redis).execute_command("FUNCTION", "FLUSH")
        assert (await engine.configure("f", 1, {"capacity": 4})).version == 2
        await own(engine.redis).execute_command("FUNCTION", "FLUSH")
        assert (await engine.resource("f")).capacity == 4


def test_serve_refuses_a_newer_library_and_leaves_it():
    import subprocess

    import redis

    from resv.embedded import EmbeddedRedis, free_port
    from tests.test_api_serve import ROOT, serve_command, server_env

    newer = library_version() + 1
    with EmbeddedRedis() as server:
        r = redis.Redis.from_url(server.url, decode_responses=True)
        r.execute_command("FUNCTION", "LOAD", as_version(newer))
        done = subprocess.run(serve_command(free_port(), 1), cwd=ROOT, env=server_env(server.url),
                              capture_output=True, text=True, timeout=60)
        assert r.fcall_ro("resv_version", 0) == str(newer)
        r.close()
    assert done.returncode == 2
    assert f"version {newer}, newer than this process's version {library_version()}" in done.stderr
