"""`resv verify [--resource ID]`: replays the audit through the Lua and
compares every decision, then the final state with live Redis.

The log is the whole PostgreSQL audit (after the latest start-over's floors,
archiver/marks.py) plus the streams' unarchived tails (as the timeline reads
it) up to each stream's last id when verify starts. First the engine state is
compared with the audit (engine/deployment.py): a partition whose stream is
behind what the audit holds (an empty or older Redis), or has no deployment
record, is reported as a mismatch naming it, and its whole audit is replayed
and compared with what live Redis has (nothing, for a lost server). Each partition is
replayed on a scratch server (see replay.py); then, for every resource of
the log, the scratch server's state (the resource hash, its reservations,
client totals, waiting list) must equal live Redis. A resource that changed
after verify read the log is reported as skipped, not as a mismatch.
Exit status: 0 when nothing differs, 1 otherwise, 2 when the log cannot be
read (or on a usage error).
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis

from resv.archiver.replay import (
    Mismatch,
    Planner,
    ScratchFactory,
    replay,
)
from resv.archiver.streams import archived_marks, next_id, parse_id
from resv.archiver.timeline import (
    EVENT_SELECT,
    TimelineEvent,
    event_from_row,
    merge_events,
    scan_stream,
)
from resv.archiver.marks import floors, read_marks
from resv.engine import assess, check_partitions, read_records
from resv.engine.keys import RESOURCE_KEYS_GLOB, parse_resource_key, partition_of, resource_keys_in, waitlist_keys_in


class VerifyReport(msgspec.Struct, kw_only=True):
    events: int = 0
    calls: int = 0
    inferred: int = 0
    """Calls whose inputs were inferred from their outcome (see replay.py)."""
    resources: int = 0
    """Resources whose final state was compared with live Redis."""
    skipped: list[str] = []
    """Resources that changed while verify ran (not compared)."""
    behind: list[int] = []
    """Partitions whose engine state is behind the audit."""
    mismatches: list[Mismatch] = []

    @property
    def ok(self) -> bool:
        return not self.mismatches


async def verify(
    live: Redis | None,
    pool: AsyncConnectionPool | None,
    partitions: int,
    *,
    scratch_server: ScratchFactory,
    resource_id: str | None = None,
    idempotency_ttl_ms: int = 86_400_000,
) -> VerifyReport:
    """live: the engine's Redis (decode_responses=True), for the unarchived
    tails and the final state; None replays PostgreSQL alone. pool: None
    replays the streams alone (complete only if no archiver trimmed them)."""
    if live is None and pool is None:
        raise ValueError("nothing to verify: neither Redis nor PostgreSQL")
    parts = [partition_of(resource_id, partitions)] if resource_id else list(range(partitions))
    report = VerifyReport()
    planner = Planner(idempotency_ttl_ms)
    async with scratch_server() as scratch:
        marks = await archived_marks(live, parts) if live is not None else {}
        floor = await floors(pool) if pool is not None else {}
        audit = await read_marks(pool) if pool is not None else {}
        behind: dict[int, str] = {}
        if live is not None:
            # read after the audit: a stream only grows, so what it generated
            # by now covers whatever the audit held a moment ago
            records, last_ids = await read_records(live, partitions)
            check_partitions(records, partitions)
            if pool is not None:
                behind = assess(records, last_ids, audit, partitions).behind
        if live is None:
            live_ids: dict[int, set[str]] = {}
        elif resource_id is None:
            live_ids = await _live_resources(live)
        else:
            live_ids = {parts[0]: {resource_id}}
        for p in parts:
            mark, end = marks.get(p, ("0-0", None))
            if p in behind:
                report.behind.append(p)
                report.mismatches.append(Mismatch(p, None, "STATE", f"{behind[p]}: engine state is behind "
                                                  "the audit; run `resv restore`"))
                log = await load_partition(None, pool, p, "0-0", None, resource_id, floor.get(p))
            else:
                log = await load_partition(live, pool, p, mark if pool is not None else "0-0", end, resource_id,
                                           floor.get(p))
            if not log and not live_ids.get(p):
                continue
            calls = planner.plan(p, log)
            report.events += len(log)
            report.calls += sum(1 for c in calls if c.function)
            report.inferred += sum(1 for c in calls if c.inferred)
            report.mismatches += await replay(scratch, p, calls)
            if live is not None:
                resources = {e.resource_id for e in log if e.resource_id} | live_ids.get(p, set())
                await _compare_state(scratch, live, p, sorted(resources), end or "0-0", report)
    return report


async def load_partition(live: Redis | None, pool: AsyncConnectionPool | None, partition: int, mark: str,
                         end: str | None, resource_id: str | None, floor: str | None = None) -> list[TimelineEvent]:
    """The partition's log in stream order: PostgreSQL up to `end` (all of it
    when None) above `floor` (a start-over's), and the stream from `mark` to `end`."""
    keep = (lambda f: f.get("resource_id") == resource_id) if resource_id else (lambda f: True)
    tail = await scan_stream(live, partition, mark, end, None, keep) if live is not None and end else []
    archived: list[TimelineEvent] = []
    if pool is not None:
        sql = EVENT_SELECT + "WHERE partition = %s"
        args: list[Any] = [partition]
        if resource_id:
            sql += " AND resource_id = %s"
            args.append(resource_id)
        if end is not None:
            sql += " AND (ms, seq) <= (%s, %s)"
            args += parse_id(end)
        if floor is not None:
            sql += " AND (ms, seq) > (%s, %s)"
            args += parse_id(floor)
        async with pool.connection() as conn:
            cur = await conn.execute(sql + " ORDER BY ms, seq", args)
            archived = [event_from_row(row) for row in await cur.fetchall()]
    return merge_events(archived, tail)


# ------------------------------------------------------------ final state

async def _live_resources(live: Redis) -> dict[int, set[str]]:
    """The resources live Redis holds, by partition (so one never logged is
    found too)."""
    out: dict[int, set[str]] = {}
    async for key in live.scan_iter(match=RESOURCE_KEYS_GLOB, count=1000):
        parsed = parse_resource_key(key)
        if parsed:
            out.setdefault(parsed[0], set()).add(parsed[1])
    return out


async def _compare_state(scratch: Redis, live: Redis, partition: int, resources: list[str], end: str,
                         report: VerifyReport) -> None:
    for rid in resources:
        ks = resource_keys_in(partition, rid) + waitlist_keys_in(partition, rid)
        replayed, current = await _resource_state(scratch, ks), await _resource_state(live, ks)
        differences = _state_differences(rid, replayed, current)
        if differences and await _changed_since(live, partition, rid, end):
            report.skipped.append(rid)
            continue
        report.resources += 1
        report.mismatches += [Mismatch(partition, None, "STATE", d) for d in differences]


async def _resource_state(r: Redis, ks: tuple[str, ...]) -> dict[str, Any]:
    res, bk, cl, wl, we, _, wq, wn, _ = ks
    async with r.pipeline(transaction=False) as pipe:
        pipe.hgetall(res)
        pipe.hgetall(bk)
        pipe.hgetall(cl)
        pipe.zrange(wl, 0, -1, withscores=True)
        pipe.hgetall(we)
        pipe.zrange(wq, 0, -1, withscores=True)
        pipe.zrange(wn, 0, -1, withscores=True)
        resource, bookings, clients, waiting, entries, by_quantity, notified = await pipe.execute()
    return {
        "resource": resource,
        "reservations": {k: json.loads(v) for k, v in bookings.items()},
        "client totals": clients,
        "waiting list": waiting,
        "quantity index": by_quantity,
        "notifications": notified,
        "waiting entries": {k: json.loads(v) if k.startswith("e:") else v for k, v in entries.items()},
    }


def _state_differences(rid: str, replayed: dict[str, Any], live: dict[str, Any]) -> list[str]:
    out: list[str] = []
    if not replayed["resource"] and live["resource"]:
        return [f"resource {rid}: exists live, absent from the log"]
    if replayed["resource"] and not live["resource"]:
        return [f"resource {rid}: in the log, absent from live Redis"]
    for name in sorted(set(replayed["resource"]) | set(live["resource"])):
        a, b = replayed["resource"].get(name), live["resource"].get(name)
        if a != b:
            out.append(f"resource {rid}: {name} replayed {a}, live {b}")
    for part, label in (("reservations", "reservation"), ("waiting entries", "waiting entry"),
                        ("client totals", "client total")):
        a_map, b_map = replayed[part], live[part]
        for key in sorted(set(a_map) | set(b_map)):
            a, b = a_map.get(key), b_map.get(key)
            if a == b:
                continue
            if isinstance(a, dict) and isinstance(b, dict):
                for field in sorted(set(a) | set(b)):
                    if a.get(field) != b.get(field):
                        out.append(f"{label} {key}: {field} replayed {a.get(field)}, live {b.get(field)}")
            else:
                out.append(f"{label} {key}: replayed {a}, live {b}")
    for part in ("waiting list", "quantity index", "notifications"):
        if replayed[part] != live[part]:
            out.append(f"resource {rid}: {part} replayed {replayed[part]}, live {live[part]}")
    return out


async def _changed_since(live: Redis, partition: int, rid: str, end: str) -> bool:
    """Whether the resource has events after the log's end."""
    start = next_id(end) if end != "0-0" else "0-0"
    events = await scan_stream(live, partition, start, "+", 1, lambda f: f.get("resource_id") == rid)
    return bool(events)
