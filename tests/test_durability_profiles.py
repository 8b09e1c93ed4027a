"""Durability profiles and replica acknowledgement, on real servers."""

from __future__ import annotations

import asyncio
import logging

import pytest
import redis

from resv.api.app import prepare
from resv.embedded import EmbeddedRedis
from resv.engine import (
    DurabilityError,
    Engine,
    NotReplicated,
    ResourceSpec,
    Settings,
    keys,
)
from tests.api_support import OP, api, create_resource, reserve
from tests.support import as_dict, snapshot


async def test_strict_accepts_fsync_always(redis_server):
    async with Engine(Settings(redis_url=redis_server.url, durability="strict")) as engine:
        config = await engine.check_durability()
    assert config == {"appendonly": "yes", "appendfsync": "always", "no-appendfsync-on-rewrite": "no",
                      "maxmemory-policy": "noeviction"}


UNSAFE = [
    (["--appendfsync", "everysec"], "appendfsync is everysec"),
    (["--appendonly", "no"], "appendonly is no"),
    (["--maxmemory-policy", "allkeys-lru"], "maxmemory-policy is allkeys-lru"),
    (["--maxmemory-policy", "volatile-lru"], "maxmemory-policy is volatile-lru"),
    (["--maxmemory-policy", "volatile-ttl"], "maxmemory-policy is volatile-ttl"),
    (["--no-appendfsync-on-rewrite", "yes"], "no-appendfsync-on-rewrite is yes"),
]


def written(server) -> tuple[dict, list]:
    """Everything a process could have written: the keyspace and the functions."""
    r = redis.Redis.from_url(server.url)
    try:
        return snapshot(r), r.execute_command("FUNCTION", "LIST")
    finally:
        r.close()


@pytest.mark.parametrize(("args", "named"), UNSAFE, ids=[" ".join(a) for a, _ in UNSAFE])
async def test_strict_refuses_a_server_that_may_lose_writes_and_writes_nothing_to_it(args, named, caplog):
    with EmbeddedRedis(extra_args=args) as server:
        engine = Engine(Settings(redis_url=server.url, durability="strict"))
        try:
            with pytest.raises(DurabilityError) as err:
                await prepare(engine, None)
        finally:
            await engine.aclose()
        assert named in str(err.value) and "RESV_DURABILITY=relaxed" in str(err.value)
        assert written(server) == ({}, [])  # checked before the library or any record
        async with Engine(Settings(redis_url=server.url, durability="relaxed")) as engine:
            with caplog.at_level(logging.WARNING, logger="resv.durability"):
                await engine.check_durability()
    assert "relaxed" in caplog.text and named in caplog.text


async def test_strict_refuses_a_server_that_refuses_config_get(caplog):
    with EmbeddedRedis(extra_args=["--rename-command", "CONFIG", ""]) as server:
        engine = Engine(Settings(redis_url=server.url, durability="strict"))
        try:
            with pytest.raises(DurabilityError) as err:
                await prepare(engine, None)
        finally:
            await engine.aclose()
        assert "refuses CONFIG GET" in str(err.value) and "RESV_DURABILITY=relaxed" in str(err.value)
        assert "loss window" in str(err.value)
        assert written(server) == ({}, [])
        engine = Engine(Settings(redis_url=server.url, durability="relaxed"))
        try:
            with caplog.at_level(logging.WARNING, logger="resv.durability"):
                await prepare(engine, None)  # relaxed starts, saying what it cannot check
        finally:
            await engine.aclose()
    assert "unchecked" in caplog.text


@pytest.mark.parametrize(("setting", "unsafe"), [
    ("appendfsync", "everysec"), ("maxmemory-policy", "allkeys-lru"), ("no-appendfsync-on-rewrite", "yes"),
    ("appendonly", "no")])
async def test_a_setting_lost_at_run_time_turns_writes_into_503_until_fixed(setting, unsafe):
    with EmbeddedRedis() as server:
        engine = Engine(Settings(redis_url=server.url, durability="strict", durability_check_s=0.2))
        async with api(server.url, engine=engine) as http:
            await create_resource(http, "gig", 5)
            admin = redis.Redis.from_url(server.url, decode_responses=True)
            before = admin.config_get(setting)[setting]
            admin.config_set(setting, unsafe)
            refused = await _eventually(lambda: reserve(http, "gig", key="k-1"), 503)
            assert refused.json() == {"error": "UNAVAILABLE"}
            assert (await http.get("/resources/gig", headers=OP)).status_code == 200  # reads still answer
            ready = await http.get("/ready", headers=OP)
            assert ready.status_code == 503 and ready.json()["checks"]["durability"] == "down"
            assert any(f"{setting} is {unsafe}" in p for p in ready.json()["problems"])
            assert "resv_durability_unsafe 1.0" in (await http.get("/metrics", headers=OP)).text
            admin.config_set(setting, before)
            confirmed = await _eventually(lambda: reserve(http, "gig", key="k-1"), 201)
            assert confirmed.json()["quantity"] == 1
            assert (await http.get("/ready", headers=OP)).status_code == 200
            admin.close()


async def _eventually(call, status: int, timeout: float = 20.0):
    """Repeats call() until it answers `status` (the check interval is 0.2 s)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        response = await call()
        if response.status_code == status:
            return response
        assert asyncio.get_running_loop().time() < deadline, f"still {response.status_code}: {response.text}"
        await asyncio.sleep(0.05)


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
