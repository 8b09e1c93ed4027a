"""Notifiers killed with SIGKILL mid-delivery, several times under load, and
PostgreSQL restarted: every matching event is delivered, a duplicate carries
the same webhook-id, no delivery row is lost or doubled, and no secret
reaches a log."""

from __future__ import annotations

import asyncio
import signal
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

from redis.asyncio import Redis

from resv.archiver import drain, metrics
from resv.archiver.db import open_pool
from resv.archiver.settings import ArchiverSettings
from resv.notifier.manage import WebhookStore
from resv.notifier.settings import NotifierSettings
from tests.archiver_support import PARTITIONS, create
from tests.report import record
from tests.webhook_support import eventually, notifier_env

ROOT = Path(__file__).resolve().parent.parent
KILLS = 3


async def test_killed_notifiers_and_a_postgres_restart_lose_nothing(engine, own_postgres, receiver) -> None:
    url = own_postgres.url
    r = receiver(lambda got, nth: (204, {}, 0.01))  # slow enough that a kill lands mid-delivery
    pool = await open_pool(url, max_size=4, timeout=2.0)
    hook, secret = await WebhookStore(pool, NotifierSettings(allow_private=True)).create(r.url, ["*"], None, None)
    resources = [f"f{i}" for i in range(6)]
    for rid in resources:
        await create(engine, rid, 100_000)
    redis = Redis.from_url(engine.settings.redis_url, decode_responses=True)
    archiver_pool = await open_pool(url, for_archiver=True, max_size=2, timeout=0.5)
    archiver = drain.Archiver(redis, archiver_pool, PARTITIONS,
                              ArchiverSettings(consumer="f", interval_s=0.05, max_backoff_s=0.3, batch=200),
                              metrics.ArchiverMetrics())
    stop = asyncio.Event()

    async def archive() -> None:
        while not stop.is_set():
            await archiver.run_once()
            await asyncio.sleep(0.05)

    async def load() -> None:
        n = 0
        while not stop.is_set():
            await asyncio.gather(*(engine.reserve(resources[(n + i) % 6], f"c{n + i}", 1, f"load{n + i}")
                                   for i in range(5)))
            n += 5
            await asyncio.sleep(0.15)

    logs = []

    async def start() -> asyncio.subprocess.Process:
        log = tempfile.NamedTemporaryFile(prefix="resv-notifier-", suffix=".log", delete=False)
        logs.append(Path(log.name))
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "resv", "notifier", env=notifier_env(url), cwd=str(ROOT),
            stdout=asyncio.subprocess.DEVNULL, stderr=log)

    tasks = [asyncio.create_task(archive()), asyncio.create_task(load())]
    kills = 0
    try:
        for n in range(KILLS):
            proc = await start()
            seen = len(r.snapshot())
            await eventually(lambda s=seen: len(r.snapshot()) > s + 20, timeout=60, what="deliveries under load")
            if n == 1:  # PostgreSQL goes away under the running notifier, and comes back
                await asyncio.to_thread(own_postgres.restart)
                seen = len(r.snapshot())
                await eventually(lambda s=seen: len(r.snapshot()) > s + 20, timeout=60, what="deliveries again")
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
            kills += 1
        stop.set()
        await asyncio.gather(*tasks)
        await drain.drain_until_empty(archiver)
        last = await start()  # a notifier that lives: it finishes what the killed ones left
        try:
            expected = await _matching_events(pool)
            got = await eventually(lambda: _all_delivered(pool, hook.webhook_id, len(expected)), timeout=120,
                                   what="every delivery DELIVERED",
                                   explain=lambda: _explain(pool, hook.webhook_id, len(expected), logs))
        finally:
            last.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(last.wait(), 30) == 0
    finally:
        stop.set()
        for t in tasks:
            if not t.done():
                t.cancel()
        await archiver_pool.close()
        await redis.aclose()
    # one row per matching event, none missing, none doubled
    assert sorted((row[1], row[2]) for row in got) == sorted(expected)
    received = r.verified(secret)
    by_id: dict[str, set] = defaultdict(set)
    for g in received:
        by_id[g.webhook_id].add((g.json()["data"]["partition"], g.json()["data"]["stream_id"]))
    assert set(by_id) == {row[0] for row in got}  # every delivery reached the receiver
    assert all(len(events) == 1 for events in by_id.values())  # a duplicate is the same event, same webhook-id
    duplicates = len(received) - len(by_id)
    text = "\n".join(p.read_text() for p in logs)
    for s in (secret, secret.removeprefix("whsec_")):
        assert s not in text
    for p in logs:
        p.unlink()
    await pool.close()
    record("notifier: SIGKILL mid-delivery x3 under load, PostgreSQL restarted", faults=kills + 1,
           decisions=len(expected), lost=0, duplicated=0, redelivered=duplicates)


async def _matching_events(pool) -> list[tuple[int, str]]:
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT e.partition, e.stream_id FROM events e JOIN webhook_event_types t ON t.stream_type = e.type")
        return list(await cur.fetchall())


async def _explain(pool, webhook_id: str, n: int, logs: list[Path]) -> str:
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT status, last_error, lease_until > now(), count(*) FROM webhook_deliveries "
            "WHERE webhook_id = %s GROUP BY 1, 2, 3", (webhook_id,))
        counts = await cur.fetchall()
        owner = await (await conn.execute("SELECT owner, owner_until, now(), enabled FROM webhooks")).fetchall()
    return f"{n} expected; {counts}; {owner}; last log: {logs[-1].read_text()[-3000:]}"


async def _all_delivered(pool, webhook_id: str, n: int):
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT delivery_id, partition, stream_id, status FROM webhook_deliveries WHERE webhook_id = %s",
            (webhook_id,))
        got = await cur.fetchall()
    return got if len(got) >= n and all(row[3] == "DELIVERED" for row in got) else None
