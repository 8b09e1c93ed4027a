"""`make bench-engine`: reservation commits per second, side by side in one run.

Rows (each on a fresh resource with ample capacity, so every call confirms):
- redis-py pipeline: the reference, batches of 500 FCALLs sent by one
  redis-py Pipeline, no Python per-call work but building the command (the
  server idles while the client parses a batch and builds the next);
- engine, one call at a time: `await engine.reserve()` in a loop;
- engine, N concurrent callers: the engine coalesces their calls into pipelines;
- one connection per caller: 50 clients, one call in flight each, no batching.
Each row is run 3 times; the median is printed, with its ratio to the
reference and how busy the server was (its CPU time over the wall time, from
INFO cpu): near 100%, the server is the ceiling and the client keeps up.
Uses an embedded Valkey (AOF off, like a benchmark of the CPU path; AOF
always is measured in the last row) unless REDIS_URL is set.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid

import redis.asyncio as aioredis

from resv.embedded import EmbeddedRedis
from resv.engine import Engine, ResourceSpec, Settings, keys

CALLS = int(os.environ.get("BENCH_CALLS", "20000"))
PARTITIONS = 16


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


async def measure(url: str, label: str, fn, *args) -> tuple[str, float, float]:
    """(label, median commits/s, the server's busy fraction in that run)."""
    info = aioredis.Redis.from_url(url)
    runs = []
    async with Engine(Settings(redis_url=url, partitions=PARTITIONS)) as engine:
        for _ in range(3):
            cpu, start = await server_cpu(info), time.perf_counter()
            rate = await fn(url, engine, *args)
            busy = (await server_cpu(info) - cpu) / (time.perf_counter() - start)
            runs.append((rate, busy))
    await info.aclose()
    rate, busy = sorted(runs)[1]
    return label, rate, busy


async def server_cpu(client: aioredis.Redis) -> float:
    cpu = await client.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


async def main() -> None:
    rows = []
    with EmbeddedRedis(appendfsync="no", extra_args=["--appendonly", "no"]) as server:
        url = os.environ.get("REDIS_URL") or server.url
        rows.append(await measure(url, "redis-py pipeline, 500 per round trip (reference)", raw_pipelined))
        rows.append(await measure(url, "engine, 1 call at a time", engine_sequential))
        for callers in (16, 64, 256):
            rows.append(await measure(url, f"engine, {callers} concurrent callers", engine_concurrent, callers))
        rows.append(await measure(url, "50 connections, 1 call in flight each", connection_per_caller))
    with EmbeddedRedis() as durable:  # AOF, appendfsync always
        rows.append(await measure(durable.url, "engine, 256 callers, AOF always", engine_concurrent, 256))
    reference = rows[0][1]
    print(f"\nreserve commits/s, median of 3 runs of {CALLS} calls (1 process, 2-core machine)\n")
    print("| setup | commits/s | vs reference | server busy |")
    print("|---|---:|---:|---:|")
    for label, rate, busy in rows:
        print(f"| {label} | {rate:,.0f} | {rate / reference:.0%} | {busy:.0%} |")


if __name__ == "__main__":
    asyncio.run(main())
