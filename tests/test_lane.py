"""The engine's lane (engine/lane.py): many batches in flight on one
connection, replies matched to calls in order, and every way it can fail
handing its calls to the retrying path without booking twice."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest
import redis

from engine import Engine, EngineUnavailable, ResourceSpec, Settings
from engine.embedded import EmbeddedRedis
from tests.support import events

PARTITIONS = 16


def lane_of(engine: Engine):
    return engine._pipe._lane  # white box: which connection carried the calls


async def open_lane(engine: Engine, resource_id: str) -> None:
    """The lane opens on the first call; wait until it carries calls."""
    for _ in range(200):
        await engine.resource(resource_id)
        if lane_of(engine) is not None and lane_of(engine).ready:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the lane never opened")


async def test_replies_reach_their_own_callers(redis_url: str) -> None:
    async with Engine(Settings(redis_url=redis_url, partitions=PARTITIONS)) as engine:
        resources = [f"order-{i}" for i in range(5)]
        for rid in resources:
            await engine.create_resource(ResourceSpec(resource_id=rid, type="t", capacity=1000))
        await open_lane(engine, resources[0])
        calls = [(resources[i % 5], f"client-{i}", 1 + i % 3, f"req-{i}") for i in range(600)]
        decisions = await asyncio.gather(*[engine.reserve(*call) for call in calls])
        for (rid, client, qty, request_id), d in zip(calls, decisions):
            assert (d.resource_id, d.client_id, d.quantity, d.request_id) == (rid, client, qty, request_id)
            assert d.confirmed
        assert lane_of(engine) is not None and lane_of(engine).ready  # it carried them
        for rid in resources:
            booked = sum(qty for r, _, qty, _ in calls if r == rid)
            assert (await engine.resource(rid)).reserved == booked


async def test_lane_lost_with_calls_in_flight_resends_them_once(redis_url: str) -> None:
    async with Engine(Settings(redis_url=redis_url, partitions=PARTITIONS)) as engine:
        await engine.create_resource(ResourceSpec(resource_id="cut", type="t", capacity=1000))
        await open_lane(engine, "cut")
        lane = lane_of(engine)
        calls = [asyncio.create_task(engine.reserve("cut", f"c{i}", 1, f"cut-{i}")) for i in range(200)]
        await asyncio.sleep(0)  # the calls are made and written; the replies are not read yet
        assert not lane.idle
        lane._transport.abort()  # the connection drops with batches in flight
        decisions = await asyncio.wait_for(asyncio.gather(*calls), 10)
        assert all(d.confirmed for d in decisions)
        assert len({d.reservation_id for d in decisions}) == 200
        assert (await engine.resource("cut")).reserved == 200
        sync = redis.Redis.from_url(redis_url, decode_responses=True)
        confirmed = [e for e in events(sync, "cut") if e["type"] == "RESERVATION_CONFIRMED"]
        sync.close()
        assert len(confirmed) == 200  # a call the server ran before the cut was replayed, not rebooked
        await open_lane(engine, "cut")  # and a new lane took over
        assert lane_of(engine) is not lane


async def test_paused_server_times_the_lane_out_and_retry_books_once() -> None:
    with EmbeddedRedis() as server:
        settings = Settings(redis_url=server.url, partitions=PARTITIONS, socket_timeout=0.3, retries=1)
        async with Engine(settings) as engine:
            await engine.create_resource(ResourceSpec(resource_id="stall", type="t", capacity=10))
            await open_lane(engine, "stall")
            os.kill(server.pid, signal.SIGSTOP)
            try:
                started = time.monotonic()
                with pytest.raises(EngineUnavailable):
                    await asyncio.wait_for(engine.reserve("stall", "al", 2, "stalled"), 10)
                assert time.monotonic() - started < 3.0  # the watchdog, then the retries, gave up
            finally:
                os.kill(server.pid, signal.SIGCONT)
            first = await engine.reserve("stall", "al", 2, "stalled")
            again = await engine.reserve("stall", "al", 2, "stalled")
            assert first.confirmed and again.reservation_id == first.reservation_id
            assert (await engine.resource("stall")).reserved == 2
            sync = redis.Redis.from_url(server.url, decode_responses=True)
            confirmed = [e for e in events(sync, "stall") if e["type"] == "RESERVATION_CONFIRMED"]
            sync.close()
            assert len(confirmed) == 1


async def test_lane_signs_in_with_the_urls_user_and_database() -> None:
    # The default user may only PING; everything else needs the URL's user.
    acl = ["--user", "default", "on", "nopass", "-@all", "+ping",
           "--user", "booker", "on", ">s3cret", "~*", "&*", "+@all"]
    with EmbeddedRedis(extra_args=acl) as server:
        url = f"redis://booker:s3cret@127.0.0.1:{server.port}/3"
        async with Engine(Settings(redis_url=url, partitions=PARTITIONS)) as engine:
            await engine.create_resource(ResourceSpec(resource_id="acl", type="t", capacity=5))
            await open_lane(engine, "acl")
            decisions = await asyncio.gather(*[engine.reserve("acl", f"c{i}", 1, f"a{i}") for i in range(5)])
            assert all(d.confirmed for d in decisions)
        for db, expected_keys in ((3, True), (0, False)):
            admin = redis.Redis(port=server.port, username="booker", password="s3cret", db=db)
            assert (admin.dbsize() > 0) is expected_keys
            admin.close()
