"""The cluster rows of `make bench-engine` (issue 12): reservation commits on
a Redis Cluster of embedded Valkey nodes (no replica, AOF off: the CPU path,
like the single-server rows), 1 shard and 3 shards, through `engine.Engine`
(one lane per primary).

Rows: a single server (no cluster) for comparison, then 256 concurrent callers in one Python process over 24 resources spread
evenly over the shards; then the same load from 2 processes (each its own
engine and 128 callers), to see whether one client process was the ceiling.
Per shard: the commits it ran, its CPU time over the load's wall time (INFO
cpu: near 100%, the shard is the ceiling; the engines' start is counted in
the CPU time, not in the wall time, a few ms), its CPU time per commit (INFO
cpu over the FCALLs it ran: everything the server spent, reading,
parsing, the function, replying), and the time inside FCALL per call (INFO
commandstats, wall clock). Each row 3 runs, rows taking turns; medians.

`python -m benchmarks.engine_cluster` runs these rows alone.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import statistics
import time
import uuid
from typing import Any

import redis

from resv.embedded import EmbeddedRedis
from resv.embedded_cluster import EmbeddedCluster, slot_ranges
from resv.engine import Engine, ResourceSpec, Settings, keys
from resv.engine.cluster import slot_of
from resv.engine.settings import CLUSTER_PARTITIONS

CALLS = int(os.environ.get("BENCH_CALLS", "20000"))
RESOURCES = 24
CALLERS = 256
ROUNDS = 3


def spread(tag: str, shards: int) -> list[str]:
    """RESOURCES resource ids, the same number on each shard of a fresh cluster."""
    ranges = slot_ranges(shards)
    per = RESOURCES // shards
    by_shard: list[list[str]] = [[] for _ in ranges]
    i = 0
    while any(len(ids) < per for ids in by_shard):
        rid = f"{tag}-{i}"
        i += 1
        slot = slot_of(keys.resource_keys(rid, CLUSTER_PARTITIONS)[0])
        ids = by_shard[next(s for s, (a, b) in enumerate(ranges) if a <= slot <= b)]
        if len(ids) < per:
            ids.append(rid)
    return [rid for ids in by_shard for rid in ids]


def settings(url: str, mode: str) -> Settings:
    """mode: RESV_REDIS_CLUSTER (on for a cluster, off for the single server)."""
    return Settings(redis_url=url, partitions=CLUSTER_PARTITIONS, cluster=mode)


class Single:
    """One server, not a cluster, with the cluster's interface here: the
    same load with no cluster at all, for comparison."""

    mode = "off"

    def __init__(self) -> None:
        self.server = EmbeddedRedis(appendfsync="no", extra_args=["--appendonly", "no"])

    @property
    def url(self) -> str:
        return self.server.url

    def start(self) -> Single:
        self.server.start()
        return self

    def primary_nodes(self) -> list[EmbeddedRedis]:
        return [self.server]

    def client(self, node: EmbeddedRedis) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=node.port, decode_responses=True)

    def close(self) -> None:
        self.server.close()


def mode_of(target: Any) -> str:
    return getattr(target, "mode", "on")


async def create(url: str, mode: str, rids: list[str]) -> None:
    async with Engine(settings(url, mode)) as engine:
        for rid in rids:
            await engine.create_resource(ResourceSpec(resource_id=rid, type="bench", capacity=10**9))


async def load(url: str, mode: str, rids: list[str], callers: int, calls: int, tag: str) -> tuple[int, float]:
    """`calls` reservations from `callers` concurrent callers, each over the
    resources in turn; (calls made, seconds)."""
    async with Engine(settings(url, mode)) as engine:
        await asyncio.gather(*(engine.resource(rid) for rid in rids))  # every lane open
        per = calls // callers

        async def caller(c: int) -> None:
            for i in range(per):
                await engine.reserve(rids[(c + i) % len(rids)], f"{tag}{c}-{i}", 1)

        start = time.perf_counter()
        await asyncio.gather(*(caller(c) for c in range(callers)))
        return per * callers, time.perf_counter() - start


def _child(url, mode, rids, callers, calls, tag, ready, go, out) -> None:
    async def run() -> tuple[int, float]:
        async with Engine(settings(url, mode)) as engine:  # imports and library check done before the start
            await asyncio.gather(*(engine.resource(rid) for rid in rids))
        ready.set()
        go.wait()
        return await load(url, mode, rids, callers, calls, tag)

    out.put(asyncio.run(run()))


def processes_load(url: str, mode: str, rids: list[str], processes: int) -> tuple[int, float]:
    """The same load from `processes` processes, started together."""
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    go = ctx.Event()
    readies, procs = [], []
    for n in range(processes):
        ready = ctx.Event()
        p = ctx.Process(target=_child, args=(url, mode, rids, CALLERS // processes, CALLS // processes,
                                              f"p{n}-{uuid.uuid4().hex[:6]}-", ready, go, out))
        p.start()
        readies.append(ready)
        procs.append(p)
    for ready in readies:
        ready.wait(120)
    go.set()
    results = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(30)
    # the processes start together; the slowest one's time is the run's
    return sum(n for n, _ in results), max(s for _, s in results)


def node_stats(cluster: EmbeddedCluster) -> dict[int, tuple[float, int, float]]:
    """Per primary (by port): (CPU seconds, FCALLs, usec in FCALL)."""
    out = {}
    for node in cluster.primary_nodes():
        c = cluster.client(node)
        try:
            cpu = c.info("cpu")
            fcall = c.info("commandstats").get("cmdstat_fcall", {})
            out[node.port] = (float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]),
                              int(fcall.get("calls", 0)), float(fcall.get("usec", 0)))
        finally:
            c.close()
    return out


def reset(cluster: EmbeddedCluster) -> None:
    for node in cluster.primary_nodes():
        c = cluster.client(node)
        try:
            c.config_resetstat()
        finally:
            c.close()


def measure(cluster: EmbeddedCluster, rids: list[str], processes: int) -> dict[str, Any]:
    reset(cluster)
    before = node_stats(cluster)
    if processes == 1:
        calls, seconds = asyncio.run(load(cluster.url, mode_of(cluster), rids, CALLERS, CALLS,
                                          f"r{uuid.uuid4().hex[:6]}-"))
    else:
        calls, seconds = processes_load(cluster.url, mode_of(cluster), rids, processes)
    after = node_stats(cluster)
    shards = []
    for port in sorted(after):
        cpu = after[port][0] - before[port][0]
        n, usec = after[port][1], after[port][2]  # reset before the run
        shards.append({"commits": n, "busy": cpu / seconds, "cpu_us": cpu * 1e6 / n if n else 0.0,
                       "fcall_us": usec / n if n else 0.0})
    return {"rate": calls / seconds, "shards": shards}


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return sorted(runs, key=lambda r: r["rate"])[len(runs) // 2]


def rows() -> list[tuple[str, dict[str, Any]]]:
    setups = [(0, 1), (1, 1), (3, 1), (3, 2)]  # (shards, client processes); 0: a single server
    labels = {(0, 1): "single server (no cluster), 256 callers, 1 process",
              (1, 1): "cluster, 1 shard, 256 callers, 1 process",
              (3, 1): "cluster, 3 shards, 256 callers, 1 process",
              (3, 2): "cluster, 3 shards, 2 processes of 128 callers"}
    started: list[Any] = []
    ready: dict[int, tuple[Any, list[str]]] = {}
    out: dict[tuple[int, int], list[dict[str, Any]]] = {s: [] for s in setups}
    try:
        for shards in sorted({s for s, _ in setups}):
            cluster = Single() if shards == 0 else EmbeddedCluster(
                primaries=shards, replicas=0, appendfsync="no", extra_args=["--appendonly", "no"])
            started.append(cluster)
            cluster.start()
            rids = spread(f"cb{shards}", max(shards, 1))
            asyncio.run(create(cluster.url, mode_of(cluster), rids))
            ready[shards] = (cluster, rids)
        for _ in range(ROUNDS):  # rows take turns: background load falls on all of them alike
            for shards, processes in setups:
                cluster, rids = ready[shards]
                out[(shards, processes)].append(measure(cluster, rids, processes))
    finally:
        for cluster in started:
            cluster.close()
    return [(labels[s], median_run(out[s])) for s in setups]


def print_rows(table: list[tuple[str, dict[str, Any]]]) -> None:
    print(f"\ncluster: reserve commits/s, median of {ROUNDS} runs of {CALLS} calls over {RESOURCES} resources "
          f"spread evenly over the shards ({os.cpu_count()}-core machine); per shard: commits, CPU busy "
          "(INFO cpu over the wall time), CPU us per commit (INFO cpu / FCALLs), us in FCALL (INFO commandstats)\n")
    print("| setup | commits/s | per shard: commits, busy, CPU us/commit, us in FCALL |")
    print("|---|---:|---|")
    for label, run in table:
        cells = "; ".join(f"{s['commits']:,}, {s['busy']:.0%}, {s['cpu_us']:.1f}, {s['fcall_us']:.1f}"
                          for s in run["shards"])
        print(f"| {label} | {run['rate']:,.0f} | {cells} |")
    cpu = statistics.median(s["cpu_us"] for _, run in table for s in run["shards"] if s["commits"])
    print(f"\nmedian server CPU per commit per shard: {cpu:.1f} us, so one shard's core at 100% is about "
          f"{1e6 / cpu:,.0f} commits/s on this machine")


def main() -> None:
    print_rows(rows())


if __name__ == "__main__":
    main()
