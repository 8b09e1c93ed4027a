"""Helpers for the cluster tests: resource ids spread over the shards, what
each primary ran, and the engine's keys of a resource as a cluster sees them."""

from __future__ import annotations

from collections import Counter
from typing import Any

from resv.embedded_cluster import EmbeddedCluster, slot_ranges
from resv.engine import keys
from resv.engine.cluster import slot_of


def shard_of_slot(slot: int, shards: int = 3) -> int:
    """The shard serving `slot` in a fresh cluster (even contiguous ranges)."""
    return next(i for i, (first, last) in enumerate(slot_ranges(shards)) if first <= slot <= last)


def slot_of_resource(resource_id: str, partitions: int) -> int:
    return slot_of(keys.resource_keys(resource_id, partitions)[0])


def spread_ids(prefix: str, n: int, partitions: int, shards: int = 3) -> list[str]:
    """n resource ids `prefix-i`, taken in turn from each shard of a fresh
    cluster, so every shard holds n / shards of them (give or take one)."""
    per = -(-n // shards)
    by_shard: list[list[str]] = [[] for _ in range(shards)]
    i = 0
    while any(len(ids) < per for ids in by_shard):
        rid = f"{prefix}-{i}"
        i += 1
        ids = by_shard[shard_of_slot(slot_of_resource(rid, partitions), shards)]
        if len(ids) < per:
            ids.append(rid)
    return [rid for group in zip(*by_shard) for rid in group][:n]


def fcalls(cluster: EmbeddedCluster) -> dict[int, int]:
    """FCALLs each running primary ran since it started (INFO commandstats), by port."""
    out = {}
    for node in cluster.primary_nodes():
        c = cluster.client(node)
        try:
            out[node.port] = int(c.info("commandstats").get("cmdstat_fcall", {}).get("calls", 0))
        finally:
            c.close()
    return out


def shards_taken(ids: list[str], partitions: int, shards: int = 3) -> Counter:
    return Counter(shard_of_slot(slot_of_resource(rid, partitions), shards) for rid in ids)


def stream_lengths(cluster: EmbeddedCluster, partitions: int) -> dict[int, int]:
    """Entries in each partition's stream, read from the primary holding it."""
    import redis

    client = redis.RedisCluster(host="127.0.0.1", port=cluster.primary_nodes()[0].port, decode_responses=True)
    try:
        return {p: int(client.xlen(keys.stream_key(p))) for p in range(partitions)}
    finally:
        client.close()


def as_json(response: Any) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text


def cluster_events(cluster: EmbeddedCluster, partitions: int, resource_ids: list[str]) -> list[dict[str, str]]:
    """Every event of the resources' partition streams, in stream order per
    partition, read from whichever primary holds each."""
    import redis

    wanted = set(resource_ids)
    client = redis.RedisCluster(host="127.0.0.1", port=cluster.primary_nodes()[0].port, decode_responses=True)
    out = []
    try:
        for p in sorted({keys.partition_of(rid, partitions) for rid in resource_ids}):
            for sid, fields in client.xrange(keys.stream_key(p)):
                if fields.get("resource_id") in wanted:
                    out.append({**fields, "stream_id": sid})
    finally:
        client.close()
    return out


async def wait_until(check: Any, what: str, timeout: float = 60.0, pause: float = 0.1) -> Any:
    """Polls `check` (a plain function, run in a thread: it may talk to the
    nodes with a blocking client) until it returns something true. Bounded
    and generous: a loaded 2-core machine is slow, never wrong."""
    import asyncio
    import time

    deadline = time.monotonic() + timeout
    while True:
        try:
            found = await asyncio.to_thread(check)
        except Exception:  # noqa: BLE001 - a node down or busy: ask again
            found = None
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting until {what}")
        await asyncio.sleep(pause)


def server_warnings(log: Any, lines: int = 80) -> str:
    """The last warnings and errors of a `resv serve` log (not its request lines)."""
    from pathlib import Path

    try:
        text = Path(log).read_text(errors="replace")
    except OSError:
        return "(no log)"
    kept = [line for line in text.splitlines() if '"msg":"request"' not in line]
    return "\n".join(kept[-lines:])


def crashed(tasks: list[Any]) -> bool:
    """Whether a load task ended before it was told to (an error in it)."""
    return any(t.done() for t in tasks)


def raise_crashed(tasks: list[Any]) -> None:
    """Raises the error of a load task that ended early, instead of waiting
    for decisions it will never make."""
    for t in tasks:
        if t.done():
            t.result()
            raise AssertionError("a load task ended before it was stopped")
