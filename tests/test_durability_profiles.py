"""Durability profiles and replica acknowledgement, on real servers."""

from __future__ import annotations

import asyncio
import logging

import pytest
import redis

from resv.embedded import EmbeddedRedis
from resv.engine import (
    DurabilityError,
    Engine,
    NotReplicated,
    ResourceSpec,
    Settings,
    keys,
)
from tests.support import as_dict


async def test_strict_accepts_fsync_always(redis_server):
    async with Engine(Settings(redis_url=redis_server.url, durability="strict")) as engine:
        config = await engine.check_durability()
    assert config == {"appendonly": "yes", "appendfsync": "always"}


@pytest.mark.parametrize("args", [["--appendfsync", "everysec"], ["--appendonly", "no"]])
async def test_strict_refuses_a_server_that_may_lose_writes(args, caplog):
    with EmbeddedRedis(extra_args=args) as server:
        async with Engine(Settings(redis_url=server.url, durability="strict")) as engine:
            with pytest.raises(DurabilityError) as err:
                await engine.check_durability()
            assert "appendfsync always" in str(err.value) and "RESV_DURABILITY=relaxed" in str(err.value)
        async with Engine(Settings(redis_url=server.url, durability="relaxed")) as engine:
            with caplog.at_level(logging.WARNING, logger="resv.durability"):
                await engine.check_durability()
    assert "relaxed" in caplog.text


async def test_unknown_profile_is_refused(redis_server):
    async with Engine(Settings(redis_url=redis_server.url, durability="yolo")) as engine:
        with pytest.raises(DurabilityError):
            await engine.check_durability()


async def test_wait_replicas_without_replica_reports_recorded_decision():
    with EmbeddedRedis() as server:
        settings = Settings(redis_url=server.url, wait_replicas=1, wait_timeout_ms=100)
        async with Engine(settings) as engine:
            await engine.create_resource(ResourceSpec(resource_id="w", type="t", capacity=5))
            with pytest.raises(NotReplicated) as first:
                await engine.reserve("w", "al", 1, "req-1")
            # reads do not wait; the decision is recorded and a retry returns it
            assert (await engine.resource("w")).reserved == 1
            with pytest.raises(NotReplicated) as again:
                await engine.reserve("w", "al", 1, "req-1")
            decided, replayed = as_dict(first.value.reply), as_dict(again.value.reply)
            assert (decided["type"], decided["replayed"]) == ("RESERVATION_CONFIRMED", "0")
            assert replayed == {**decided, "replayed": "1"}
            assert (await engine.resource("w")).reserved == 1


async def test_wait_replicas_with_a_replica_confirms():
    with EmbeddedRedis() as primary, EmbeddedRedis() as replica:
        r = redis.Redis(port=replica.port)
        r.execute_command("REPLICAOF", "127.0.0.1", primary.port)
        for _ in range(100):
            if r.info("replication").get("master_link_status") == "up":
                break
            await asyncio.sleep(0.05)
        r.close()
        settings = Settings(redis_url=primary.url, wait_replicas=1, wait_timeout_ms=2000)
        async with Engine(settings) as engine:
            await engine.create_resource(ResourceSpec(resource_id="w", type="t", capacity=5))
            results = await asyncio.gather(*(engine.reserve("w", f"c{i}", 1) for i in range(5)))
            assert all(d.confirmed for d in results)
        replica_view = redis.Redis(port=replica.port, decode_responses=True)
        assert replica_view.hget(keys.resource_keys("w", 16)[0], "reserved") == "5"
        replica_view.close()
