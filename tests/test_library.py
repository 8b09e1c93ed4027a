"""Loading the Lua library: idempotent, reloaded when it changes or vanishes."""

from __future__ import annotations

import redis.asyncio as aioredis

from resv.engine import Engine, ResourceSpec, Settings
from resv.engine.library import ensure_library, library_source


async def test_ensure_library_loads_once(redis_url):
    r = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        await r.execute_command("FUNCTION", "FLUSH")
        assert await ensure_library(r) is True
        assert await ensure_library(r) is False
        # another version on the server (an older deploy) is replaced
        stale = library_source().replace("LIBRARY_VERSION = '1'", "LIBRARY_VERSION = 'old'")
        await r.execute_command("FUNCTION", "LOAD", "REPLACE", stale)
        assert await r.fcall_ro("resv_version", 0) == "old"
        assert await ensure_library(r) is True
        assert await r.fcall_ro("resv_version", 0) == "1"
    finally:
        await r.aclose()


async def test_engine_reloads_a_flushed_library(redis_url):
    async with Engine(Settings(redis_url=redis_url)) as engine:
        await engine.create_resource(ResourceSpec(resource_id="f", type="meetup", capacity=3))
        await engine.redis.execute_command("FUNCTION", "FLUSH")
        d = await engine.reserve("f", "al", 1)
        assert d.confirmed
        await engine.redis.execute_command("FUNCTION", "FLUSH")
        assert (await engine.configure("f", 1, {"capacity": 4})).version == 2
        await engine.redis.execute_command("FUNCTION", "FLUSH")
        assert (await engine.resource("f")).capacity == 4
