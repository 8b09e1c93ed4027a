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
from resv.engine import Engine, ResourceSpec, Settings, keys

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
    ks = keys.resource_keys(rid, PARTITIONS)
    start = time.perf_counter()
    for base in range(0, CALLS, 500):
        pipe = r.pipeline(transaction=False)
        for i in range(base, min(base + 500, CALLS)):
            rq = f"r{i}"
            pipe.execute_command("FCALL", "resv_reserve", 7, *ks, keys.request_key(rid, rq, PARTITIONS),
                                 rid, f"c{i}", "1", rq)
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


if __name__ == "__main__":
    asyncio.run(main())
