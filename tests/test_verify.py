"""`resv verify`: the archived log replayed through the same Lua reproduces
every decision; a tampered row, a missing row or a diverging live state is
named."""

from __future__ import annotations

import asyncio
import time

import pytest

from resv.archiver.replay import (
    CLOCK_BEGIN,
    CLOCK_END,
    CLOCK_KEY,
    Planner,
    replay_source,
)
from resv.archiver.timeline import event_from_entry
from resv.archiver.verify import verify
from resv.cli import main
from resv.engine import Engine, ResourceSpec, Settings
from resv.engine.codes import EventType, Reason
from resv.engine.keys import resource_keys, stream_key
from resv.engine.library import library_source
from resv.scratch import scratch_server
from tests.archiver_support import (
    PARTITIONS,
    create,
    entries_added,
)


async def every_kind_of_decision(engine: Engine, *, actors: bool = True, release: int | None = None) -> None:
    """release 1 refused an inverted window as malformed and had no notify
    window, sweep or quantity index: its run leaves those calls out."""
    now = int(time.time() * 1_000_000)
    await create(engine, "a", 3, waitlist_enabled=True, max_per_request=2)
    await engine.create_resource(ResourceSpec(resource_id="a", type="meetup", capacity=9))  # exists
    first = await engine.reserve("a", "alice", 2, "r1")
    await engine.reserve("a", "alice", 2, "r1")                  # replayed
    await engine.reserve("a", "alice", 1, "r1")                  # request id reused
    await engine.reserve("a", "bob", 3, "r2")                    # over the request limit
    await engine.reserve("a", "bob", 2, "r3")                    # insufficient
    carol = await engine.join_waitlist("a", "carol", 1)
    await engine.join_waitlist("a", "carol", 1)                  # join replayed
    dave = await engine.join_waitlist("a", "dave", 2)
    await engine.cancel(first.reservation_id)                    # notifies carol and dave
    await engine.cancel(first.reservation_id)                    # cancel replayed
    await engine.cancel("a~99")                                  # unknown reservation
    await engine.reserve("a", "carol", 1, "r4")                  # fulfils carol's entry
    await engine.leave_waitlist(dave.entry_id)
    await engine.leave_waitlist(dave.entry_id)                   # leave replayed
    await engine.leave_waitlist(carol.entry_id)                  # fulfilled: refused
    await engine.leave_waitlist("a~w99")                         # unknown entry
    await engine.configure("a", 1, {"capacity": 5})
    await engine.configure("a", 1, {"capacity": 6})              # version mismatch
    await engine.configure("a", 2, {"capacity": 0})              # below reserved
    await engine.configure("ghost", 1, {"capacity": 1})          # unknown resource
    await engine.close("a", 2)
    await engine.reserve("a", "eve", 1, "r5")                    # closed
    await engine.join_waitlist("a", "eve", 1)                    # closed
    await engine.open("a", 3)
    await engine.reserve("ghost", "x", 1, "r6")
    await engine.join_waitlist("ghost", "x", 1)
    await create(engine, "later", 5, opens_at=now + 3_600_000_000)
    await engine.reserve("later", "x", 1, "r7")                  # window not open
    if release != 1:
        await engine.configure("later", 1, {"closes_at": now})   # would close before it opens
    await engine.join_waitlist("later", "x", 1)                  # waiting list disabled
    await create(engine, "e", 0)
    await engine.reserve("e", "x", 1, "r14")                     # sold out
    await create(engine, "past", 5, opens_at=1, closes_at=now - 1000)
    await engine.reserve("past", "x", 1, "r8")                   # window closed
    await create(engine, "d", 5, max_per_client=2, waitlist_enabled=True)
    await engine.reserve("d", "x", 2, "r9")
    await engine.reserve("d", "x", 1, "r10")                     # over the client limit
    await engine.reserve("d", "y", 3, "r11")                     # over the client limit too
    await engine.join_waitlist("d", "w", 1)
    await engine.join_waitlist("d", "v", 1)
    await engine.configure("d", 1, {"capacity": 7, "max_per_request": 3})  # notifies w and v
    await engine.reserve("ghost", "x", 1, "r6")                  # unknown again: decided afresh
    if actors:  # (release 1 takes no actor: tests/test_upgrade.py)
        await engine.reserve("d", "u", 1, "r20", actor="client#1")  # another application's r20: its own
        await engine.reserve("d", "u", 1, "r20", actor="client#1")  # replayed in that scope
    if release == 1:
        return
    # notifications that lapse: the sweep expires them, a leave then is refused
    await create(engine, "w", 1, waitlist_enabled=True, notify_window_ms=1)
    held = await engine.reserve("w", "x", 1, "r30")
    lapsing = await engine.join_waitlist("w", "y", 1)
    await engine.cancel(held.reservation_id)                     # notifies y, for 1 ms
    await asyncio.sleep(0.01)
    await engine.sweep_waitlist("w")                             # expires y's notification
    await engine.leave_waitlist(lapsing.entry_id)                # expired: refused
    # the waiting list indexes at most 64 distinct quantities
    await create(engine, "q", 0, waitlist_enabled=True)
    for n in range(1, 66):
        await engine.join_waitlist("q", f"q{n}", n)              # the 65th is refused


def test_replay_source_swaps_only_the_clock() -> None:
    source = library_source()
    replayed = replay_source(source)
    assert CLOCK_KEY in replayed and "redis.call('TIME')" not in replayed
    before, after = source.split(CLOCK_BEGIN)[0], source.split(CLOCK_END)[1]
    assert replayed.startswith(before) and replayed.endswith(after)
    with pytest.raises(ValueError):
        replay_source(source.replace(CLOCK_BEGIN, "-- moved"))


async def test_every_kind_of_decision_is_made(engine) -> None:
    """The log the tests below replay holds every event type and reason the
    Lua has (engine/codes.py, itself checked against the Lua)."""
    await every_kind_of_decision(engine)
    logged = [f for p in range(PARTITIONS) for _, f in await engine.redis.xrange(stream_key(p))]
    assert {f["type"] for f in logged} == {t.value for t in EventType}
    assert {f["reason"] for f in logged if "reason" in f} == {r.value for r in Reason}


async def test_every_decision_is_reproduced(engine, make_archiver, pool) -> None:
    await every_kind_of_decision(engine)
    await (await make_archiver()).drain()
    await engine.reserve("d", "z", 1, "r12")  # in the stream only
    await engine.reserve("a", "fred", 1, "r13")
    report = await verify(engine.redis, pool, PARTITIONS, scratch_server=scratch_server)
    assert report.mismatches == []
    assert report.events == sum((await entries_added(engine.redis)).values())
    assert report.resources == 8  # a, later, past, d, e, w, q, and ghost (absent on both sides)
    # refused configures log what was asked: nothing is inferred
    assert report.inferred == 0
    only_d = await verify(engine.redis, pool, PARTITIONS, resource_id="d", scratch_server=scratch_server)
    assert only_d.mismatches == [] and only_d.resources == 1 and only_d.events == 12


async def test_streams_alone_before_any_archiving(engine) -> None:
    await every_kind_of_decision(engine)
    report = await verify(engine.redis, None, PARTITIONS, scratch_server=scratch_server)
    assert report.mismatches == [] and report.events == sum((await entries_added(engine.redis)).values())


@pytest.mark.parametrize("tamper, expected", [
    ("UPDATE events SET remaining = remaining + 1 WHERE request_id = 'r9'",
     "remaining: logged 4, replayed 3 [r9]"),
    ("UPDATE events SET decision = 'REJECTED' WHERE request_id = 'r9'",
     "decision: logged REJECTED, replayed CONFIRMED [r9]"),
    ("UPDATE events SET fields = jsonb_set(fields, '{reason}', '\"SOLD_OUT\"') WHERE request_id = 'r10'",
     "fields.reason: logged SOLD_OUT, replayed OVER_CLIENT_LIMIT [r10]"),
])
async def test_a_tampered_row_is_named(engine, make_archiver, pool, database_url, tamper, expected, capsys) -> None:
    await every_kind_of_decision(engine)
    await (await make_archiver()).drain()
    async with pool.connection() as conn:
        assert (await conn.execute(tamper)).rowcount == 1
    report = await verify(engine.redis, pool, PARTITIONS, scratch_server=scratch_server)
    assert [m.what for m in report.mismatches] == [expected]
    argv = ["verify", "--redis-url", engine.settings.redis_url, "--database-url", database_url]
    assert await asyncio.to_thread(main, argv) == 1
    out = capsys.readouterr().out
    assert "MISMATCH p" in out and expected in out and out.rstrip().endswith("1 mismatches")


async def test_a_missing_row_breaks_the_replay(engine, make_archiver, pool) -> None:
    await every_kind_of_decision(engine)
    await (await make_archiver()).drain()
    async with pool.connection() as conn:
        await conn.execute("DELETE FROM events WHERE request_id = 'r9'")
    report = await verify(engine.redis, pool, PARTITIONS, resource_id="d", scratch_server=scratch_server)
    whats = [m.what for m in report.mismatches]
    # what follows no longer adds up: x's next request is now within its limit
    assert "decision: logged REJECTED, replayed CONFIRMED [r10]" in whats
    assert any(m.event_type == "STATE" and m.what.startswith("resource d: reserved replayed")
               for m in report.mismatches)


async def test_live_state_is_compared(engine, make_archiver, pool, database_url, capsys) -> None:
    await every_kind_of_decision(engine)
    await (await make_archiver()).drain()
    assert (await verify(engine.redis, pool, PARTITIONS, scratch_server=scratch_server)).ok
    res_key = resource_keys("d", PARTITIONS)[0]
    await engine.redis.hset(res_key, "reserved", "1")
    report = await verify(engine.redis, pool, PARTITIONS, scratch_server=scratch_server)
    assert [m.what for m in report.mismatches] == ["resource d: reserved replayed 3, live 1"]
    assert await asyncio.to_thread(main, ["verify", "--resource", "a", "--redis-url", engine.settings.redis_url,
                                          "--database-url", database_url]) == 0
    assert capsys.readouterr().out.rstrip().endswith("0 mismatches")


async def test_expired_idempotency_records_are_replayed_as_expired(redis_url, make_archiver, pool) -> None:
    """A retry after its record expired is decided afresh; the replay expires
    the record at the same recorded instant, from the ttl the decision logged
    (whatever RESV_IDEMPOTENCY_TTL_MS verify itself runs with)."""
    async with Engine(Settings(redis_url=redis_url, partitions=PARTITIONS, idempotency_ttl_ms=30)) as short:
        await create(short, "t", 5)
        first = await short.reserve("t", "al", 1, "same")
        await asyncio.sleep(0.1)
        again = await short.reserve("t", "al", 1, "same")
        assert again.reservation_id != first.reservation_id and not again.replayed
        assert (await verify(short.redis, None, PARTITIONS, idempotency_ttl_ms=30, scratch_server=scratch_server)).ok
        assert (await verify(short.redis, None, PARTITIONS, scratch_server=scratch_server)).ok  # logged ttl wins over the 24 h default


def test_logged_inputs_are_used_when_the_events_carry_them() -> None:
    """With the fields asked of the Lua (expected_version and requested on
    RULES_REJECTED, idempotency_ttl_ms on recorded decisions), nothing is inferred."""
    refused = event_from_entry(0, "1-0", {
        "type": "RULES_REJECTED", "decision": "REJECTED", "code": "INVALID_STATE",
        "reason": "CAPACITY_BELOW_RESERVED", "resource_id": "a", "ts": "5", "version": "2",
        "remaining": "1", "expected_version": "2", "requested": '["capacity","3","max_per_request",""]'})
    (call,) = Planner(86_400_000).plan(0, [refused])
    assert call.args == ("a", "2", "capacity", "3", "max_per_request", "") and not call.inferred
    first, retry = (event_from_entry(0, f"{n}-0", {
        "type": "RESERVATION_CONFIRMED", "decision": "CONFIRMED", "resource_id": "a", "client_id": "c",
        "quantity": "1", "request_id": "q", "ts": str(ts), "idempotency_ttl_ms": "2"}) for n, ts in ((2, 1000), (3, 3000)))
    calls = Planner(86_400_000).plan(0, [first, retry])
    assert calls[0].expire_first == () and calls[1].expire_first == (calls[1].keys[6],)
