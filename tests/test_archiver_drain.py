"""Draining the streams into PostgreSQL: each entry one row, projections
equal to the engine's state, trimming only below what PostgreSQL holds."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from resv.archiver import streams
from resv.archiver.drain import drain_until_empty
from resv.archiver.lag import stream_lag
from resv.archiver.store import event_rows, store_rows
from resv.engine import StateError
from resv.engine.keys import partition_of, stream_key
from tests.archiver_support import (
    PARTITIONS,
    archived_rows,
    assert_archive_complete,
    create,
    entries_added,
    reserve_many,
    row_counts,
    stream_entries,
)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


async def scenario(engine) -> None:
    """Every kind of event: creations, rules, reservations, cancellations,
    the waiting list with notifications and fulfilment, rejections."""
    await create(engine, "hall", 3, waitlist_enabled=True, max_per_request=2)
    await create(engine, "room", 10)
    first = await engine.reserve("hall", "al", 2, "q1")
    await engine.reserve("hall", "al", 2, "q1")            # replayed
    await engine.reserve("hall", "bo", 2, "q2")            # insufficient
    await engine.reserve("ghost", "bo", 1, "q3")           # unknown resource
    waiting = await engine.join_waitlist("hall", "cy", 1)
    await engine.join_waitlist("hall", "di", 2)
    await engine.cancel(first.reservation_id)              # notifies cy and di
    await engine.cancel(first.reservation_id)              # replayed
    await engine.reserve("hall", "cy", 1, "q4")            # fulfils cy's entry
    await engine.leave_waitlist(waiting.entry_id)          # already fulfilled: rejected
    await engine.configure("hall", 1, {"capacity": 6})
    await engine.configure("hall", 1, {"capacity": 7})     # stale version
    await engine.close("room", 1)
    await engine.reserve("room", "ed", 1, "q5")            # closed


async def test_drain_twice_gives_each_entry_once(engine, make_archiver, pool) -> None:
    await scenario(engine)
    await create(engine, "busy", 1000)
    await reserve_many(engine, ["busy"], 300)
    before = await stream_entries(engine.redis)
    archiver = await make_archiver()
    archived = await archiver.drain()
    assert archived == len(before)
    assert await archiver.drain() == 0
    await assert_archive_complete(engine.redis, pool, before)
    # everything is archived, so everything was trimmed
    assert await stream_entries(engine.redis) == {}
    assert archiver.metrics.rows_written._value.get() == len(before)
    lag = await stream_lag(engine.redis, PARTITIONS)
    assert all(v == {"entries": 0, "seconds": 0.0} for v in lag.values())


async def test_columns_are_parsed_from_the_entry(engine, make_archiver, pool) -> None:
    await scenario(engine)
    before = await stream_entries(engine.redis)
    await (await make_archiver()).drain()
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT partition, stream_id, ms, seq, ts_us, server_time, type, decision, code, reason, "
            "resource_id, client_id, quantity, request_id, reservation_id, entry_id, version, remaining "
            "FROM events")
        rows = await cur.fetchall()
    assert len(rows) == len(before)
    for (p, sid, ms, seq, ts, server_time, type_, decision, code, reason, rid, client, qty, req, resv,
         entry, version, remaining) in rows:
        f = before[(p, sid)]
        assert f"{ms}-{seq}" == sid and p == partition_of(rid, PARTITIONS)
        assert ts == int(f["ts"]) and server_time == EPOCH + timedelta(microseconds=ts)
        assert (type_, decision, code, reason) == (f["type"], f.get("decision"), f.get("code"), f.get("reason"))
        assert (rid, client, req, resv, entry) == tuple(f.get(k) for k in (
            "resource_id", "client_id", "request_id", "reservation_id", "entry_id"))
        for value, name in ((qty, "quantity"), (version, "version"), (remaining, "remaining")):
            assert value == (int(f[name]) if name in f else None)


async def test_projections_equal_the_engine_state(engine, make_archiver, pool) -> None:
    await scenario(engine)
    await create(engine, "busy", 50, waitlist_enabled=True)
    made = await reserve_many(engine, ["busy"], 60)
    for d in made[:7]:
        await engine.cancel(d.reservation_id)
    archiver = await make_archiver(batch=7)  # many small batches: projections across batches
    await archiver.drain()
    async with pool.connection() as conn:
        resources = {r[0]: r[1:] for r in await (await conn.execute(
            "SELECT resource_id, resource_type, capacity, reserved, remaining, state, version FROM resources"
        )).fetchall()}
        reservations = dict(await (await conn.execute(
            "SELECT reservation_id, status FROM reservations")).fetchall())
        entries = dict(await (await conn.execute(
            "SELECT entry_id, status FROM waitlist_entries")).fetchall())
    for rid in ("hall", "room", "busy"):
        live = await engine.resource(rid)
        assert resources[rid] == (live.resource_type, live.capacity, live.reserved, live.remaining,
                                  live.state, live.version)
    assert len(reservations) == sum(1 for d in made if d.confirmed) + 2
    for reservation_id, status in reservations.items():
        assert (await engine.reservation(reservation_id)).status == status
    assert len(entries) == 2
    for entry_id, status in entries.items():
        assert (await engine.waitlist_entry(entry_id)).status == status


async def test_redelivered_entries_stay_one_row(engine, make_archiver, pool) -> None:
    """Entries delivered again as new ones (the group moved back) meet their
    rows: the COPY falls back to INSERT .. ON CONFLICT DO NOTHING."""
    await create(engine, "r", 500)
    p = partition_of("r", PARTITIONS)
    await reserve_many(engine, ["r"], 200)
    before = await stream_entries(engine.redis)
    await streams.ensure_groups(engine.redis, range(PARTITIONS))
    held = await streams.read(engine.redis, "holder", [p], 1, own_pending=False)  # keeps the stream untrimmed
    archiver = await make_archiver()
    assert await archiver.drain() == 200
    assert await stream_entries(engine.redis) == before
    await engine.redis.xgroup_setid(stream_key(p), streams.GROUP, "0")
    assert await archiver.drain() == 1  # the held entry; the 200 others were rows already
    assert archiver.metrics.duplicates._value.get() == 200
    assert held[p][0][0] in {sid for _, sid in await archived_rows(pool)}
    await assert_archive_complete(engine.redis, pool, before)
    assert await stream_entries(engine.redis) == {}


async def test_pending_entries_of_a_dead_archiver_are_taken_over(engine, make_archiver, pool) -> None:
    await create(engine, "r", 500)
    await reserve_many(engine, ["r"], 120)
    before = await stream_entries(engine.redis)
    await streams.ensure_groups(engine.redis, range(PARTITIONS))
    # "dead" read everything, committed half of it, and died before its XACK
    delivered = await streams.read(engine.redis, "dead", list(range(PARTITIONS)), 10_000, own_pending=False)
    assert sum(len(v) for v in delivered.values()) == len(before)
    half = {p: entries[: len(entries) // 2] for p, entries in delivered.items()}
    patient = await make_archiver("patient", claim_idle_ms=60_000)
    assert patient.pool is not None
    async with patient.pool.connection() as conn:
        await store_rows(conn, event_rows(half), lambda _: None, fresh=True)
    # a live archiver waits for the claim delay: nothing archived, nothing trimmed
    assert await patient.drain() == 0
    assert await stream_entries(engine.redis) == before
    taker = await make_archiver("taker", claim_idle_ms=0)
    assert await taker.drain() == len(before) - sum(len(v) for v in half.values())
    assert taker.metrics.duplicates._value.get() == sum(len(v) for v in half.values())
    await assert_archive_complete(engine.redis, pool, before)
    assert await stream_entries(engine.redis) == {}


async def test_two_archivers_at_once(engine, make_archiver, pool) -> None:
    resources = [f"r{i}" for i in range(24)]
    for rid in resources:
        await create(engine, rid, 10_000)
    a, b = await make_archiver("a", batch=100), await make_archiver("b", batch=100)
    seen: dict = {}
    stop = asyncio.Event()

    async def keep_draining(archiver) -> None:
        while not stop.is_set():
            await archiver.drain()
            await asyncio.sleep(0.005)

    tasks = [asyncio.create_task(keep_draining(x)) for x in (a, b)]
    for round_ in range(4):
        await reserve_many(engine, resources, 800, prefix=f"k{round_}-")
        seen.update(await stream_entries(engine.redis))
    stop.set()
    await asyncio.gather(*tasks)
    await drain_until_empty(a)
    await assert_archive_complete(engine.redis, pool, seen)
    written = a.metrics.rows_written._value.get() + b.metrics.rows_written._value.get()
    assert written == sum((await entries_added(engine.redis)).values())
    assert a.metrics.rows_written._value.get() > 0 and b.metrics.rows_written._value.get() > 0
    async with pool.connection() as conn:
        reserved = dict(await (await conn.execute("SELECT resource_id, reserved FROM resources")).fetchall())
    for rid in resources:
        assert reserved[rid] == (await engine.resource(rid)).reserved


async def test_trimming_stops_below_pending_entries(engine, make_archiver, pool) -> None:
    await create(engine, "solo", 100)
    p = partition_of("solo", PARTITIONS)
    await streams.ensure_groups(engine.redis, range(PARTITIONS))
    await reserve_many(engine, ["solo"], 10)
    # another archiver holds the first 10 entries, unacknowledged
    held = await streams.read(engine.redis, "slow", [p], 5, own_pending=False)
    await reserve_many(engine, ["solo"], 10, prefix="later")
    archiver = await make_archiver("fast", claim_idle_ms=60_000)
    await archiver.drain()
    first_held = held[p][0][0]
    remaining = [sid for sid, _ in await engine.redis.xrange(stream_key(p))]
    assert remaining[0] == first_held  # nothing at or above a pending entry was trimmed
    lag = (await stream_lag(engine.redis, [p]))[p]
    assert lag["entries"] == 5 and lag["seconds"] >= 0
    assert (await streams.archived_marks(engine.redis, [p]))[p][0] == first_held


async def test_odd_entries_are_archived_verbatim(engine, make_archiver, pool) -> None:
    key = stream_key(3)
    odd = [
        {"note": "no type at all"},
        {"type": "X", "quantity": "lots", "ts": "-", "version": "99999999999999999999"},
        {"type": "Y", "reason": "tab\there, newline\nthere, back\\slash, quote\" and NUL\x00", "ts": "12"},
        {"type": "Z", "resource_id": "päivä", "remaining": "-3"},
    ]
    for fields in odd:
        await engine.redis.xadd(key, fields)
    await (await make_archiver()).drain()
    rows = await archived_rows(pool)
    got = sorted(rows.values(), key=lambda f: f.get("type", ""))
    expected = sorted([{k: v.replace("\x00", "\ufffd") for k, v in f.items()} for f in odd],
                      key=lambda f: f.get("type", ""))
    assert got == expected
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT type, quantity, version, remaining, ts_us FROM events ORDER BY ms, seq")
        assert await cur.fetchall() == [
            (None, None, None, None, None), ("X", None, None, None, None),
            ("Y", None, None, None, 12), ("Z", None, None, -3, None)]


async def test_stream_lag_counts_and_ages(engine, make_archiver) -> None:
    assert (await stream_lag(engine.redis, 4)) == {p: {"entries": 0, "seconds": 0.0} for p in range(4)}
    await create(engine, "aged", 10)
    await reserve_many(engine, ["aged"], 3)
    p = partition_of("aged", PARTITIONS)
    await asyncio.sleep(0.05)
    before_group = (await stream_lag(engine.redis, [p]))[p]
    assert before_group["entries"] == 4 and before_group["seconds"] >= 0.05
    await streams.ensure_groups(engine.redis, [p])
    assert (await stream_lag(engine.redis, [p]))[p]["entries"] == 4
    await streams.read(engine.redis, "x", [p], 2, own_pending=False)
    lag = (await stream_lag(engine.redis, [p]))[p]
    assert lag["entries"] == 4 and lag["seconds"] >= 0.05
    archiver = await make_archiver(claim_idle_ms=0)
    await archiver.run_once()
    assert (await stream_lag(engine.redis, [p]))[p] == {"entries": 0, "seconds": 0.0}
    assert archiver.metrics.lag_entries.labels(partition=str(p))._value.get() == 0


@pytest.mark.parametrize("point", ["before_insert", "before_commit"])
async def test_a_failed_batch_is_retried(engine, make_archiver, pool, point) -> None:
    await create(engine, "r", 100)
    await reserve_many(engine, ["r"], 50)
    before = await stream_entries(engine.redis)
    archiver = await make_archiver(batch=10)

    def fail(at: str) -> None:
        if at == point:
            raise RuntimeError("injected")

    archiver._crash.check = fail  # the batch fails inside its transaction
    assert await archiver.run_once() == 0
    assert archiver.metrics.errors.labels(stage="other")._value.get() == 1
    assert await row_counts(pool) == {}
    assert await stream_entries(engine.redis) == before  # nothing acknowledged, nothing trimmed
    archiver._crash.check = lambda _: None
    archiver._resume_at = 0
    await archiver.run_once()
    await assert_archive_complete(engine.redis, pool, before)


async def test_a_stream_that_lost_its_group_is_archived_again(engine, make_archiver, pool) -> None:
    await create(engine, "r", 10)
    archiver = await make_archiver()
    await archiver.drain()
    await reserve_many(engine, ["r"], 3)
    p = partition_of("r", PARTITIONS)
    await engine.redis.xgroup_destroy(stream_key(p), streams.GROUP)  # the data stays
    after = await stream_entries(engine.redis)
    with pytest.raises(streams.GroupsLost):
        await archiver.drain()
    await archiver.drain()  # the state check passes: the group is back
    rows = await archived_rows(pool)
    assert all(key in rows for key in after) and await stream_entries(engine.redis) == {}


async def test_a_server_that_lost_its_data_is_not_archived_and_gets_no_stream(engine, make_archiver, pool) -> None:
    await create(engine, "r", 10)
    archiver = await make_archiver()
    await archiver.drain()
    await engine.redis.flushall()  # the streams, the group, the deployment records are gone
    with pytest.raises(streams.GroupsLost):
        await archiver.drain()
    with pytest.raises(StateError, match="behind the audit"):
        await archiver.drain()
    assert await engine.redis.keys("*") == []  # no stream, no group, no record
    assert await archiver.run_once() == 0 and archiver.refusing
    assert archiver.metrics.state_behind._value.get() == 1
