"""The timeline: PostgreSQL merged with the unarchived stream tail, in stream
order, complete while the archiver lags; and a request's place in it."""

from __future__ import annotations

import asyncio
import json
import re

import pytest

from resv.archiver import streams
from resv.archiver.db import open_pool
from resv.archiver.timeline import (
    AuditUnavailable,
    InvalidCursor,
    request_decisions,
    resource_timeline,
)
from resv.archiver.verify import verify
from resv.cli import main
from resv.engine.keys import partition_of
from resv.scratch import scratch_server
from tests.archiver_support import (
    PARTITIONS,
    create,
    reserve_many,
    stream_entries,
)

ISO_MICROS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
RESOURCES = ["gig", "talk", "dinner"]


async def contention(engine, n: int, prefix: str) -> None:
    """n concurrent reservations over few seats, with cancellations and the
    waiting list in between."""
    made = await reserve_many(engine, RESOURCES, n, batch=1000, prefix=prefix)
    confirmed = [d for d in made if d.confirmed]
    await asyncio.gather(*[engine.join_waitlist(RESOURCES[i % 3], f"{prefix}w{i}", 1) for i in range(30)])
    await asyncio.gather(*[engine.cancel(d.reservation_id) for d in confirmed[:40]])


async def read_all(engine, pool, rid: str, limit: int) -> list:
    events, after = [], None
    while True:
        page = await resource_timeline(engine.redis, pool, rid, PARTITIONS, after=after, limit=limit)
        events += page.events
        if page.next is None:
            return events
        assert len(page.events) == limit
        after = page.next


def expected_order(entries: dict, rid: str) -> list[tuple[str, dict]]:
    p = partition_of(rid, PARTITIONS)
    mine = [(sid, f) for (q, sid), f in entries.items() if q == p and f.get("resource_id") == rid]
    return sorted(mine, key=lambda item: streams.parse_id(item[0]))


async def test_timeline_is_the_stream_order_while_the_archiver_lags(engine, make_archiver, pool) -> None:
    for rid in RESOURCES:
        await create(engine, rid, 300, waitlist_enabled=True)
    await contention(engine, 2400, "a")
    seen = await stream_entries(engine.redis)
    # a slow archiver holds one entry of gig's partition: that stream keeps
    # entries PostgreSQL also has (the timeline must not repeat them)
    await streams.ensure_groups(engine.redis, range(PARTITIONS))
    await streams.read(engine.redis, "slow", [partition_of("gig", PARTITIONS)], 1, own_pending=False)
    archiver = await make_archiver(claim_idle_ms=60_000)
    await archiver.drain()
    await contention(engine, 900, "b")  # not archived yet
    seen.update(await stream_entries(engine.redis))

    for rid in RESOURCES:
        expected = expected_order(seen, rid)
        got = await read_all(engine, pool, rid, limit=97)
        assert [e.stream_id for e in got] == [sid for sid, _ in expected]
        assert [e.fields for e in got] == [f for _, f in expected]
        assert all(ISO_MICROS.fullmatch(e.server_time) for e in got)
        assert [e.remaining for e in got if e.remaining is not None] == \
            [int(f["remaining"]) for _, f in expected if "remaining" in f]
    report = await verify(engine.redis, pool, PARTITIONS, scratch_server=scratch_server)
    assert report.mismatches == [] and report.events == len(seen) and report.resources == 3


async def test_timeline_without_postgres_reads_the_streams(engine) -> None:
    await create(engine, "gig", 10)
    await reserve_many(engine, ["gig"], 25)
    got = await read_all(engine, None, "gig", limit=7)
    assert [e.stream_id for e in got] == [sid for sid, _ in expected_order(await stream_entries(engine.redis), "gig")]
    assert [e.type for e in got][:2] == ["RESOURCE_CREATED", "RESERVATION_CONFIRMED"]
    assert got[-1].reason == "SOLD_OUT"


async def test_a_request_and_its_place(engine, make_archiver, pool) -> None:
    await create(engine, "gig", 5)
    await reserve_many(engine, ["gig"], 3)
    await engine.reserve("gig", "zed", 1, "the-request")
    await (await make_archiver()).drain()
    await engine.join_waitlist("gig", "wl", 1)
    await engine.reserve("gig", "zed", 1, "the-request")  # a retry: replayed
    found = await request_decisions(engine.redis, pool, "the-request", PARTITIONS)
    assert [(d.event.type, d.position) for d in found.decisions] == [
        ("RESERVATION_CONFIRMED", 5), ("RESERVATION_REPLAYED", 7)]
    assert found.decisions[0].event.reservation_id == found.decisions[1].event.reservation_id
    assert found.decisions[0].partition == partition_of("gig", PARTITIONS)
    narrowed = await request_decisions(engine.redis, pool, "the-request", PARTITIONS, resource_id="gig")
    assert narrowed == found
    assert (await request_decisions(engine.redis, pool, "nobody", PARTITIONS)).decisions == []


async def test_bad_cursor_and_unreachable_postgres(engine) -> None:
    await create(engine, "gig", 5)
    with pytest.raises(InvalidCursor):
        await resource_timeline(engine.redis, None, "gig", PARTITIONS, after="not-a-cursor!")
    dead = await open_pool("postgresql://postgres@127.0.0.1:1/none", timeout=0.3)
    try:
        with pytest.raises(AuditUnavailable):
            await resource_timeline(engine.redis, dead, "gig", PARTITIONS)
    finally:
        await dead.close()


async def test_ops_routes(engine, database_url, make_archiver) -> None:
    from tests.api_support import CL, OP, api

    await create(engine, "gig", 3)
    await reserve_many(engine, ["gig"], 5)
    await (await make_archiver()).drain()
    await engine.reserve("gig", "late", 1, "late-req")
    async with api(engine.settings.redis_url, database_url=database_url) as client:
        r = await client.get("/ops/resources/gig/timeline?limit=4", headers=OP)
        assert r.status_code == 200, r.text
        first = r.json()
        assert len(first["events"]) == 4 and first["next"]
        r = await client.get(f"/ops/resources/gig/timeline?limit=4&after={first['next']}", headers=OP)
        rest = r.json()
        assert rest["next"] is None
        events = first["events"] + rest["events"]
        assert [e["type"] for e in events] == ["RESOURCE_CREATED"] + ["RESERVATION_CONFIRMED"] * 3 + \
            ["RESERVATION_REJECTED"] * 3
        for key in ("stream_id", "server_time", "type", "decision", "code", "reason", "resource_id",
                    "client_id", "quantity", "request_id", "version", "remaining", "reservation_id", "entry_id"):
            assert key in events[1]
        assert ISO_MICROS.fullmatch(events[1]["server_time"])
        r = await client.get("/ops/requests/late-req", headers=OP)
        assert r.status_code == 200
        assert [(d["position"], d["event"]["reason"]) for d in r.json()["decisions"]] == [(7, "SOLD_OUT")]
        assert (await client.get("/ops/requests/none", headers=OP)).status_code == 404
        assert (await client.get("/ops/resources/gig/timeline?after=%21%21", headers=OP)).status_code == 400
        assert (await client.get("/ops/resources/gig/timeline?limit=0", headers=OP)).status_code == 400
        assert (await client.get("/ops/resources/gig/timeline", headers=CL)).status_code == 403
        assert (await client.get("/ops/resources/gig/timeline")).status_code == 401
    # without DATABASE_URL: the streams alone (here only the unarchived tail)
    async with api(engine.settings.redis_url) as client:
        r = await client.get("/ops/resources/gig/timeline", headers=OP)
        assert [e["request_id"] for e in r.json()["events"]] == ["late-req"]


async def test_timeline_command(engine, database_url, make_archiver, capsys) -> None:
    await create(engine, "gig", 2)
    await reserve_many(engine, ["gig"], 3)
    await (await make_archiver()).drain()
    await engine.reserve("gig", "tail", 1, "tail-req")
    argv = ["timeline", "gig", "--redis-url", engine.settings.redis_url, "--database-url", database_url]
    assert await asyncio.to_thread(main, argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 5 and " RESOURCE_CREATED CONFIRMED" in lines[0] and "request_id=tail-req" in lines[4]
    assert await asyncio.to_thread(main, [*argv, "--json"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["reason"] for e in events[1:]] == ["CONFIRMED", "CONFIRMED", "SOLD_OUT", "SOLD_OUT"]


async def test_a_request_lookup_after_200_replays_answers_within_the_deadline(engine) -> None:
    """Without PostgreSQL: one pass over the stream per page, not one per
    returned decision (201 decisions in a ~20k-entry stream took minutes)."""
    from tests.api_support import OP, api

    # another resource in gig's partition: its traffic shares gig's stream
    other = next(f"other-{n}" for n in range(1000)
                 if partition_of(f"other-{n}", PARTITIONS) == partition_of("gig", PARTITIONS))
    await create(engine, "gig", 10)
    await create(engine, other, 10)
    await engine.reserve("gig", "ann", 1, "retried")
    for start in range(0, 20_000, 1000):
        await asyncio.gather(*(engine.reserve(other, f"c{n}", 1, f"o{n}") for n in range(start, start + 1000)))
    for _ in range(4):
        await asyncio.gather(*(engine.reserve("gig", "ann", 1, "retried") for _ in range(50)))
    async with api(engine.settings.redis_url, request_deadline_s=3.0) as client:
        pages, after = [], None
        while True:
            # past the deadline the API answers 503 itself; the bound only stops a test of the old code
            async with asyncio.timeout(30):
                r = await client.get("/ops/requests/retried",
                                     params={"limit": 150, **({"after": after} if after else {})}, headers=OP)
            assert r.status_code == 200, r.text
            pages.append(r.json()["decisions"])
            after = r.json().get("next")
            if after is None:
                break
    assert [len(p) for p in pages] == [150, 51]
    found = [d for p in pages for d in p]
    assert [d["event"]["type"] for d in found] == ["RESERVATION_CONFIRMED"] + ["RESERVATION_REPLAYED"] * 200
    # gig's decisions: created, then the request and its replays (other traffic is another resource)
    assert [d["position"] for d in found] == list(range(2, 203))
    narrowed = await request_decisions(engine.redis, None, "retried", PARTITIONS, resource_id="gig", limit=1000)
    assert [d.position for d in narrowed.decisions] == list(range(2, 203)) and narrowed.next is None
    with pytest.raises(InvalidCursor):
        await request_decisions(engine.redis, None, "retried", PARTITIONS, after="bm90LWEtcGxhY2U")
