"""`make bench-engine`: reservation commits per second, side by side in one run.

Rows (each on a fresh resource with ample capacity, so every call confirms):
- redis-py pipeline: the reference, batches of 500 FCALLs sent by one
  redis-py Pipeline, no Python per-call work but building the command (the
  server idles while the client parses a batch and builds the next);
- engine, one call at a time: `await engine.reserve()` in a loop;
- engine, N concurrent callers: the engine coalesces their calls into pipelines;
- one connection per caller: 50 clients, one call in flight each, no batching;
- minimal booking script: the floor for the commit itself, a tiny function
  library of its own (`bench_book`: HMGET, TIME, HINCRBY, HSET, XADD, no
  other rule) sent like the reference row.
Then the waiting list (issue 14): server time per call (INFO commandstats) of
a join, a cancel that notifies one entry, a cancel that notifies nobody (the
seats it frees are promised to outstanding notifications) and a walk-in
reservation, with 0, 100, 10,000 and 100,000 entries waiting (quantities 1-4
in turn), against a reservation and a cancel on a resource whose waiting list
is empty.
Then the cluster rows (benchmarks/engine_cluster.py, issue 12): the same
load on a single server, a 1-shard and a 3-shard cluster, per shard its
CPU time per commit.
Each row is run 3 times, the rows taking turns; the median is printed, with
its ratio to the reference, how busy the server was (its CPU time over the
wall time, from INFO cpu: near 100%, the server is the ceiling and the client
keeps up), and the server's microseconds per FCALL (INFO commandstats, reset
before each run), whose ratio to the minimal script's is issue 13's target
for resv_reserve (<= 1.5x).
Uses an embedded Valkey (AOF off, like a benchmark of the CPU path; AOF
always is measured in the last row) unless REDIS_URL is set.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
import uuid

import redis.asyncio as aioredis

from resv.embedded import EmbeddedRedis
from resv.engine import Engine, ResourceSpec, Settings, keys, library_source

CALLS = int(os.environ.get("BENCH_CALLS", "20000"))
PARTITIONS = 16
TARGET = 1.5
"""resv_reserve's server time per call over the minimal script's (issue 13)."""

MINIMAL_LIBRARY = """#!lua name=resvbench
-- The floor for a booking commit: read capacity and reserved, read the
-- clock, count the quantity, store the booking, append the decision.
redis.register_function('bench_book', function(keys, args)
  local r = redis.call('HMGET', keys[1], 'capacity', 'reserved')
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local qty = tonumber(args[2])
  if (tonumber(r[2]) or 0) + qty > tonumber(r[1]) then return {'REJECTED'} end
  redis.call('HINCRBY', keys[1], 'reserved', qty)
  redis.call('HSET', keys[2], args[3], args[1])
  redis.call('XADD', keys[3], '*', 'type', 'RESERVATION_CONFIRMED', 'client_id', args[1],
             'quantity', args[2], 'request_id', args[3], 'ts', tostring(now))
  return {'CONFIRMED', tostring(now)}
end)
"""


async def fresh_resource(engine: Engine) -> str:
    rid = "bench-" + uuid.uuid4().hex[:10]
    await engine.create_resource(ResourceSpec(resource_id=rid, type="bench", capacity=10**9))
    return rid


async def raw_pipelined(url: str, engine: Engine) -> float:
    rid = await fresh_resource(engine)
    r = aioredis.Redis.from_url(url, decode_responses=True)
    start = time.perf_counter()
    for base in range(0, CALLS, 500):
        pipe = r.pipeline(transaction=False)
        for i in range(base, min(base + 500, CALLS)):
            rq = f"r{i}"
            ks = keys.reserve_keys(rid, rq, PARTITIONS)
            pipe.execute_command("FCALL", "resv_reserve", len(ks), *ks, rid, f"c{i}", "1", rq)
        await pipe.execute()
    elapsed = time.perf_counter() - start
    await r.aclose()
    return CALLS / elapsed


async def minimal_script(url: str, engine: Engine) -> float:
    r = aioredis.Redis.from_url(url, decode_responses=True)
    await r.function_load(MINIMAL_LIBRARY, replace=True)
    tag = "bench-" + uuid.uuid4().hex[:10]
    ks = [f"resv:{{p0}}:res:{tag}", f"resv:{{p0}}:bk:{tag}", "resv:{p0}:benchevents"]
    await r.hset(ks[0], mapping={"capacity": 10**9, "reserved": 0})
    start = time.perf_counter()
    for base in range(0, CALLS, 500):
        pipe = r.pipeline(transaction=False)
        for i in range(base, min(base + 500, CALLS)):
            pipe.execute_command("FCALL", "bench_book", 3, *ks, f"c{i}", "1", f"r{i}")
        await pipe.execute()
    elapsed = time.perf_counter() - start
    await r.aclose()
    return CALLS / elapsed


async def engine_sequential(url: str, engine: Engine) -> float:
    rid = await fresh_resource(engine)
    n = CALLS // 4
    start = time.perf_counter()
    for i in range(n):
        await engine.reserve(rid, f"c{i}", 1)
    return n / (time.perf_counter() - start)


async def engine_concurrent(url: str, engine: Engine, callers: int) -> float:
    rid = await fresh_resource(engine)
    per = CALLS // callers

    async def caller(c: int):
        for i in range(per):
            await engine.reserve(rid, f"c{c}-{i}", 1)

    start = time.perf_counter()
    await asyncio.gather(*(caller(c) for c in range(callers)))
    return per * callers / (time.perf_counter() - start)


async def connection_per_caller(url: str, engine: Engine, callers: int = 50) -> float:
    rid = await fresh_resource(engine)
    settings = Settings(redis_url=url, partitions=PARTITIONS, max_connections=1)
    engines = [Engine(settings) for _ in range(callers)]
    per = CALLS // callers

    async def caller(c: int):
        for i in range(per):
            await engines[c].reserve(rid, f"c{c}-{i}", 1)

    start = time.perf_counter()
    await asyncio.gather(*(caller(c) for c in range(callers)))
    rate = per * callers / (time.perf_counter() - start)
    for e in engines:
        await e.aclose()
    return rate


async def measure(url: str, label: str, fn, *args) -> tuple[str, float, float, float]:
    """One run: (label, commits/s, the server's busy fraction, server us per FCALL)."""
    info = aioredis.Redis.from_url(url)
    async with Engine(Settings(redis_url=url, partitions=PARTITIONS)) as engine:
        await info.config_resetstat()
        cpu, start = await server_cpu(info), time.perf_counter()
        rate = await fn(url, engine, *args)
        busy = (await server_cpu(info) - cpu) / (time.perf_counter() - start)
        stats = await info.info("commandstats")
    await info.aclose()
    fcall = stats.get("cmdstat_fcall", {})
    return label, rate, busy, float(fcall.get("usec_per_call", 0.0))


def median_row(runs: list[tuple[str, float, float, float]]) -> tuple[str, float, float, float]:
    return sorted(runs, key=lambda run: run[1])[len(runs) // 2]


async def server_cpu(client: aioredis.Redis) -> float:
    cpu = await client.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


# ----------------------------------------------------------- waiting list

WAITING = (0, 100, 10_000, 100_000)
PER_BATCH = 100  # calls per measured batch; server time is averaged over them
ROUNDS = 5       # batches per row; the median is printed


class Calls:
    """Pipelined FCALLs on one resource, with the keys each function takes."""

    def __init__(self, r: aioredis.Redis, rid: str) -> None:
        self.r, self.rid = r, rid
        self.write = keys.write_keys(rid, PARTITIONS)
        self.n = 0

    def reserve(self, pipe, client: str, qty: int = 1) -> None:
        self.n += 1
        rq = f"b{self.n}"
        ks = keys.reserve_keys(self.rid, rq, PARTITIONS)
        pipe.execute_command("FCALL", "resv_reserve", len(ks), *ks, self.rid, client, str(qty), rq)

    def fcall(self, pipe, function: str, *args: str) -> None:
        pipe.execute_command("FCALL", function, len(self.write), *self.write, self.rid, *args)

    async def run(self, add) -> list:
        """Sends what `add(pipe)` queues, in one pipeline; returns the replies."""
        async with self.r.pipeline(transaction=False) as pipe:
            add(pipe)
            return await pipe.execute()

    async def server_us(self, add) -> tuple[float, float]:
        """Per FCALL of what `add(pipe)` queues: the server's time in the call
        (INFO commandstats, wall clock: it counts the time the server thread
        waits for a core on a loaded machine) and the server's CPU time (INFO
        cpu, which does not)."""
        await self.r.config_resetstat()
        cpu = await server_cpu(self.r)
        replies = await self.run(add)
        cpu = await server_cpu(self.r) - cpu
        stats = (await self.r.info("commandstats"))["cmdstat_fcall"]
        assert stats["calls"] == len(replies), (stats, len(replies))
        return stats["usec"] / stats["calls"], cpu * 1e6 / stats["calls"]


async def waitlist_resource(r: aioredis.Redis, capacity: int, waitlist: bool = True) -> Calls:
    rid = "wl-" + uuid.uuid4().hex[:10]
    calls = Calls(r, rid)
    await calls.run(lambda p: calls.fcall(p, "resv_create", "bench", str(capacity), "", "",
                                          "1" if waitlist else "0", "", ""))
    return calls


async def waitlist_rows(url: str) -> tuple[tuple[float, float], tuple[float, float], list]:
    """((reserve, cancel) on an empty list, as (commandstats us, CPU us)),
    and per list length: join, cancel notifying 1, cancel notifying nobody,
    walk-in reserve, each (commandstats us, CPU us), medians of ROUNDS."""
    r = aioredis.Redis.from_url(url, decode_responses=True)
    await r.execute_command("FUNCTION", "LOAD", "REPLACE", library_source())

    def median(xs: list[tuple[float, float]]) -> tuple[float, float]:
        return (sorted(x[0] for x in xs)[len(xs) // 2], sorted(x[1] for x in xs)[len(xs) // 2])

    # the reference: a reservation and a cancel with nothing waiting
    base = await waitlist_resource(r, 10**6)
    reserve_us, cancel_us = [], []
    for k in range(ROUNDS):
        reserve_us.append(await base.server_us(
            lambda p: [base.reserve(p, f"x{k}-{i}") for i in range(PER_BATCH)]))
        first = base.n - PER_BATCH + 1
        cancel_us.append(await base.server_us(
            lambda p: [base.fcall(p, "resv_cancel", f"{base.rid}~{first + i}") for i in range(PER_BATCH)]))
    rows = []
    for waiting in WAITING:
        # full: `held` reservations of 1, then `waiting` entries (quantities 1-4)
        held = ROUNDS * 2 * PER_BATCH
        c = await waitlist_resource(r, held)
        await c.run(lambda p: [c.reserve(p, f"h{i}") for i in range(held)])
        for start in range(0, waiting, 5000):
            await c.run(lambda p: [c.fcall(p, "resv_wl_join", f"w{i}", str(i % 4 + 1))
                                   for i in range(start, min(start + 5000, waiting))])
        held_ids = iter(f"{c.rid}~{i}" for i in range(1, held + 1))
        join, notifies, nobody, walk_in = [], [], [], []
        for k in range(ROUNDS):
            # joins (of 1, so every round has entries a freed seat fits)
            join.append(await c.server_us(
                lambda p: [c.fcall(p, "resv_wl_join", f"j{k}-{i}", "1") for i in range(PER_BATCH)]))
            # each cancel frees 1 seat: the earliest entry of 1 is notified
            batch = [next(held_ids) for _ in range(PER_BATCH)]
            notifies.append(await c.server_us(lambda p: [c.fcall(p, "resv_cancel", b) for b in batch]))
            # walk-ins take the freed seats (a notification grants no right)
            walk_in.append(await c.server_us(lambda p: [c.reserve(p, f"v{k}-{i}") for i in range(PER_BATCH)]))
            # now every seat a cancel frees is promised to an outstanding notification
            batch = [next(held_ids) for _ in range(PER_BATCH)]
            nobody.append(await c.server_us(lambda p: [c.fcall(p, "resv_cancel", b) for b in batch]))
        rows.append((waiting, median(join), median(notifies), median(nobody), median(walk_in)))
    await r.aclose()
    return median(reserve_us), median(cancel_us), rows


def print_waitlist(reserve: tuple[float, float], cancel: tuple[float, float], rows: list) -> None:
    print(f"\nwaiting list: us of server time per FCALL, medians of {ROUNDS} batches of {PER_BATCH}: "
          "INFO commandstats (wall) / INFO cpu (CPU); ratios on CPU time\n")
    print(f"reference, empty waiting list: reserve {reserve[0]:.1f} / {reserve[1]:.1f}, "
          f"cancel {cancel[0]:.1f} / {cancel[1]:.1f}\n")
    print("| waiting | join | cancel, notifies 1 | cancel, notifies nobody | walk-in reserve "
          "| join / reserve | cancel / cancel on empty list |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for waiting, join, notifies, nobody, walk_in in rows:
        cells = [f"{x[0]:.1f} / {x[1]:.1f}" for x in (join, notifies, nobody, walk_in)]
        worst = max(notifies[1], nobody[1]) / cancel[1]
        print(f"| {waiting:,} | " + " | ".join(cells) + f" | {join[1] / reserve[1]:.2f} | {worst:.2f} |")


REFERENCE = "redis-py pipeline, 500 per round trip (reference)"
MINIMAL = "minimal booking script (HMGET, TIME, HINCRBY, HSET, XADD), pipeline 500"


async def main() -> None:
    rows = [(REFERENCE, raw_pipelined, ()), (MINIMAL, minimal_script, ()),
            ("engine, 1 call at a time", engine_sequential, ())]
    rows += [(f"engine, {callers} concurrent callers", engine_concurrent, (callers,)) for callers in (16, 64, 256)]
    rows.append(("50 connections, 1 call in flight each", connection_per_caller, ()))
    runs: dict[str, list] = {label: [] for label, _, _ in rows}
    with EmbeddedRedis(appendfsync="no", extra_args=["--appendonly", "no"]) as server:
        url = os.environ.get("REDIS_URL") or server.url
        for _ in range(3):  # rows take turns: background load falls on all of them alike
            for label, fn, args in rows:
                runs[label].append(await measure(url, label, fn, *args))
    durable_label = "engine, 256 callers, AOF always"
    with EmbeddedRedis() as durable:  # AOF, appendfsync always
        runs[durable_label] = [await measure(durable.url, durable_label, engine_concurrent, 256) for _ in range(3)]
    with EmbeddedRedis(appendfsync="no", extra_args=["--appendonly", "no"]) as server:
        waitlist = await waitlist_rows(os.environ.get("REDIS_URL") or server.url)
    table = [median_row(r) for r in runs.values()]
    reference = table[0][1]
    floor = statistics.median(run[3] for run in runs[MINIMAL])
    print(f"\nreserve commits/s, median of 3 runs of {CALLS} calls, rows taking turns (1 process, "
          f"{os.cpu_count()}-core machine); server us/FCALL from INFO commandstats, x minimal = over the "
          f"minimal booking script's (target for resv_reserve <= {TARGET}x)\n")
    print("| setup | commits/s | vs reference | server busy | server us/FCALL | x minimal |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, rate, busy, per_call in table:
        us = statistics.median(run[3] for run in runs[label])
        ratio = "1" if label == MINIMAL else f"{us / floor:.2f}x"
        print(f"| {label} | {rate:,.0f} | {rate / reference:.0%} | {busy:.0%} | {us:.1f} | {ratio} |")
    print_waitlist(*waitlist)


if __name__ == "__main__":
    asyncio.run(main())
    from benchmarks import engine_cluster  # its own event loops (and processes)

    engine_cluster.main()
