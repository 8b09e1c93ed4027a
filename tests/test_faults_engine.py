"""Faults injected into real server processes while the engine is under load.
Every answer a client received is checked against the decision log."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
import uuid

import pytest
import redis

from resv.embedded import EmbeddedRedis
from resv.engine import Engine, EngineUnavailable, ReservationConfirmed, ResourceSpec, Settings, keys
from tests.history import Observation, check
from tests.report import record
from tests.support import events, open_lane

PARTITIONS = 16


async def client_loop(engine: Engine, resource_id: str, observations: list, stop: asyncio.Event,
                      give_up_after: float = 8.0) -> None:
    """Reserves until told to stop; on an unknown outcome retries with the
    same request id, as a well-behaved client does."""
    while not stop.is_set():
        rq = uuid.uuid4().hex
        deadline = time.monotonic() + give_up_after
        answer = None
        while time.monotonic() < deadline:
            try:
                answer = await engine.reserve(resource_id, f"c-{rq[:6]}", 1, rq)
                break
            except EngineUnavailable:
                await asyncio.sleep(0.05)
        observations.append(Observation(rq, resource_id, answer and answer.decision,
                                        answer.reservation_id if isinstance(answer, ReservationConfirmed) else None))


@pytest.mark.slow
async def test_kill_9_twenty_times_under_load_loses_no_confirmation(tmp_path):
    capacity = 400
    with EmbeddedRedis(data_dir=tmp_path / "data") as server:
        settings = Settings(redis_url=server.url, partitions=PARTITIONS, socket_timeout=0.5, retries=1)
        async with Engine(settings) as engine:
            await engine.create_resource(ResourceSpec(resource_id="gig", type="concert", capacity=capacity))
            observations: list[Observation] = []
            stop = asyncio.Event()
            clients = [asyncio.create_task(client_loop(engine, "gig", observations, stop)) for _ in range(32)]
            rng = random.Random(7)
            for _ in range(20):
                await asyncio.sleep(rng.uniform(0.05, 0.2))
                server.kill()
                await asyncio.sleep(rng.uniform(0.0, 0.1))
                server.restart()
            await asyncio.sleep(0.3)
            stop.set()
            await asyncio.gather(*clients)
            state = await engine.resource("gig")  # the engine recovered by itself
        sync = redis.Redis.from_url(server.url, decode_responses=True)
        log = events(sync, "gig")
        report = check(observations, log, {"gig": capacity})
        s = report.summary()
        record("engine: kill -9 of the server x20 under load", faults=20, requests=s["requests"],
               decisions=s["decisions"], lost=s["lost"], duplicated=s["duplicated"],
               overbooked=s["overbooked"])
        assert report.ok, s
        confirmed = [o for o in observations if o.decision == "CONFIRMED"]
        assert len(confirmed) > 20  # the load really ran through the faults
        assert state.reserved == sum(1 for e in log if e["type"] == "RESERVATION_CONFIRMED") <= capacity
        bookings = keys.resource_keys("gig", PARTITIONS)[1]
        for o in confirmed:
            assert '"CONFIRMED"' in sync.hget(bookings, o.reservation_id)
        sync.close()


async def test_out_of_memory_refuses_cleanly_and_recovers():
    with EmbeddedRedis(extra_args=["--maxmemory", "3mb", "--maxmemory-policy", "noeviction"]) as server:
        async with Engine(Settings(redis_url=server.url, partitions=PARTITIONS)) as engine:
            await engine.create_resource(ResourceSpec(resource_id="oom", type="t", capacity=10))
            sync = redis.Redis.from_url(server.url)
            blob = b"x" * 64_000
            with pytest.raises(redis.exceptions.OutOfMemoryError):
                for i in range(1000):
                    sync.set(f"junk:{i}", blob)
            before = {k: sync.dump(k) for k in sync.keys("resv:*")}
            with pytest.raises(EngineUnavailable, match="OutOfMemory"):
                await engine.reserve("oom", "al", 1, "q1")
            with pytest.raises(EngineUnavailable, match="OutOfMemory"):
                await engine.join_waitlist("oom", "al", 1)
            assert {k: sync.dump(k) for k in sync.keys("resv:*")} == before
            # reads still answer
            assert (await engine.resource("oom")).reserved == 0
            sync.delete(*sync.keys("junk:*"))
            assert (await engine.reserve("oom", "al", 1, "q1")).confirmed
            sync.close()
        record("engine: server out of memory (noeviction)", faults=1, requests=3, decisions=1,
               lost=0, duplicated=0, overbooked=0)


@pytest.mark.parametrize("path", ["retrying", "lane"])
async def test_paused_server_fails_fast_and_retry_never_double_books(path):
    """Before the engine's lane is open, calls take redis-py's retrying path;
    once it is, the lane's watchdog gives up on the server, then that path."""
    with EmbeddedRedis() as server:
        settings = Settings(redis_url=server.url, partitions=PARTITIONS, socket_timeout=0.3, retries=1)
        async with Engine(settings) as engine:
            await engine.create_resource(ResourceSpec(resource_id="slow", type="t", capacity=10))
            if path == "lane":
                await open_lane(engine, "slow")
            os.kill(server.pid, signal.SIGSTOP)
            try:
                started = time.monotonic()
                with pytest.raises(EngineUnavailable):
                    await asyncio.wait_for(engine.reserve("slow", "al", 2, "the-request"), 10)
                assert time.monotonic() - started < 3.0  # bounded, not hung
            finally:
                os.kill(server.pid, signal.SIGCONT)
            # the FCALL sent before the pause may run on resume: outcome unknown.
            # The client retries with the same request id: one booking at most.
            d = await engine.reserve("slow", "al", 2, "the-request")
            again = await engine.reserve("slow", "al", 2, "the-request")
            assert d.confirmed and again.reservation_id == d.reservation_id
            assert (await engine.resource("slow")).reserved == 2
            sync = redis.Redis.from_url(server.url, decode_responses=True)
            decided = [e for e in events(sync, "slow") if e["type"] == "RESERVATION_CONFIRMED"]
            assert len(decided) == 1
            sync.close()
        record(f"engine: server paused (SIGSTOP), retry same request id ({path} path)", faults=1, requests=3,
               decisions=len(decided), lost=0, duplicated=len(decided) - 1, overbooked=0)
