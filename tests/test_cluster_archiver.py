"""The archiver and the audit tools on a Redis Cluster: every partition is
drained from whichever primary holds it, several archivers share the
partitions without duplicates, and verify and the timeline read the
cluster."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.asyncio.cluster import RedisCluster

from resv.archiver.db import open_pool
from resv.archiver.drain import Archiver, drain_until_empty
from resv.archiver.metrics import ArchiverMetrics
from resv.archiver.settings import ArchiverSettings
from resv.engine import Engine, Settings, open_client
from tests.archiver_support import archived_rows, create, entries_added, reserve_many, stream_entries

PARTITIONS = 16


@pytest.fixture
async def cluster_engine(redis_cluster_url: str):
    async with Engine(Settings(redis_url=redis_cluster_url, partitions=PARTITIONS)) as e:
        assert e.cluster
        yield e


@pytest.fixture
async def cluster_archivers(database_url: str, redis_cluster_url: str):
    made: list[tuple[Any, Any]] = []

    async def make(consumer: str) -> Archiver:
        redis, settings = await open_client(redis_cluster_url, Settings(partitions=PARTITIONS))
        assert isinstance(redis, RedisCluster)
        pool = await open_pool(database_url, for_archiver=True, max_size=2, timeout=2.0)
        made.append((redis, pool))
        return Archiver(redis, pool, settings.partitions, ArchiverSettings(consumer=consumer), ArchiverMetrics())

    yield make
    for redis, pool in made:
        await pool.close()
        await redis.aclose()


async def test_one_archiver_drains_every_partition_of_every_primary(cluster_engine, cluster_archivers, pool):
    rids = [f"arch-{i}" for i in range(20)]
    for rid in rids:
        await create(cluster_engine, rid, capacity=30)
    await reserve_many(cluster_engine, rids, 800)
    archiver = await cluster_archivers("solo")
    redis = archiver.redis
    entries = await stream_entries(redis)
    archived = await drain_until_empty(archiver)
    rows = await archived_rows(pool)
    assert archived == len(entries) == len(rows)
    assert set(rows) == set(entries)
    assert len({p for p, _ in rows}) == len({p for p, _ in entries}) > 8


async def test_three_archivers_share_the_partitions_without_duplicates(cluster_engine, cluster_archivers, pool):
    rids = [f"share-{i}" for i in range(20)]
    for rid in rids:
        await create(cluster_engine, rid, capacity=40)
    archivers = [await cluster_archivers(f"a{i}") for i in range(3)]
    load = asyncio.ensure_future(reserve_many(cluster_engine, rids, 1500, batch=100))

    async def keep_draining(a: Archiver) -> int:
        n = 0
        while not load.done():
            n += await a.run_once()
            await asyncio.sleep(0.01)
        return n + await drain_until_empty(a)

    counts = await asyncio.gather(*(keep_draining(a) for a in archivers))
    await load
    for a in archivers:
        await drain_until_empty(a)
    rows = await archived_rows(pool)
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT count(*), count(DISTINCT (partition, stream_id)) FROM events")
        total, distinct = await cur.fetchone()
    added = await entries_added(archivers[0].redis)
    assert total == distinct == len(rows) == sum(counts) == sum(added.values()) > 1500


async def test_verify_and_the_timeline_read_the_cluster(cluster_engine, cluster_archivers, pool):
    from resv.archiver.timeline import resource_timeline
    from resv.archiver.verify import verify
    from resv.scratch import scratch_server

    rids = [f"ver-{i}" for i in range(12)]
    for rid in rids:
        await create(cluster_engine, rid, capacity=40)
    decisions = await reserve_many(cluster_engine, rids, 300)
    archiver = await cluster_archivers("v")
    await drain_until_empty(archiver)
    await reserve_many(cluster_engine, rids[:3], 30, prefix="late")  # still only in the streams
    live = archiver.redis
    report = await verify(live, pool, PARTITIONS, scratch_server=scratch_server)
    assert report.ok, report.mismatches[:5]
    assert report.resources == len(rids) and report.events >= 300 + len(rids)

    rid = rids[0]
    seen, after = [], None
    while True:
        page = await resource_timeline(live, pool, rid, PARTITIONS, after=after, limit=20)
        seen += page.events
        if page.next is None:
            break
        after = page.next
    confirmed = sum(1 for d in decisions if d.confirmed and d.reservation_id.startswith(rid + "~"))
    types = [e.type for e in seen]
    assert types[0] == "RESOURCE_CREATED"
    assert types.count("RESERVATION_CONFIRMED") == confirmed + 10 and len(seen) == 1 + 25 + 10
