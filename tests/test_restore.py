"""`resv restore`: the engine's state rebuilt from the PostgreSQL audit after
the Redis data was lost, then confirmed by verify."""

from __future__ import annotations

import asyncio

import pytest

from resv.archiver import streams
from resv.archiver.restore import RestoreError, restore
from resv.archiver.verify import verify
from resv.engine import check_state
from resv.engine.keys import partition_of, stream_key
from resv.scratch import scratch_server
from tests.archiver_support import PARTITIONS, create
from tests.support import own, snapshot


async def activity(engine) -> None:
    await create(engine, "hall", 5, waitlist_enabled=True, max_per_client=3)
    await create(engine, "room", 2)
    got = await asyncio.gather(*(engine.reserve("hall", f"c{i}", 1, f"q{i}") for i in range(7)))
    await engine.reserve("hall", "c0", 1, "q0")  # a retry, replayed
    await engine.join_waitlist("hall", "wait-1", 1)
    await engine.join_waitlist("hall", "wait-2", 2)
    await engine.cancel(next(d.reservation_id for d in got if d.confirmed))
    await engine.configure("hall", 1, {"capacity": 8})
    await engine.reserve("room", "al", 2, "r1")
    await engine.close("room", 1)


def state_of(sync) -> dict:
    return {k: v for k, v in snapshot(sync, streams=False).items() if ":req:" not in k and ":deployment" not in k}


def deployment_ids(sync) -> dict[str, str]:
    return {k: sync.hget(k, "deployment_id") for k in sync.keys("resv:*:deployment")}


async def test_restore_rebuilds_the_state_and_verify_agrees(engine, make_archiver, pool, redis_url):
    import redis as sync_redis

    await activity(engine)
    await (await make_archiver()).drain()
    sync = sync_redis.Redis.from_url(redis_url, decode_responses=True)
    before, deployment = state_of(sync), deployment_ids(sync)
    assert len(deployment) == PARTITIONS and len(set(deployment.values())) == 1
    requests = sorted(k for k in sync.keys("resv:*") if ":req:" in k)
    own(sync).flushall()
    sync.execute_command("FUNCTION", "FLUSH")  # all Redis data lost

    report = await restore(engine.redis, pool, PARTITIONS, scratch_server=scratch_server)
    assert report.mismatches == [] and report.events >= 18
    assert state_of(sync) == before and deployment_ids(sync) == deployment
    assert sorted(k for k in sync.keys("resv:*") if ":req:" in k) == requests
    assert 0 < sync.pttl(requests[0]) <= 86_400_000
    assert (await verify(engine.redis, pool, PARTITIONS, scratch_server=scratch_server)).ok

    # the engine goes on: a retry is still answered from its record, new
    # reservations get new ids, and their events archive without collisions
    again = await engine.reserve("hall", "c0", 1, "q0")
    assert again.replayed
    new = await engine.reserve("hall", "late", 1, "q-new")
    assert new.confirmed and new.reservation_id not in {k for v in before.values() for k in v[1]}
    archiver = await make_archiver(consumer="after-restore")
    await archiver.drain()
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT count(*) FROM events WHERE request_id = 'q-new'")
        assert (await cur.fetchone())[0] == 1
    assert (await verify(engine.redis, pool, PARTITIONS, scratch_server=scratch_server)).ok
    sync.close()


async def test_restore_refuses_a_non_empty_target(engine, make_archiver, pool):
    await create(engine, "x", 1)
    await (await make_archiver()).drain()
    with pytest.raises(RestoreError, match=r"holds engine state \(resv:\{p\d+\}:(res:x|events)\)"):
        await restore(engine.redis, pool, PARTITIONS, scratch_server=scratch_server)
    assert (await engine.resource("x")).capacity == 1


async def test_restore_accepts_what_the_engine_creates_on_an_empty_server(engine, make_archiver, pool, redis_url):
    import redis as sync_redis

    await activity(engine)
    await (await make_archiver()).drain()
    sync = sync_redis.Redis.from_url(redis_url, decode_responses=True)
    before, deployment = state_of(sync), deployment_ids(sync)
    own(sync).flushall()
    # what processes of an older version or a fresh start leave: empty
    # streams with their group, and another deployment's records
    await streams.ensure_groups(engine.redis, range(PARTITIONS))
    await check_state(engine.redis, PARTITIONS, None)
    report = await restore(engine.redis, pool, PARTITIONS, scratch_server=scratch_server)
    assert report.mismatches == [] and state_of(sync) == before and deployment_ids(sync) == deployment
    assert (await verify(engine.redis, pool, PARTITIONS, scratch_server=scratch_server)).ok

    # a stream that ever held an entry is state, even trimmed to nothing
    own(sync).flushall()
    p = partition_of("hall", PARTITIONS)
    sync.xadd(stream_key(p), {"type": "X"}, id="1-1")
    sync.xtrim(stream_key(p), minid="2-0")
    with pytest.raises(RestoreError, match="holds engine state"):
        await restore(engine.redis, pool, PARTITIONS, scratch_server=scratch_server)
    sync.close()


async def test_restore_writes_nothing_when_the_audit_was_tampered(engine, make_archiver, pool, redis_url):
    import redis as sync_redis

    await activity(engine)
    await (await make_archiver()).drain()
    async with pool.connection() as conn:
        await conn.execute("UPDATE events SET remaining = remaining + 1 "
                           "WHERE type = 'RESERVATION_CONFIRMED' AND request_id = 'q3'")
    sync = sync_redis.Redis.from_url(redis_url, decode_responses=True)
    own(sync).flushall()
    report = await restore(engine.redis, pool, PARTITIONS, scratch_server=scratch_server)
    assert report.mismatches and report.keys == 0
    assert sync.keys("resv:*") == []
    sync.close()
