"""`resv restore`: rebuilds the engine's state in an empty Redis from the
PostgreSQL audit, after the Redis data was lost.

The target may hold what the engine itself creates on a server with no state
(and nothing else): empty streams (nothing ever appended) with their groups,
deployment records, and the function library. So a server that came back
empty, where the API and the archiver already started (and refused to work:
the state-loss guard), is a valid target.

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
Then, last, the deployment records are written with the audit's deployment
id: a running API or archiver sees the state as behind until then, and
resumes within RESV_DURABILITY_CHECK_S. Only what follows the latest
start-over is replayed.

Limit: what was decided but not yet archived when Redis was lost is not in
PostgreSQL and cannot be restored (see docs/guarantees.md). Under the strict
profile the Redis AOF is the first thing to recover; restore is for when it
is gone.
"""

from __future__ import annotations

import re
from collections import Counter

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
from resv.archiver.marks import floors, read_marks
from resv.archiver.streams import GROUP
from resv.archiver.verify import load_partition
from resv.engine import (
    PartitionsMismatch,
    check_partitions,
    compare_id,
    deploy,
    ensure_library,
    new_deployment_id,
    read_records,
)
from resv.engine.keys import PARTITION_KEYS_GLOB, is_stream_key, stream_key

_ENGINE_MADE = re.compile(r"resv:\{p(\d+)\}:(events|deployment)")


class RestoreError(RuntimeError):
    pass


class RestoreReport(msgspec.Struct, kw_only=True):
    deployment_id: str = ""
    events: int = 0
    keys: int = 0
    expired_requests: int = 0
    mismatches: list[Mismatch] = []


async def restore(target: Redis, pool: AsyncConnectionPool, partitions: int, *,
                  scratch_server: ScratchFactory, idempotency_ttl_ms: int = 86_400_000) -> RestoreReport:
    """target: decode_responses=True. Refuses a target holding engine state
    (anything but what the engine creates on an empty server)."""
    await check_target(target, partitions)
    await ensure_library(target)  # LibraryVersionError before any write: the library only moves forward
    audit = await read_marks(pool)
    beyond = sorted(p for p in audit if p >= partitions)
    if beyond:
        raise RestoreError(f"the audit holds partition {beyond[-1]}: it was made with more than "
                           f"RESV_PARTITIONS={partitions} partitions")
    named = Counter(m.deployment_id for m in audit.values() if m.deployment_id)
    report = RestoreReport(deployment_id=named.most_common(1)[0][0] if named else new_deployment_id())
    floor = await floors(pool)
    planner = Planner(idempotency_ttl_ms)
    last_ids: dict[int, str] = {p: m.stream_id for p, m in audit.items()}
    async with scratch_server() as scratch:
        for p in range(partitions):
            log = await load_partition(None, pool, p, "0-0", None, None, floor.get(p))
            if not log:
                continue
            report.events += len(log)
            report.mismatches += await replay(scratch, p, planner.plan(p, log))
            last = log[-1].stream_id
            if p not in last_ids or compare_id(last, last_ids[p]) > 0:
                last_ids[p] = last
        if report.mismatches:
            return report  # the audit does not replay cleanly: write nothing
        now_us = _micros(await target.time())
        await _copy_state(scratch, target, planner.expires, now_us, report)
    for p, last_id in sorted(last_ids.items()):
        await _stream_past(target, p, last_id)
    # last: the records make the state current for the guard (module docstring)
    for p in range(partitions):
        await deploy(target, p, report.deployment_id, partitions, replace=True)
    return report


async def check_target(target: Redis, partitions: int) -> None:
    """Raises RestoreError unless the target holds only what the engine
    creates on an empty server, with RESV_PARTITIONS' records."""
    async for key in target.scan_iter(match="resv:*", count=1000):
        made = _ENGINE_MADE.fullmatch(key)
        if made and made.group(2) == "deployment":
            continue
        if made and int((await target.xinfo_stream(key))["entries-added"]) == 0:
            continue
        raise RestoreError(f"the target Redis holds engine state ({key}): restore only into a server "
                           "without any (see docs/guarantees.md, recovery)")
    try:
        check_partitions((await read_records(target, partitions))[0], partitions)
    except PartitionsMismatch as exc:
        raise RestoreError(str(exc)) from exc


async def _stream_past(target: Redis, partition: int, last_id: str) -> None:
    """The partition's stream (and the archiver's group), its last id set to
    `last_id` unless it already is past it."""
    key = stream_key(partition)
    try:
        await target.xgroup_create(key, GROUP, id="0", mkstream=True)
    except Exception as exc:
        if "BUSYGROUP" not in str(exc):
            raise
    current = (await target.xinfo_stream(key)).get("last-generated-id") or "0-0"
    if compare_id(current, last_id) < 0:
        await target.execute_command("XSETID", key, last_id)


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


class StartOver(msgspec.Struct, kw_only=True):
    deployment_id: str
    replaced: str | None
    floors: dict[int, str]


async def start_over(target: Redis, pool: AsyncConnectionPool, partitions: int, *, reason: str,
                     decided_by: str | None = None) -> StartOver:
    """An operator's explicit decision not to restore: the engine starts as a
    new deployment with no resources, and the audit keeps everything, with
    the decision recorded (table start_overs) before Redis is touched. The
    target must hold no engine state (check_target). Each stream's last id is
    set past the audit's, so new decisions never collide with archived ones;
    verify and restore replay only what follows the floors."""
    await check_target(target, partitions)
    await ensure_library(target)  # LibraryVersionError before any write
    audit = await read_marks(pool)
    named = Counter(m.deployment_id for m in audit.values() if m.deployment_id)
    decision = StartOver(deployment_id=new_deployment_id(),
                         replaced=named.most_common(1)[0][0] if named else None,
                         floors={p: m.stream_id for p, m in sorted(audit.items())})
    async with pool.connection() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO start_overs (deployment_id, replaced, partitions, floors, reason, decided_by) "
            "VALUES (%s, %s, %s, %s, %s, %s)",
            (decision.deployment_id, decision.replaced, partitions,
             msgspec.json.encode({str(p): sid for p, sid in decision.floors.items()}).decode(),
             reason, decided_by))
        await conn.execute("UPDATE archived_marks SET deployment_id = %s, updated_at = now()",
                           (decision.deployment_id,))
    for p, floor_id in decision.floors.items():
        await _stream_past(target, p, floor_id)
    for p in range(partitions):
        await deploy(target, p, decision.deployment_id, partitions, replace=True)
    return decision
