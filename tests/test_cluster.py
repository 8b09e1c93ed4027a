"""The engine on a Redis Cluster (the session cluster of tests/conftest.py:
3 primaries, one replica each): found by itself, one lane per primary,
the library on every primary, redirects followed."""

from __future__ import annotations

import asyncio

import pytest
import redis

from resv.engine import Engine, ResourceSpec, Settings, keys
from resv.engine.cluster import partition_slots, slot_of
from resv.engine.library import library_source
from resv.engine.settings import CLUSTER_PARTITIONS
from tests.support import PARTITIONS


def test_the_mode_setting():
    assert Settings.from_env({}).cluster == "auto"
    assert Settings.from_env({"RESV_REDIS_CLUSTER": "ON"}).cluster == "on"
    with pytest.raises(ValueError, match="RESV_REDIS_CLUSTER"):
        Settings.from_env({"RESV_REDIS_CLUSTER": "maybe"})
    assert not Settings.from_env({}).partitions_set
    assert Settings.from_env({"RESV_PARTITIONS": "16"}).for_cluster().partitions == 16
    assert Settings.from_env({}).for_cluster().partitions == CLUSTER_PARTITIONS


def test_the_cluster_default_spreads_the_partitions_evenly():
    """With the slots split in 3 even ranges, each shard holds within 10%
    of a third of the partitions (docs/scaling.md)."""
    ranges = [(0, 5460), (5461, 10922), (10923, 16383)]
    per_shard = [sum(first <= s <= last for s in partition_slots(CLUSTER_PARTITIONS)) for first, last in ranges]
    assert sum(per_shard) == CLUSTER_PARTITIONS
    assert all(abs(n - CLUSTER_PARTITIONS / 3) <= CLUSTER_PARTITIONS / 30 for n in per_shard), per_shard


def primaries(cluster) -> list[redis.Redis]:
    return [cluster.client(node) for node in cluster.primary_nodes()]


async def test_auto_finds_the_cluster_and_loads_the_library_on_every_primary(redis_cluster, redis_cluster_url):
    for c in primaries(redis_cluster):
        c.execute_command("FUNCTION", "FLUSH")
        c.close()
    async with Engine(Settings.from_env({"REDIS_URL": redis_cluster_url})) as engine:
        assert engine.cluster is True
        assert engine.settings.partitions == CLUSTER_PARTITIONS
        assert len(engine._pipe.nodes) == 3
        for c in primaries(redis_cluster):
            assert c.execute_command("FCALL_RO", "resv_version", 0)
            c.close()
        assert await engine.library_ready()


async def test_off_and_auto_on_one_server(redis_url):
    async with Engine(Settings(redis_url=redis_url, partitions=PARTITIONS)) as engine:
        assert engine.cluster is False
    async with Engine(Settings(redis_url=redis_url, partitions=PARTITIONS, cluster="off")) as engine:
        assert engine.cluster is False
        await engine.create_resource(ResourceSpec(resource_id="one", type="meetup", capacity=1))
        assert (await engine.reserve("one", "c", 1)).confirmed


async def spread(engine: Engine, n: int = 20, capacity: int = 10) -> list[str]:
    rids = [f"spread-{i}" for i in range(n)]
    for rid in rids:
        await engine.create_resource(ResourceSpec(resource_id=rid, type="meetup", capacity=capacity))
    return rids


def fcalls(cluster) -> dict[int, int]:
    """FCALLs each primary ran so far (INFO commandstats), by port."""
    out = {}
    for node in cluster.primary_nodes():
        c = cluster.client(node)
        out[node.port] = int(c.info("commandstats").get("cmdstat_fcall", {}).get("calls", 0))
        c.close()
    return out


async def test_every_primary_carries_calls_on_its_own_lane(redis_cluster, redis_cluster_url):
    async with Engine(Settings(redis_url=redis_cluster_url, partitions=PARTITIONS)) as engine:
        rids = await spread(engine)
        before = fcalls(redis_cluster)
        results = await asyncio.gather(*(engine.reserve(rids[i % 20], f"c{i}", 1) for i in range(400)))
        after = fcalls(redis_cluster)
        lanes = {name: p._lane is not None and p._lane.ready for name, p in engine._pipe.nodes.items()}
    assert sum(d.confirmed for d in results) == 200
    assert all(after[port] > before[port] for port in after), (before, after)
    assert all(lanes.values()), lanes


async def test_a_call_sent_to_the_wrong_primary_follows_the_redirect(redis_cluster_url):
    async with Engine(Settings(redis_url=redis_cluster_url, partitions=PARTITIONS)) as engine:
        rid = "moved"
        await engine.create_resource(ResourceSpec(resource_id=rid, type="meetup", capacity=5))
        slot = slot_of(keys.resource_keys(rid, PARTITIONS)[0])
        owner = engine._pipe._owner(slot)
        wrong = next(p for p in engine._pipe.nodes.values() if p is not owner)
        engine._pipe._routes[slot] = wrong  # a stale route: the node answers MOVED
        d = await engine.reserve(rid, "alice", 2, "r-1")
        assert d.confirmed
        assert engine._pipe._routes[slot] in (None, owner)
        again = await engine.reserve(rid, "alice", 2, "r-1")
        assert again.replayed and again.reservation_id == d.reservation_id
        assert (await engine.resource(rid)).reserved == 2


async def test_function_not_found_on_one_primary_loads_it_there(redis_cluster, redis_cluster_url):
    async with Engine(Settings(redis_url=redis_cluster_url, partitions=PARTITIONS)) as engine:
        rids = await spread(engine, 6)
        flushed = primaries(redis_cluster)[1]
        flushed.execute_command("FUNCTION", "FLUSH")
        results = await asyncio.gather(*(engine.reserve(rid, "c", 1) for rid in rids))
        assert all(d.confirmed for d in results)
        assert flushed.execute_command("FUNCTION", "LIST", "LIBRARYNAME", "resv")
        flushed.close()


async def test_the_guard_knows_every_primary(redis_cluster, redis_cluster_url):
    run_ids = set()
    for c in primaries(redis_cluster):
        run_ids.add(c.info("server")["run_id"])
        c.close()
    async with Engine(Settings(redis_url=redis_cluster_url, partitions=PARTITIONS, durability="strict")) as engine:
        assert await engine.check_guard(None) is None
        assert engine._checked_run_ids == run_ids
        assert engine.state.deployment_id
        records = [c.hgetall(keys.deployment_key(p)) for p in range(PARTITIONS)
                   for c in [redis.RedisCluster.from_url(redis_cluster_url, decode_responses=True)]]
        assert all(r.get("partitions") == str(PARTITIONS) for r in records)


async def test_every_primary_runs_this_release(redis_cluster, redis_cluster_url):
    async with Engine(Settings(redis_url=redis_cluster_url, partitions=PARTITIONS)):
        for c in primaries(redis_cluster):
            listing = c.execute_command("FUNCTION", "LIST", "LIBRARYNAME", "resv", "WITHCODE")
            assert [lib["library_code"] for lib in listing] == [library_source()]
            c.close()


def test_resv_partitions_prints_each_partitions_slot(capsys):
    from resv.cli import main
    from resv.embedded_cluster import slot_ranges

    assert main(["partitions", "--partitions", "16", "--shards", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    slots = partition_slots(16)
    assert lines[:16] == [f"p{p}\tslot {s}\tshard {next(i for i, (a, b) in enumerate(slot_ranges(3)) if a <= s <= b)}"
                          for p, s in enumerate(slots)]
    assert slots[0] == slot_of("resv:{p0}:events")
    counts = [int(line.split(": ")[2].split()[0]) for line in lines[16:]]
    assert counts == [4, 5, 7]
