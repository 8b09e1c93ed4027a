"""`resv serve` on a Redis Cluster (the session cluster: 3 primaries, one
replica each), many concurrent clients over HTTP: never overbooked, no 5xx,
every shard carries its resources' commits."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import httpx
import pytest

from resv.engine.settings import CLUSTER_PARTITIONS
from resv.embedded_cluster import slot_ranges
from tests.cluster_support import fcalls, shards_taken, spread_ids
from tests.procs import CLIENT_KEY, OPERATOR_KEY, resv_serve

OP = {"Authorization": f"Bearer {OPERATOR_KEY}"}
CL = {"Authorization": f"Bearer {CLIENT_KEY}"}

pytestmark = pytest.mark.slow

RESOURCES = 20
SEATS = 100
PER_RESOURCE = 2 * SEATS


async def test_4000_concurrent_reservations_over_http_for_100_seats_on_each_of_20_resources(
        redis_cluster, redis_cluster_url):
    """Twice as many requests as seats, all in flight together, in a random
    order: each resource confirms exactly its 100 seats."""
    rids = spread_ids("hall", RESOURCES, CLUSTER_PARTITIONS)
    per_shard = shards_taken(rids, CLUSTER_PARTITIONS)
    assert set(per_shard) == {0, 1, 2}
    order = [rid for rid in rids for _ in range(PER_RESOURCE)]
    random.Random(12).shuffle(order)
    before = fcalls(redis_cluster)
    # RESV_PARTITIONS unset: the cluster's default, 256
    with resv_serve(redis_cluster_url, workers=2) as base:
        limits = httpx.Limits(max_connections=128, max_keepalive_connections=128)
        async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as http:
            for rid in rids:
                created = await http.post("/resources", headers=OP,
                                          json={"resource_id": rid, "type": "hall", "capacity": SEATS})
                assert created.status_code == 201, created.text

            async def attempt(n: int, rid: str) -> tuple[str, httpx.Response]:
                return rid, await http.post("/reservations", headers={**CL, "Idempotency-Key": f"k{n}"},
                                            json={"resource_id": rid, "quantity": 1, "client_id": f"fan-{n}"})

            answers = await asyncio.gather(*(attempt(n, rid) for n, rid in enumerate(order)))
            states = {rid: (await http.get(f"/resources/{rid}", headers=OP)).json() for rid in rids}
    after = fcalls(redis_cluster)

    statuses = Counter(r.status_code for _, r in answers)
    assert statuses == {201: RESOURCES * SEATS, 409: RESOURCES * (PER_RESOURCE - SEATS)}, statuses
    confirmed = Counter(rid for rid, r in answers if r.status_code == 201)
    assert confirmed == {rid: SEATS for rid in rids}
    assert {r.json()["code"] for _, r in answers if r.status_code == 409} == {"RESOURCE_FULL"}
    assert len({r.json()["reservation_id"] for _, r in answers if r.status_code == 201}) == RESOURCES * SEATS
    assert all((s["reserved"], s["remaining"], s["status"]) == (SEATS, 0, "FULL") for s in states.values()), states

    # every shard took its resources' commits (200 reservations each), on its own primary
    for shard, (first, _) in enumerate(slot_ranges(3)):
        port = redis_cluster.owner(first).port
        assert after[port] - before[port] >= per_shard[shard] * PER_RESOURCE, (shard, before, after)
