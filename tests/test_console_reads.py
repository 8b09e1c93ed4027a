"""The console's reads over the audit: filtered keyset slices of a resource's
timeline both ways (PostgreSQL merged with the unarchived tail, and the
stream alone), the resources projection, and the engine's waiting list."""

from __future__ import annotations

import asyncio

from resv.archiver import streams
from resv.archiver.listing import notified_entries, resources
from resv.archiver.timeline import TimelineFilter, resource_slice
from tests.archiver_support import PARTITIONS, create, reserve_many, stream_entries
from tests.test_timeline import RESOURCES, contention, expected_order


async def walk(engine, pool, rid, *, limit, where=TimelineFilter(), backwards=False):
    """Every event by following the slices forwards (or backwards from the newest)."""
    got, cursor = [], None
    while True:
        if backwards:
            page = await resource_slice(engine.redis, pool, rid, PARTITIONS, before=cursor, limit=limit, where=where)
            got = page.events + got
            if not page.has_older:
                return got
            cursor = page.events[0].stream_id
        else:
            page = await resource_slice(engine.redis, pool, rid, PARTITIONS, after=cursor or "0-0",
                                        limit=limit, where=where)
            got += page.events
            if not page.has_newer:
                return got
            cursor = page.events[-1].stream_id
        assert len(page.events) == limit


async def test_slices_both_ways_are_the_stream_order_while_the_archiver_lags(engine, make_archiver, pool):
    for rid in RESOURCES:
        await create(engine, rid, 100, waitlist_enabled=True)
    await contention(engine, 600, "a")
    seen = await stream_entries(engine.redis)
    archiver = await make_archiver()
    await archiver.drain()  # and trims what it archived
    archived_up_to = max((sid for _, sid in seen), key=streams.parse_id)  # ids compare as numbers, not text
    await contention(engine, 300, "b")  # not archived yet
    seen.update(await stream_entries(engine.redis))
    for rid in RESOURCES:
        expected = [sid for sid, _ in expected_order(seen, rid)]
        assert [e.stream_id for e in await walk(engine, pool, rid, limit=37)] == expected
        assert [e.stream_id for e in await walk(engine, pool, rid, limit=37, backwards=True)] == expected
        # the stream alone holds the unarchived part
        unarchived = [sid for sid in expected if streams.parse_id(sid) > streams.parse_id(archived_up_to)]
        assert [e.stream_id for e in await walk(engine, None, rid, limit=37, backwards=True)][-len(unarchived):] \
            == unarchived
        rejected = [sid for sid, f in expected_order(seen, rid) if f.get("decision") == "REJECTED"]
        assert rejected
        where = TimelineFilter(outcome="REJECTED")
        assert [e.stream_id for e in await walk(engine, pool, rid, limit=50, where=where, backwards=True)] == rejected
        client = next(f["client_id"] for _, f in expected_order(seen, rid) if f.get("client_id"))
        mine = [sid for sid, f in expected_order(seen, rid) if f.get("client_id") == client]
        where = TimelineFilter(client_id=client)
        assert [e.stream_id for e in await walk(engine, pool, rid, limit=5, where=where)] == mine
        where = TimelineFilter(type="RESERVATION_CANCELLED")
        got = await walk(engine, pool, rid, limit=1000, where=where)
        assert got and {e.type for e in got} == {"RESERVATION_CANCELLED"}


async def test_newest_slice_and_the_page_before(engine, pool):
    await create(engine, "gig", 5)
    made = await reserve_many(engine, ["gig"], 12)
    page = await resource_slice(engine.redis, pool, "gig", PARTITIONS, limit=4)
    ids = [e.request_id for e in page.events]
    assert ids == [d.request_id for d in made[-4:]] and page.has_older and not page.has_newer
    older = await resource_slice(engine.redis, pool, "gig", PARTITIONS, before=page.events[0].stream_id, limit=4)
    assert [e.request_id for e in older.events] == [d.request_id for d in made[-8:-4]]
    assert older.has_newer and older.has_older


async def test_resources_projection_search_type_and_pages(engine, make_archiver, pool):
    for rid in ("hall-a", "hall-b", "room-1", "room-2", "room-3"):
        await create(engine, rid, 3, waitlist_enabled=True)
    await reserve_many(engine, ["room-2"], 3)
    await asyncio.gather(*[engine.join_waitlist("room-2", f"w{i}", 1) for i in range(2)])
    await engine.cancel("room-2~1")  # w0 is notified
    await (await make_archiver()).drain()
    first = await resources(pool, search="ROOM", limit=2)
    assert [r.resource_id for r in first.resources] == ["room-1", "room-2"] and first.next == "room-2"
    rest = await resources(pool, search="room", after=first.next, limit=2)
    assert [r.resource_id for r in rest.resources] == ["room-3"] and rest.next is None
    row = first.resources[1]
    assert (row.capacity, row.reserved, row.remaining, row.waiting) == (3, 2, 1, 1)
    assert [r.resource_id for r in (await resources(pool, type_="nothing")).resources] == []
    assert len((await resources(pool, type_="meetup")).resources) == 5
    assert [r.resource_id for r in (await resources(pool, search="%")).resources] == []  # LIKE signs are text
    notified = await notified_entries(pool, "room-2")
    assert [n.client_id for n in notified] == ["w0"] and notified[0].notified_at.endswith("Z")


async def test_engine_waiting_list_in_order(engine):
    await create(engine, "line", 1, waitlist_enabled=True)
    await engine.reserve("line", "x", 1)
    joined = [await engine.join_waitlist("line", f"c{i}", 1) for i in range(5)]
    await engine.leave_waitlist(joined[0].entry_id)
    page = await engine.waiting_list("line", offset=1, count=2)
    assert page.waiting == 4
    assert [(e.client_id, e.position, e.status) for e in page.entries] == [("c2", 2, "WAITING"), ("c3", 3, "WAITING")]
    assert await engine.waiting_list("nothing") is None


def test_stream_ids_compare_as_numbers():
    assert streams.parse_id("10-0") > streams.parse_id("9-5")


async def test_filtered_pages_use_an_index_at_100000_events(pool):
    """Keyset pages of a resource with 100,000 events (and as many of other
    resources) are index range scans, whatever the filter: EXPLAIN, not a
    stopwatch."""
    async with pool.connection() as conn:
        await conn.execute("""
            INSERT INTO events (partition, stream_id, ms, seq, ts_us, type, decision, reason, resource_id,
                                client_id, quantity, request_id, version, remaining, fields)
            SELECT 3, (1700000000000 + i / 5) || '-' || (i % 5), 1700000000000 + i / 5, i % 5,
                   (1700000000000 + i / 5) * 1000 + i % 5,
                   CASE WHEN i % 10 = 0 THEN 'RESERVATION_CONFIRMED' ELSE 'RESERVATION_REJECTED' END,
                   CASE WHEN i % 10 = 0 THEN 'CONFIRMED' ELSE 'REJECTED' END, 'SOLD_OUT',
                   CASE WHEN i < 100000 THEN 'big' ELSE 'other' || i % 50 END,
                   'fan-' || i % 20000, 1, 'req-' || i, 1, 0, '{}'
            FROM generate_series(0, 199999) i""")
        await conn.execute("ANALYZE events")
        newest, middle = (1800000000000, 0), (1700000010000, 0)
        for where, args in [("", ()), (" AND client_id = %s", ("fan-7",)), (" AND type = %s", ("RULES_CHANGED",)),
                            (" AND decision = %s", ("CONFIRMED",)), (" AND request_id = %s", ("req-5",))]:
            for sql, bound in [("(ms, seq) <= (%s, %s)" + where + " ORDER BY ms DESC, seq DESC", newest),
                               ("(ms, seq) < (%s, %s)" + where + " ORDER BY ms DESC, seq DESC", middle),
                               ("(ms, seq) > (%s, %s)" + where + " ORDER BY ms, seq", middle)]:
                cur = await conn.execute("EXPLAIN (FORMAT JSON) SELECT stream_id FROM events "
                                         "WHERE resource_id = %s AND " + sql + " LIMIT 101",
                                         ("big", *bound, *args))
                plan = (await cur.fetchone())[0][0]["Plan"]
                scans = list(_scans(plan))
                assert scans and all(s.startswith(("Index Scan", "Index Only Scan", "Bitmap")) for s in scans), \
                    (where, sql, scans)


def _scans(plan):
    if "Scan" in plan["Node Type"]:
        yield plan["Node Type"]
    for child in plan.get("Plans", []):
        yield from _scans(child)
