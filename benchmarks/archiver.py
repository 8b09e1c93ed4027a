"""`make bench-archiver`: how fast the archiver drains, and how far it lags
while reservations keep coming.

1. Fill: BENCH_EVENTS (default 200000) reservation decisions written by
   pipelined FCALL resv_reserve over 64 resources (every partition used).
2. Drain: one in-process archiver drains them all (BENCH_BATCH entries per
   partition per read, default the archiver's); events/s = rows / wall time.
3. Lag under load: `resv archiver` runs as its own process (as in
   production) while this process sends reservations at BENCH_RATE per
   second (default 20000) for BENCH_SECONDS (default 10); the lag (entries not
   yet archived, age of the oldest) is sampled every 100 ms, then the time
   to catch up once the load stops.

Uses an embedded Valkey and an embedded PostgreSQL unless REDIS_URL /
DATABASE_URL are set (then a scratch database is created and dropped).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
import uuid
from contextlib import AsyncExitStack, ExitStack
from pathlib import Path

import psycopg
from redis.asyncio import Redis

from resv.archiver.db import open_pool
from resv.archiver.drain import Archiver
from resv.archiver.lag import stream_lag
from resv.archiver.migrate import apply_migrations
from resv.archiver.run import tune_gc
from resv.archiver.settings import ArchiverSettings
from resv.embedded import EmbeddedRedis
from resv.engine import keys
from resv.engine.library import library_source

EVENTS = int(os.environ.get("BENCH_EVENTS", "200000"))
BATCH = int(os.environ.get("BENCH_BATCH", "0")) or ArchiverSettings().batch
RATE = int(os.environ.get("BENCH_RATE", "20000"))
SECONDS = float(os.environ.get("BENCH_SECONDS", "10"))
PARTITIONS = 16
RESOURCES = [f"bench-{i}" for i in range(64)]
ROOT = Path(__file__).resolve().parent.parent


async def fill(redis: Redis, n: int, tag: str) -> float:
    """n confirmed reservations, pipelined 5000 at a time; returns calls/s."""
    start = time.perf_counter()
    for base in range(0, n, 5000):
        async with redis.pipeline(transaction=False) as pipe:
            for i in range(base, min(base + 5000, n)):
                rid, rq = RESOURCES[i % len(RESOURCES)], f"{tag}{i}"
                pipe.execute_command("FCALL", "resv_reserve", 10,
                                     *keys.reserve_keys(rid, rq, PARTITIONS),
                                     rid, f"c{i}", "1", rq)
            await pipe.execute()
    return n / (time.perf_counter() - start)


async def create_resources(redis: Redis) -> None:
    await redis.execute_command("FUNCTION", "LOAD", "REPLACE", library_source())
    async with redis.pipeline(transaction=False) as pipe:
        for rid in RESOURCES:
            pipe.execute_command("FCALL", "resv_create", 9, *keys.write_keys(rid, PARTITIONS),
                                 rid, "bench", str(10**9), "", "", "0", "", "")
        await pipe.execute()


async def drain(redis: Redis, database_url: str) -> tuple[int, float]:
    pool = await open_pool(database_url, for_archiver=True, max_size=2)
    archiver = Archiver(redis, pool, PARTITIONS, ArchiverSettings(consumer="bench", batch=BATCH))
    tune_gc()  # as `resv archiver` does
    try:
        start = time.perf_counter()
        rows = await archiver.drain()
        return rows, time.perf_counter() - start
    finally:
        await pool.close()


async def lag_under_load(redis: Redis, redis_url: str, database_url: str) -> dict[str, float]:
    env = {**os.environ, "REDIS_URL": redis_url, "DATABASE_URL": database_url,
           "RESV_PARTITIONS": str(PARTITIONS),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "resv", "archiver", env=env,
                                                stderr=asyncio.subprocess.DEVNULL)
    samples: list[tuple[int, float]] = []
    stop = asyncio.Event()

    async def sample() -> None:
        while not stop.is_set():
            lag = await stream_lag(redis, PARTITIONS)
            samples.append((sum(int(v["entries"]) for v in lag.values()), max(v["seconds"] for v in lag.values())))
            await asyncio.sleep(0.1)

    try:
        await asyncio.sleep(1.5)  # the archiver starts (imports, migrations)
        sampler = asyncio.create_task(sample())
        sent, start, tick = 0, time.perf_counter(), 0.05
        while (elapsed := time.perf_counter() - start) < SECONDS:
            due = int(RATE * elapsed) - sent
            if due > 0:
                await fill(redis, due, f"load{sent}-")
                sent += due
            await asyncio.sleep(tick)
        load_end = time.perf_counter()
        while True:
            lag = await stream_lag(redis, PARTITIONS)
            if not any(v["entries"] for v in lag.values()) or time.perf_counter() - load_end > 60:
                break
            await asyncio.sleep(0.05)
        catch_up = time.perf_counter() - load_end
        stop.set()
        await sampler
    finally:
        proc.terminate()
        await proc.wait()
    entries = sorted(e for e, _ in samples)
    ages = sorted(s for _, s in samples)
    return {
        "sent_per_s": sent / SECONDS,
        "lag_entries_p50": statistics.median(entries),
        "lag_entries_max": entries[-1],
        "lag_seconds_p50": statistics.median(ages),
        "lag_seconds_max": ages[-1],
        "catch_up_s": catch_up,
    }


async def main() -> None:
    with ExitStack() as servers:
        redis_url = os.environ.get("REDIS_URL")
        if not redis_url:
            redis_url = servers.enter_context(EmbeddedRedis(appendfsync="everysec")).url
        database_url = os.environ.get("DATABASE_URL")
        scratch_db = None
        if database_url:
            scratch_db = f"resv_bench_{uuid.uuid4().hex[:8]}"
            with psycopg.connect(database_url, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{scratch_db}"')
            admin_url, database_url = database_url, psycopg.conninfo.make_conninfo(database_url, dbname=scratch_db)
        else:
            from resv.embedded_pg import EmbeddedPostgres

            database_url = servers.enter_context(EmbeddedPostgres()).url
        try:
            async with AsyncExitStack() as stack:
                redis = Redis.from_url(redis_url, decode_responses=True)
                stack.push_async_callback(redis.aclose)
                await apply_migrations(database_url)
                await create_resources(redis)
                print(f"fill: {EVENTS} decisions at {await fill(redis, EVENTS, 'fill-'):,.0f}/s")
                rows, seconds = await drain(redis, database_url)
                print(f"drain: {rows} events in {seconds:.2f}s = {rows / seconds:,.0f} events/s "
                      f"(batch {BATCH} per partition)")
                result = await lag_under_load(redis, redis_url, database_url)
                print(f"lag under {result['sent_per_s']:,.0f} reservations/s for {SECONDS:.0f}s: "
                      f"entries p50 {result['lag_entries_p50']:,.0f} max {result['lag_entries_max']:,.0f}; "
                      f"age p50 {result['lag_seconds_p50']:.2f}s max {result['lag_seconds_max']:.2f}s; "
                      f"caught up {result['catch_up_s']:.2f}s after the load stopped")
        finally:
            if scratch_db:
                with psycopg.connect(admin_url, autocommit=True) as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{scratch_db}" WITH (FORCE)')


if __name__ == "__main__":
    asyncio.run(main())
