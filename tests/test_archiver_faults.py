"""Archivers killed mid-batch, PostgreSQL stopped under load: no entry is
lost, none is archived twice, and the stream is never trimmed past what
PostgreSQL holds."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from resv.archiver.drain import drain_until_empty
from resv.archiver.lag import stream_lag
from resv.archiver.migrate import apply_migrations
from resv.embedded import free_port
from resv.embedded_pg import EmbeddedPostgres
from tests.archiver_support import (
    PARTITIONS,
    assert_archive_complete,
    create,
    reserve_many,
    row_counts,
    stream_entries,
)
from tests.report import record

ROOT = Path(__file__).resolve().parent.parent

# (crash point, at its n-th time); None: killed with SIGKILL after a delay.
RUNS = [
    ("before_insert", 1), ("before_commit", 2), ("after_commit_before_ack", 1),
    ("after_ack_before_trim", 2), ("after_commit_before_ack", 3), (None, 0.1),
    ("before_commit", 1), ("after_commit_before_ack", 2), (None, 0.3), ("after_ack_before_trim", 1),
]


def archiver_env(redis_url: str, database_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESV_")}
    env.update(
        REDIS_URL=redis_url, DATABASE_URL=database_url, RESV_PARTITIONS=str(PARTITIONS),
        RESV_ARCHIVER_BATCH="40", RESV_ARCHIVER_INTERVAL_MS="50", RESV_ARCHIVER_CLAIM_IDLE_MS="300",
        RESV_ARCHIVER_MAX_BACKOFF_S="0.5",
        PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    )
    env.update(extra)
    return env


async def start_archiver(env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "resv", "archiver", env=env, cwd=str(ROOT),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )


async def test_killed_archivers_lose_and_duplicate_nothing(engine, database_url, make_archiver, pool) -> None:
    resources = [f"k{i}" for i in range(12)]
    for rid in resources:
        await create(engine, rid, 100_000, waitlist_enabled=True)
    seen: dict = {}
    exits = []
    for n, (point, at) in enumerate(RUNS):
        extra = {"RESV_ARCHIVER_CRASH_AT": f"{point}:{at}"} if point else {}
        rows_before = sum((await row_counts(pool)).values())
        proc = await start_archiver(archiver_env(engine.settings.redis_url, database_url, **extra))
        await reserve_many(engine, resources, 300, batch=100, prefix=f"run{n}-")
        seen.update(await stream_entries(engine.redis))
        if point is None:  # once it archives, more load, then kill -9 wherever it is
            for _ in range(200):
                if sum((await row_counts(pool)).values()) > rows_before:
                    break
                await asyncio.sleep(0.05)
            await asyncio.gather(reserve_many(engine, resources, 300, batch=50, prefix=f"run{n}b-"),
                                 asyncio.sleep(float(at)))
            seen.update(await stream_entries(engine.redis))
            proc.kill()
        try:
            await asyncio.wait_for(proc.wait(), timeout=15)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        stderr = (await proc.stderr.read()).decode(errors="replace")
        exits.append(proc.returncode)
        assert proc.returncode == (99 if point else -9), stderr[-2000:]
        seen.update(await stream_entries(engine.redis))
    assert exits.count(99) == sum(1 for p, _ in RUNS if p)
    survivor = await make_archiver("survivor", claim_idle_ms=0)
    await drain_until_empty(survivor)
    await assert_archive_complete(engine.redis, pool, seen)
    assert await stream_entries(engine.redis) == {}
    record("archiver: killed mid-batch (os._exit at 4 points, kill -9) under load", faults=len(RUNS),
           decisions=sum((await row_counts(pool)).values()), lost=0, duplicated=0)


async def test_archiver_process_serves_metrics_and_stops_cleanly(engine, database_url, pool) -> None:
    await create(engine, "m", 1000)
    await reserve_many(engine, ["m"], 100)
    before = await stream_entries(engine.redis)
    port = free_port()
    proc = await start_archiver(archiver_env(engine.settings.redis_url, database_url,
                                             RESV_ARCHIVER_METRICS_PORT=str(port)))
    try:
        for _ in range(300):
            lag = await stream_lag(engine.redis, PARTITIONS)
            if await stream_entries(engine.redis) == {} and not any(v["entries"] for v in lag.values()):
                break
            await asyncio.sleep(0.05)
        text = await asyncio.to_thread(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode())
        assert "resv_archiver_rows_written_total 101.0" in text
        assert 'resv_archiver_lag_entries{partition="0"} 0.0' in text
        assert "resv_archiver_batch_seconds_count" in text
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), timeout=10)
    assert code == 0, (await proc.stderr.read()).decode()[-2000:]
    await assert_archive_complete(engine.redis, pool, before)


async def test_postgres_outage_delays_the_audit_and_loses_nothing(engine, make_archiver, own_postgres) -> None:
    from redis.asyncio import Redis

    from resv.archiver import drain, metrics, streams
    from resv.archiver.db import open_pool
    from resv.archiver.settings import ArchiverSettings

    resources = [f"o{i}" for i in range(8)]
    for rid in resources:
        await create(engine, rid, 100_000)
    redis = Redis.from_url(engine.settings.redis_url, decode_responses=True)
    archiver_pool = await open_pool(own_postgres.url, for_archiver=True, max_size=2, timeout=0.5)
    archiver = drain.Archiver(redis, archiver_pool, PARTITIONS,
                              ArchiverSettings(consumer="o", interval_s=0.02, max_backoff_s=0.3, batch=200),
                              metrics.ArchiverMetrics())
    stop = asyncio.Event()

    async def run() -> None:
        while not stop.is_set():
            await archiver.run_once()
            await asyncio.sleep(0.02)

    runner = asyncio.create_task(run())
    seen: dict = {}
    try:
        await reserve_many(engine, resources, 400, prefix="before-")
        await asyncio.sleep(0.3)
        await asyncio.to_thread(own_postgres.stop)
        await asyncio.sleep(0.3)  # a batch committed just before the stop may still be acknowledged
        marks_at_outage = await streams.archived_marks(engine.redis, list(range(PARTITIONS)))
        during: dict = {}
        for n in range(4):  # reservations go on while PostgreSQL is down
            await reserve_many(engine, resources, 200, prefix=f"during{n}-")
            during.update(await stream_entries(engine.redis))
            await asyncio.sleep(0.2)
        seen.update(during)
        # nothing acknowledged, so the marks stay and nothing is trimmed
        now = await stream_entries(engine.redis)
        marks_now = await streams.archived_marks(engine.redis, list(range(PARTITIONS)))
        for (p, sid) in during:  # every entry of the outage is above the mark, still in the stream
            assert streams.parse_id(marks_now[p][0]) <= streams.parse_id(sid)
            assert (p, sid) in now
        new = [key for key in during if streams.parse_id(key[1]) > streams.parse_id(marks_at_outage[key[0]][1])]
        assert len(new) == 800
        assert archiver.metrics.errors.labels(stage="postgres")._value.get() > 0
        lag = await stream_lag(engine.redis, PARTITIONS)
        assert sum(v["entries"] for v in lag.values()) >= 800
        await asyncio.to_thread(own_postgres.restart)
        for _ in range(300):  # the lag returns to 0
            lag = await stream_lag(engine.redis, PARTITIONS)
            if not any(v["entries"] for v in lag.values()):
                break
            await asyncio.sleep(0.05)
        assert not any(v["entries"] for v in lag.values()), lag
    finally:
        stop.set()
        await runner
        await archiver_pool.close()
        await redis.aclose()
    check_pool = await open_pool(own_postgres.url)
    try:
        await assert_archive_complete(engine.redis, check_pool, seen)
        record("archiver: PostgreSQL stopped under load, then back", faults=1,
               decisions=sum((await row_counts(check_pool)).values()), lost=0, duplicated=0)
    finally:
        await check_pool.close()
