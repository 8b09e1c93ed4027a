"""The Redis side of archiving: the `archiver` consumer group on each
partition stream, and the archived mark below which a stream may be trimmed.

Every command names one partition's key, so each works on a cluster; several
partitions' commands go out together in one pipeline (on a cluster,
redis-py's cluster pipeline sends each node its partitions' commands).
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from resv.engine.keys import stream_key

GROUP = "archiver"

Entry = tuple[str, dict[str, str]]  # (stream id, fields)


# ------------------------------------------------------------- stream ids


def parse_id(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


def format_id(ms: int, seq: int) -> str:
    return f"{ms}-{seq}"


def next_id(stream_id: str) -> str:
    """The smallest id greater than `stream_id`."""
    ms, seq = parse_id(stream_id)
    return format_id(ms, seq + 1) if seq < 2**64 - 1 else format_id(ms + 1, 0)


# ---------------------------------------------------------- consumer group


async def ensure_groups(redis: Redis, partitions: range | list[int]) -> None:
    """Creates the group on every stream (and the stream) unless it exists.
    The group starts at 0: entries written before the first archiver are archived too."""
    async with redis.pipeline(transaction=False) as pipe:
        for p in partitions:
            pipe.execute_command("XGROUP", "CREATE", stream_key(p), GROUP, "0", "MKSTREAM")
        results = await pipe.execute(raise_on_error=False)
    for result in results:
        if isinstance(result, Exception) and "BUSYGROUP" not in str(result):
            raise result


async def read(redis: Redis, consumer: str, partitions: list[int], count: int, *, own_pending: bool) -> dict[int, list[Entry]]:
    """One XREADGROUP per partition, pipelined. own_pending: this consumer's
    delivered-but-unacknowledged entries (after a failed batch); otherwise new ones."""
    start = "0" if own_pending else ">"
    async with redis.pipeline(transaction=False) as pipe:
        for p in partitions:
            pipe.xreadgroup(GROUP, consumer, {stream_key(p): start}, count=count)
        replies = await pipe.execute(raise_on_error=False)
    await _recreate_lost_groups(redis, partitions, replies)
    out: dict[int, list[Entry]] = {}
    for p, reply in zip(partitions, replies):
        if isinstance(reply, Exception):
            continue  # NOGROUP: the group is back, read next round
        # Re-reading own pending entries also returns the ids of entries
        # deleted since (XDEL), with no fields: they are acknowledged, not archived.
        entries = _entries_of(reply)
        if entries:
            out[p] = entries
    return out


def _entries_of(reply: Any) -> list[Entry]:
    if not reply:
        return []
    if isinstance(reply, dict):  # RESP3
        streams = list(reply.values())
        return [e for e in streams[0][0]] if streams else []
    return list(reply[0][1])


async def reclaim(redis: Redis, consumer: str, partitions: list[int], min_idle_ms: int, count: int) -> dict[int, list[Entry]]:
    """Takes over entries another (presumably dead) archiver left unacknowledged
    for min_idle_ms, at most `count` per partition."""
    async with redis.pipeline(transaction=False) as pipe:
        for p in partitions:
            pipe.xautoclaim(stream_key(p), GROUP, consumer, min_idle_ms, "0-0", count=count)
        replies = await pipe.execute(raise_on_error=False)
    await _recreate_lost_groups(redis, partitions, replies)
    out: dict[int, list[Entry]] = {}
    for p, reply in zip(partitions, replies):
        if isinstance(reply, Exception):
            continue
        claimed = [e for e in reply[1] if e[0] is not None]
        if claimed:
            out[p] = claimed
    return out


class GroupsLost(RuntimeError):
    """Streams without their group: deleted, or a server that restarted
    without its data. Nothing is re-created here: the archiver checks the
    engine state against the audit first (drain.py), which refuses a state
    that lost archived decisions and re-creates the groups otherwise."""

    def __init__(self, partitions: list[int]) -> None:
        super().__init__(f"no archiver group on the streams of partitions {partitions}")
        self.partitions = partitions


async def _recreate_lost_groups(redis: Redis, partitions: list[int], replies: list[Any]) -> None:
    """Raises GroupsLost for streams that lost their group; any other error
    as it is."""
    lost = []
    for p, reply in zip(partitions, replies):
        if isinstance(reply, ResponseError) and "NOGROUP" in str(reply):
            lost.append(p)
        elif isinstance(reply, Exception):
            raise reply
    if lost:
        raise GroupsLost(lost)


async def ack(redis: Redis, acked: dict[int, list[str]]) -> None:
    async with redis.pipeline(transaction=False) as pipe:
        for p, ids in acked.items():
            if ids:
                pipe.xack(stream_key(p), GROUP, *ids)
        await pipe.execute()


# ------------------------------------------------------------ archived mark


async def archived_marks(redis: Redis, partitions: list[int]) -> dict[int, tuple[str, str]]:
    """For each partition: (mark, end).

    mark: every entry with a smaller id is in PostgreSQL (acknowledged, which
    happens only after the commit), so the stream may be trimmed below it. It is
    the smallest id still pending in the group, or else the one after the
    group's last delivered id. Read in one MULTI so the two agree.
    end: the stream's last generated id at that moment ("0-0" when none).
    No group: nothing is archived, the mark is "0-0".
    """
    replies = await group_replies(redis, partitions)
    out: dict[int, tuple[str, str]] = {}
    for i, p in enumerate(partitions):
        groups, pending, info = replies[3 * i : 3 * i + 3]
        out[p] = (_mark(groups, pending), _end(info))
    return out


CLUSTER_MULTIS = 8
"""Partitions read at once on a cluster (group_replies)."""


async def group_replies(redis: Redis, partitions: list[int], *, time: bool = False) -> list[Any]:
    """XINFO GROUPS, XPENDING and XINFO STREAM of each partition, read in
    one MULTI so they agree (on a cluster a MULTI holds one slot: one per
    partition, all at once), replies as exceptions where a command failed.
    time: TIME first (on a cluster, from one node: the clocks of a
    cluster's nodes are taken as one)."""
    if isinstance(redis, RedisCluster):
        # A cluster's MULTI holds a connection of its node until it ends,
        # and the cluster client refuses a checkout past the node's
        # max_connections (MaxConnectionsError: every partition at once
        # failed /ops/requests with redis-py 8.2), so at most CLUSTER_MULTIS
        # run at once (the audit reader opens its client with 8 per node).
        bound = asyncio.Semaphore(CLUSTER_MULTIS)

        async def one(p: int) -> list[Any]:
            async with bound:
                return await _group_replies(redis, [p], False)

        parts = await asyncio.gather(*(one(p) for p in partitions))
        head = [await redis.time()] if time else []
        return head + [reply for part in parts for reply in part]
    return await _group_replies(redis, partitions, time)


async def _group_replies(redis: Redis, partitions: list[int], time: bool) -> list[Any]:
    async with redis.pipeline(transaction=True) as pipe:
        if time:
            pipe.time()
        for p in partitions:
            key = stream_key(p)
            pipe.execute_command("XINFO", "GROUPS", key)
            pipe.execute_command("XPENDING", key, GROUP)
            pipe.execute_command("XINFO", "STREAM", key)
        return await pipe.execute(raise_on_error=False)


def _mark(groups: Any, pending: Any) -> str:
    if isinstance(groups, Exception) or isinstance(pending, Exception):
        return "0-0"  # no stream, or no group yet
    group = next((g for g in groups if _field(g, "name") == GROUP), None)
    if group is None:
        return "0-0"
    smallest_pending = _pending_min(pending)
    if smallest_pending is not None:
        return smallest_pending
    last = _field(group, "last-delivered-id") or "0-0"
    return next_id(last) if last != "0-0" else "0-0"


def _end(info: Any) -> str:
    if isinstance(info, Exception):
        return "0-0"
    return _field(info, "last-generated-id") or "0-0"


def _pending_min(pending: Any) -> str | None:
    if isinstance(pending, dict):
        return pending.get("min") or None
    # raw XPENDING summary: [count, min, max, [[consumer, count], ...]]
    if pending and int(pending[0]) > 0:
        return _text(pending[1])
    return None


def _field(reply: Any, name: str) -> Any:
    if isinstance(reply, dict):
        value = reply.get(name)
    else:
        flat = list(reply)
        value = next((flat[i + 1] for i in range(0, len(flat) - 1, 2) if _text(flat[i]) == name), None)
    return _text(value)


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


async def trim(redis: Redis, marks: dict[int, str]) -> int:
    """XTRIM MINID (exact) each stream to its mark; returns entries removed.
    Never MAXLEN: only what PostgreSQL holds may go."""
    items = [(p, m) for p, m in marks.items() if m != "0-0"]
    if not items:
        return 0
    async with redis.pipeline(transaction=False) as pipe:
        for p, mark in items:
            pipe.execute_command("XTRIM", stream_key(p), "MINID", "=", mark)
        removed = await pipe.execute()
    return sum(int(n) for n in removed)


async def forget_idle_consumers(redis: Redis, partitions: list[int], idle_ms: int) -> int:
    """Deletes consumers with nothing pending, idle for idle_ms (archivers that
    exited: each process has its own consumer name). Returns how many."""
    async with redis.pipeline(transaction=False) as pipe:
        for p in partitions:
            pipe.xinfo_consumers(stream_key(p), GROUP)
        replies = await pipe.execute(raise_on_error=False)
    stale = [
        (p, c["name"])
        for p, consumers in zip(partitions, replies)
        if not isinstance(consumers, Exception)
        for c in consumers
        if int(c["pending"]) == 0 and int(c["idle"]) >= idle_ms
    ]
    if stale:
        async with redis.pipeline(transaction=False) as pipe:
            for p, name in stale:
                pipe.xgroup_delconsumer(stream_key(p), GROUP, name)
            await pipe.execute(raise_on_error=False)
    return len(stale)
