"""Resharding under load: a slot range holding partitions moves from one
primary to another (CLUSTER SETSLOT IMPORTING/MIGRATING, MIGRATE, SETSLOT
NODE: what `redis-cli --cluster reshard` does) while callers reserve
through the engine and an archiver drains into PostgreSQL. Callers see at
most a bounded number of retries (EngineUnavailable, retried with the same
request id); the audit holds every decision exactly once.

A cluster of its own (3 primaries, no replica: a move involves the primaries
only); nothing is timed.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections import Counter

import pytest

from resv.archiver.db import open_pool
from resv.archiver.drain import Archiver, drain_until_empty
from resv.archiver.metrics import ArchiverMetrics
from resv.archiver.settings import ArchiverSettings
from resv.embedded_cluster import EmbeddedCluster, slot_ranges
from resv.engine import Engine, EngineUnavailable, ResourceSpec, Settings, open_client
from resv.engine.cluster import partition_slots
from resv.engine.keys import partition_of
from resv.engine.settings import CLUSTER_PARTITIONS
from tests.cluster_support import crashed, raise_crashed, slot_of_resource, spread_ids, wait_until
from tests.history import Observation, check
from tests.report import record

pytestmark = pytest.mark.slow

MOVED = (0, 499)
"""The slot range that moves, from shard 0 to shard 2: it holds 8 of the
256 partitions (`resv partitions`). Each slot's move writes the cluster
configuration (fsync) on three nodes: some 8 ms a slot here."""
CAPACITY = 150
CALLERS = 8
PACE_S = 0.01
"""Each caller's pause between requests: the load stays a load, not a flood."""
GIVE_UP_S = 120.0
MAX_ATTEMPTS = 10
"""What a caller may need per request at most: a bounded retry."""


def resource_ids() -> tuple[list[str], list[str]]:
    """6 resources in the moving range, and 6 elsewhere (2 per shard)."""
    first, last = MOVED
    moving, i = [], 0
    while len(moving) < 6:
        rid = f"mv-{i}"
        i += 1
        if first <= slot_of_resource(rid, CLUSTER_PARTITIONS) <= last:
            moving.append(rid)
    staying = [rid for rid in spread_ids("st", 12, CLUSTER_PARTITIONS)
               if not first <= slot_of_resource(rid, CLUSTER_PARTITIONS) <= last][:6]
    return moving, staying


async def test_moving_a_slot_range_that_holds_partitions_under_load(database_url, pool, caplog):
    caplog.set_level(logging.WARNING, logger="resv.engine")
    moving, staying = resource_ids()
    rids = moving + staying
    moving_partitions = {p for p, s in enumerate(partition_slots(CLUSTER_PARTITIONS)) if MOVED[0] <= s <= MOVED[1]}
    assert {partition_of(rid, CLUSTER_PARTITIONS) for rid in moving} <= moving_partitions
    observations: list[Observation] = []
    attempts: Counter = Counter()
    decided_at: list[tuple[float, str]] = []
    stop = asyncio.Event()

    with EmbeddedCluster(replicas=0) as cluster:
        source, target = cluster.owner(slot_ranges(3)[0][0]), cluster.owner(slot_ranges(3)[2][0])
        assert cluster.owner(MOVED[1]) is source
        settings = Settings.from_env({"REDIS_URL": cluster.url})
        async with Engine(settings) as engine:
            assert engine.cluster and engine.settings.partitions == CLUSTER_PARTITIONS
            for rid in rids:
                await engine.create_resource(ResourceSpec(resource_id=rid, type="show", capacity=CAPACITY))
            redis, archiver_settings = await open_client(cluster.url, settings)
            archiver_pool = await open_pool(database_url, for_archiver=True, max_size=2, timeout=2.0)
            archiver = Archiver(redis, archiver_pool, archiver_settings.partitions,
                                ArchiverSettings(consumer="reshard"), ArchiverMetrics())

            async def caller(seed: int) -> None:
                rng = random.Random(seed)
                while not stop.is_set():
                    rid = rng.choice(rids)
                    request_id = uuid.uuid4().hex
                    answer = reservation_id = None
                    give_up = time.monotonic() + GIVE_UP_S
                    while time.monotonic() < give_up:
                        attempts[request_id] += 1
                        try:
                            d = await engine.reserve(rid, f"c-{request_id[:10]}", 1, request_id)
                        except EngineUnavailable:  # the engine's own re-sends ran out: the caller retries
                            await asyncio.sleep(0.1)
                            continue
                        answer, reservation_id = d.decision, getattr(d, "reservation_id", None)
                        decided_at.append((time.monotonic(), rid))
                        break
                    observations.append(Observation(request_id, rid, answer, reservation_id))
                    await asyncio.sleep(PACE_S)

            async def archive() -> None:
                while not stop.is_set():
                    await archiver.run_once()  # errors are logged and retried next round
                    await asyncio.sleep(0.05)

            callers = [asyncio.create_task(caller(seed)) for seed in range(CALLERS)]
            archiving = asyncio.create_task(archive())
            try:
                await wait_until(lambda: len(decided_at) >= 300 or crashed(callers), "300 decisions before the move")
                raise_crashed(callers)
                move_started = time.monotonic()
                moved = await asyncio.to_thread(cluster.move_slots, *MOVED, target)
                moved_at = time.monotonic()
                # the moved resources are decided again, on their new primary
                await wait_until(lambda: sum(1 for t, rid in decided_at if t > moved_at and rid in moving) >= 100
                                 or crashed(callers), "100 decisions on the moved resources after the move")
                raise_crashed(callers)
            finally:
                stop.set()
                await asyncio.gather(*callers)
                await archiving
            assert cluster.owner(MOVED[0]) is target and cluster.owner(MOVED[1]) is target
            states = {rid: await engine.resource(rid) for rid in rids}
            await drain_until_empty(archiver, timeout=60)
            await archiver_pool.close()
            await redis.aclose()

    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT fields FROM events WHERE resource_id = ANY(%s) ORDER BY partition, ms, seq", (rids,))
        audit = [fields for (fields,) in await cur.fetchall()]
        cur = await conn.execute("SELECT count(*), count(DISTINCT (partition, stream_id)) FROM events")
        rows, distinct = await cur.fetchone()
    report = check(observations, audit, {rid: CAPACITY for rid in rids})
    s = report.summary()
    redirected = sum(1 for r in caplog.records if "sent again to the slots' owners" in r.getMessage())
    figures = dict(requests=s["requests"], decisions=s["decisions"], keys_moved=moved,
                   slots_moved=MOVED[1] - MOVED[0] + 1, move_s=round(moved_at - move_started, 1), most_attempts_one_request=max(attempts.values()),
                   requests_retried_by_caller=sum(1 for n in attempts.values() if n > 1),
                   engine_resend_rounds=redirected)
    print(f"\nresharding: {figures}")
    record("cluster: 500 slots (8 partitions) moved between primaries under load", faults=1,
           requests=s["requests"], decisions=s["decisions"], lost=s["lost"], duplicated=s["duplicated"],
           overbooked=s["overbooked"])

    assert moved > 0
    assert all(o.decision is not None for o in observations)
    assert max(attempts.values()) <= MAX_ATTEMPTS, attempts.most_common(3)
    assert report.ok, s
    assert rows == distinct
    confirmed = Counter(e["resource_id"] for e in audit if e["type"] == "RESERVATION_CONFIRMED")
    assert all(states[rid].reserved == confirmed[rid] <= CAPACITY for rid in rids), (states, confirmed)
