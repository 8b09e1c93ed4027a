"""How far the audit is behind the streams (for metrics and the API's /ready)."""

from __future__ import annotations

from collections.abc import Iterable

from redis.asyncio import Redis

from resv.archiver.streams import GROUP, group_replies, next_id, parse_id
from resv.engine.keys import stream_key

_COUNT_CAP = 10_000  # undelivered entries counted one by one, when the server cannot tell


async def stream_lag(redis: Redis, partitions: int | Iterable[int]) -> dict[int, dict[str, float]]:
    """Per partition: {"entries": entries appended but not yet archived
    (not yet delivered to the archiver group, or delivered and not
    acknowledged), "seconds": age of the oldest of them by the server clock,
    0.0 when there is none}.

    `partitions`: the partition count, or the partitions to look at. Before
    any archiver ran (no group) every entry of the stream counts. `redis` must
    decode responses (as the engine's client does). Two round trips at most.
    """
    parts = list(range(partitions)) if isinstance(partitions, int) else list(partitions)
    replies = await group_replies(redis, parts, time=True)
    seconds, micros = replies[0]
    now_ms = int(seconds) * 1000 + int(micros) // 1000

    out: dict[int, dict[str, float]] = {}
    oldest_ms: dict[int, int] = {}
    to_probe: dict[int, tuple[str, bool]] = {}  # partition -> (last delivered id, count them)
    for i, p in enumerate(parts):
        groups, pending, info = replies[1 + 3 * i : 4 + 3 * i]
        out[p] = {"entries": 0, "seconds": 0.0}
        if isinstance(info, Exception):  # no stream yet
            continue
        group = None if isinstance(groups, Exception) else next((g for g in groups if g["name"] == GROUP), None)
        if group is None:
            out[p]["entries"] = int(info["length"])
            if info.get("first-entry"):
                oldest_ms[p] = parse_id(info["first-entry"][0])[0]
            continue
        n_pending = 0 if isinstance(pending, Exception) else int(pending["pending"])
        if n_pending:
            oldest_ms[p] = parse_id(pending["min"])[0]
        last = group.get("last-delivered-id") or "0-0"
        lag = group.get("lag")
        out[p]["entries"] = n_pending + (int(lag) if lag is not None else 0)
        if lag is None or int(lag) > 0:
            to_probe[p] = (last, lag is None)

    if to_probe:
        # The first undelivered entry gives the age; when XINFO has no lag
        # (an entry was XDEL'd past the group's position) they are counted.
        async with redis.pipeline(transaction=False) as pipe:
            for p, (last, count_them) in to_probe.items():
                start = next_id(last) if last != "0-0" else "-"
                pipe.xrange(stream_key(p), start, "+", count=_COUNT_CAP if count_them else 1)
            firsts = await pipe.execute()
        for (p, (_, count_them)), entries in zip(to_probe.items(), firsts):
            if count_them:
                out[p]["entries"] += len(entries)
            if entries:
                ms = parse_id(entries[0][0])[0]
                oldest_ms[p] = min(oldest_ms.get(p, ms), ms)
    for p, ms in oldest_ms.items():
        out[p]["seconds"] = max(0.0, (now_ms - ms) / 1000)
    return out
