"""Many concurrent commits on real servers (Valkey, Redis when a
redis-server >= 7 is installed, and a Valkey cluster of 3 primaries): one
winner per unit of capacity."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis
import redis.asyncio as aioredis

from resv.engine import Engine, ResourceSpec, Settings, keys
from tests.conftest import empty_backend, sync_client
from tests.report import record
from tests.support import PARTITIONS, events


def check_stream(sync_redis, resource_id: str, capacity: int, calls: int) -> None:
    """One decision event per call; capacity never exceeded at any prefix."""
    evs = [e for e in events(sync_redis, resource_id) if e["type"].startswith("RESERVATION_")]
    assert len(evs) == calls
    booked = 0
    for e in evs:
        if e["type"] == "RESERVATION_CONFIRMED":
            booked += int(e["quantity"])
        assert 0 <= booked <= capacity
        assert int(e["remaining"]) == capacity - booked
    ts = [int(e["ts"]) for e in evs]
    assert ts == sorted(ts)
    if isinstance(sync_redis, redis.RedisCluster):
        server = "a cluster of 3 primaries"
    else:
        server = sync_redis.info("server").get("server_name") or "redis"
    record(f"contention on {server}: {calls} calls for {capacity} seats", requests=calls,
           decisions=len(evs), overbooked=0, duplicated=0, lost=0)


async def reserve_over_connections(url: str, resource_id: str, calls: int, connections: int, *,
                                   cluster: bool = False):
    """`calls` reserve FCALLs spread over `connections` separate connections
    (cluster: separate cluster clients, each its own connections)."""
    clients = [aioredis.RedisCluster.from_url(url, decode_responses=True) if cluster else
               aioredis.Redis.from_url(url, decode_responses=True, single_connection_client=True)
               for _ in range(connections)]

    async def one(i: int):
        rq = uuid.uuid4().hex
        flat = await clients[i % connections].execute_command(
            "FCALL", "resv_reserve", 10, *keys.reserve_keys(resource_id, rq, PARTITIONS),
            resource_id, f"c{i}", "1", rq)
        return dict(zip(flat[::2], flat[1::2]))

    # one call in flight per connection at a time: real concurrency across connections
    locks = [asyncio.Lock() for _ in range(connections)]

    async def guarded(i: int):
        async with locks[i % connections]:
            return await one(i)

    try:
        return await asyncio.gather(*(guarded(i) for i in range(calls)))
    finally:
        for c in clients:
            await c.aclose()


@pytest.fixture
def backend(engine_backend):
    """(url, sync client) of each backend and of the cluster, emptied."""
    empty_backend(engine_backend)
    sync = sync_client(engine_backend)
    yield engine_backend.url, sync
    sync.close()


async def test_thousand_calls_fifty_connections_hundred_seats(backend):
    url, sync = backend
    async with Engine(Settings(redis_url=url, partitions=PARTITIONS)) as engine:
        await engine.create_resource(ResourceSpec(resource_id="hall", type="meetup", capacity=100))
    results = await reserve_over_connections(url, "hall", 1000, 50, cluster=isinstance(sync, redis.RedisCluster))
    confirmed = [d for d in results if d["decision"] == "CONFIRMED"]
    rejected = [d for d in results if d["decision"] == "REJECTED"]
    assert len(confirmed) == 100
    assert len(rejected) == 900 and {d["code"] for d in rejected} == {"RESOURCE_FULL"}
    assert len({d["reservation_id"] for d in confirmed}) == 100
    assert sync.hget(keys.resource_keys("hall", PARTITIONS)[0], "reserved") == "100"
    check_stream(sync, "hall", 100, 1000)


async def test_last_seat_has_exactly_one_winner(backend):
    url, sync = backend
    async with Engine(Settings(redis_url=url, partitions=PARTITIONS)) as engine:
        await engine.create_resource(ResourceSpec(resource_id="last", type="table", capacity=1))
        results = await asyncio.gather(*(engine.reserve("last", f"c{i}", 1) for i in range(500)))
    assert sum(d.confirmed for d in results) == 1
    assert {d.reason for d in results if not d.confirmed} == {"SOLD_OUT"}
    check_stream(sync, "last", 1, 500)


async def test_same_request_id_twenty_times_concurrently(backend):
    url, sync = backend
    settings = Settings(redis_url=url, partitions=PARTITIONS)
    # separate engines: separate connections, truly concurrent
    engines = [Engine(settings) for _ in range(20)]
    await asyncio.gather(*(e.start() for e in engines))
    await engines[0].create_resource(ResourceSpec(resource_id="idem", type="meetup", capacity=50))
    try:
        results = await asyncio.gather(*(e.reserve("idem", "alice", 2, "same-request") for e in engines))
    finally:
        for e in engines:
            await e.aclose()
    assert {d.reservation_id for d in results} == {"idem~1"}
    assert sum(not d.replayed for d in results) == 1
    assert sync.hget(keys.resource_keys("idem", PARTITIONS)[0], "reserved") == "2"
    evs = [e["type"] for e in events(sync, "idem")]
    assert evs.count("RESERVATION_CONFIRMED") == 1 and evs.count("RESERVATION_REPLAYED") == 19


async def test_mixed_quantities_and_cancels_never_overbook(backend):
    url, sync = backend
    async with Engine(Settings(redis_url=url, partitions=PARTITIONS)) as engine:
        await engine.create_resource(ResourceSpec(resource_id="mix", type="bus", capacity=37))

        async def client(i: int):
            d = await engine.reserve("mix", f"c{i}", 1 + i % 4)
            if d.confirmed and i % 3 == 0:
                await engine.cancel(d.reservation_id)
            return d

        await asyncio.gather(*(client(i) for i in range(600)))
        state = await engine.resource("mix")
    assert 0 <= state.reserved <= 37
    booked = 0
    for e in events(sync, "mix"):
        if e["type"] == "RESERVATION_CONFIRMED":
            booked += int(e["quantity"])
        elif e["type"] == "RESERVATION_CANCELLED":
            booked -= int(e["quantity"])
        assert 0 <= booked <= 37
    assert booked == state.reserved
