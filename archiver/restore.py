"""`resv restore`: rebuilds the engine's state in an empty Redis from the
PostgreSQL audit, after the Redis data was lost.

How: every archived decision is re-issued, in stream order, at its recorded
time, through the same Lua on a scratch server (the replay of `resv verify`),
and each replayed event is compared with the archived one; only when all
match are the resulting state keys (resources, reservations, client totals,
waiting lists, idempotency records still alive) copied to the target. Each
stream is then recreated empty with its last id set past the archived ones,
so new decisions get new, higher ids and the archive stays keyed uniquely.
The current library release is loaded on the target first (refused, before
anything is written, if the target runs a newer one); run `resv verify` to
confirm.

Limit: what was decided but not yet archived when Redis was lost is not in
PostgreSQL and cannot be restored (see docs/guarantees.md). Under the strict
profile the Redis AOF is the first thing to recover; restore is for when it
is gone.
"""

from __future__ import annotations

import msgspec
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis

from resv.archiver.replay import (
    CLOCK_KEY,
    Mismatch,
    Planner,
    ScratchFactory,
    replay,
)
from resv.archiver.streams import GROUP
from resv.archiver.verify import load_partition
from resv.engine import ensure_library
from resv.engine.keys import KEY_PREFIX, PARTITION_KEYS_GLOB, is_stream_key, stream_key


class RestoreError(RuntimeError):
    pass


class RestoreReport(msgspec.Struct, kw_only=True):
    events: int = 0
    keys: int = 0
    expired_requests: int = 0
    mismatches: list[Mismatch] = []


async def restore(target: Redis, pool: AsyncConnectionPool, partitions: int, *,
                  scratch_server: ScratchFactory, idempotency_ttl_ms: int = 86_400_000) -> RestoreReport:
    """target: decode_responses=True. Refuses a target holding any engine key."""
    async for _ in target.scan_iter(match=KEY_PREFIX + "*", count=1000):
        raise RestoreError(f"the target Redis already holds engine keys ({KEY_PREFIX}*): restore only into an empty one")
    await ensure_library(target)  # LibraryVersionError before any write: the library only moves forward
    report = RestoreReport()
    planner = Planner(idempotency_ttl_ms)
    last_ids: dict[int, str] = {}
    async with scratch_server() as scratch:
        for p in range(partitions):
            log = await load_partition(None, pool, p, "0-0", None, None)
            if not log:
                continue
            report.events += len(log)
            report.mismatches += await replay(scratch, p, planner.plan(p, log))
            last_ids[p] = log[-1].stream_id
        if report.mismatches:
            return report  # the audit does not replay cleanly: write nothing
        now_us = _micros(await target.time())
        await _copy_state(scratch, target, planner.expires, now_us, report)
    for p, last_id in last_ids.items():
        key = stream_key(p)
        await target.xgroup_create(key, GROUP, id="0", mkstream=True)
        await target.execute_command("XSETID", key, last_id)
    return report


def _micros(t: tuple[int, int]) -> int:
    return int(t[0]) * 1_000_000 + int(t[1])


async def _copy_state(scratch: Redis, target: Redis, expires: dict[str, int], now_us: int,
                      report: RestoreReport) -> None:
    pipe = target.pipeline(transaction=False)
    async for key in scratch.scan_iter(match=PARTITION_KEYS_GLOB, count=1000):
        if is_stream_key(key) or key == CLOCK_KEY:
            continue
        kind = await scratch.type(key)
        if kind == "hash":
            pipe.hset(key, mapping=await scratch.hgetall(key))
        elif kind == "zset":
            pipe.zadd(key, dict(await scratch.zrange(key, 0, -1, withscores=True)))
        elif kind == "string":  # idempotency records: keep their recorded expiry
            left_ms = (expires.get(key, 0) - now_us) // 1000
            if left_ms <= 0:
                report.expired_requests += 1
                continue
            pipe.set(key, await scratch.get(key), px=left_ms)
        else:
            raise RestoreError(f"unexpected {kind} key in the replayed state")
        report.keys += 1
        if len(pipe) >= 500:
            await pipe.execute()
    await pipe.execute()
