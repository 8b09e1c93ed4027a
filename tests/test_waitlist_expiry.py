"""Waiting lists at any length (issue 14): entries found by quantity, never
walked past; notified against what is really free; notifications lapse at
server time (lazily, or by the sweep); and all of it replays identically."""

from __future__ import annotations

import json
import time

import pytest
import redis

from resv.archiver.restore import restore
from resv.archiver.sweep import Sweeper
from resv.archiver.verify import verify
from resv.engine import keys
from resv.engine.library import library_source
from resv.scratch import scratch_server
from tests.archiver_support import PARTITIONS
from tests.archiver_support import create as create_resource
from tests.support import call_keys, create, events, fcall, own, reserve, rkeys, snapshot, wkeys
from tests.test_restore import state_of


@pytest.fixture
def r(redis_url: str):
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.execute_command("FUNCTION", "LOAD", "REPLACE", library_source())
    yield client
    client.close()


def server_us(r) -> int:
    s, us = r.time()
    return int(s) * 1_000_000 + int(us)


def wait_past(r, deadline_us: int) -> None:
    """Until the server clock has reached a deadline (short windows only)."""
    while server_us(r) < deadline_us:
        time.sleep(0.01)


def join_many(r, rid: str, n: int, quantity: int, prefix: str) -> None:
    ks = call_keys("resv_wl_join", rid)
    for base in range(0, n, 2000):
        pipe = r.pipeline(transaction=False)
        for i in range(base, min(base + 2000, n)):
            pipe.execute_command("FCALL", "resv_wl_join", len(ks), *ks, rid, f"{prefix}{i}", str(quantity))
        pipe.execute()


def types_since(r, rid: str, start: int) -> list[str]:
    return [e["type"] for e in events(r, rid)[start:]]


@pytest.mark.parametrize("ahead", [1000, 10_000])
def test_an_entry_that_fits_behind_many_too_large_is_notified(r, ahead):
    create(r, "pop", 1, waitlist=True)
    booked = reserve(r, "pop", "x", 1, "q")
    join_many(r, "pop", ahead, 3, "big")
    one = fcall(r, "resv_wl_join", "pop", "one", "1")
    assert one["position"] == str(ahead + 1)
    n = len(events(r, "pop"))
    fcall(r, "resv_cancel", "pop", booked["reservation_id"])
    notified = [e for e in events(r, "pop")[n:] if e["type"] == "WAITLIST_NOTIFIED"]
    assert [e["entry_id"] for e in notified] == [one["entry_id"]]
    assert fcall(r, "resv_wl_position", "pop", one["entry_id"])["status"] == "NOTIFIED"
    first_big = fcall(r, "resv_wl_position", "pop", "pop~w2")
    assert (first_big["status"], first_big["position"]) == ("WAITING", "1")
    assert fcall(r, "resv_resource", "pop")["waitlist_length"] == str(ahead)


def test_what_is_free_accumulates_and_outstanding_notifications_count(r):
    create(r, "acc", 3, waitlist=True)
    seats = [reserve(r, "acc", f"s{i}", 1, f"q{i}")["reservation_id"] for i in range(3)]
    pair = fcall(r, "resv_wl_join", "acc", "pair", "2")
    duo = fcall(r, "resv_wl_join", "acc", "duo", "2")
    fcall(r, "resv_cancel", "acc", seats[0])       # 1 free: nothing fits
    assert fcall(r, "resv_wl_position", "acc", pair["entry_id"])["status"] == "WAITING"
    fcall(r, "resv_cancel", "acc", seats[1])       # 2 free: the pair
    assert fcall(r, "resv_wl_position", "acc", pair["entry_id"])["status"] == "NOTIFIED"
    assert fcall(r, "resv_resource", "acc")["notified"] == "2"
    fcall(r, "resv_cancel", "acc", seats[2])       # 3 free, 2 promised: duo does not fit
    assert fcall(r, "resv_wl_position", "acc", duo["entry_id"])["status"] == "WAITING"
    # the pair leaves: its 2 are free again, duo is notified
    fcall(r, "resv_wl_leave", "acc", pair["entry_id"])
    assert fcall(r, "resv_wl_position", "acc", duo["entry_id"])["status"] == "NOTIFIED"
    # a notification grants no right: anyone may still take the seats
    assert reserve(r, "acc", "walk-in", 3, "w")["decision"] == "CONFIRMED"


def expiry_setup(r, rid: str, window_ms: int = 300):
    """capacity 3 held by three reservations of 1; pair (2) and duo (2) waiting;
    two cancellations notify the pair, a third notifies nobody."""
    fcall(r, "resv_create", rid, "meetup", "3", "", "", "1", "", "", "", str(window_ms))
    seats = [reserve(r, rid, f"s{i}", 1, f"q{i}")["reservation_id"] for i in range(3)]
    pair = fcall(r, "resv_wl_join", rid, "pair", "2")
    duo = fcall(r, "resv_wl_join", rid, "duo", "2")
    for s in seats:
        fcall(r, "resv_cancel", rid, s)
    notified = fcall(r, "resv_wl_position", rid, pair["entry_id"])
    assert notified["status"] == "NOTIFIED"
    assert int(notified["expires_at"]) == int(notified["notified_at"]) + window_ms * 1000
    assert fcall(r, "resv_wl_position", rid, duo["entry_id"])["status"] == "WAITING"
    return pair, duo, int(notified["expires_at"])


def test_expiry_is_lazy_at_the_next_call_and_the_client_may_join_again(r):
    pair, duo, deadline = expiry_setup(r, "lazy")
    # before the deadline a call changes nothing about the pair
    fcall(r, "resv_wl_join", "lazy", "early", "5")
    assert fcall(r, "resv_wl_position", "lazy", pair["entry_id"])["status"] == "NOTIFIED"
    wait_past(r, deadline)
    n = len(events(r, "lazy"))
    again = fcall(r, "resv_wl_join", "lazy", "pair", "2")  # the pair's own call expires it first
    assert again["type"] == "WAITLIST_JOINED" and again["created"] == "1"
    assert again["entry_id"] != pair["entry_id"]
    # the decision is logged first, then its consequences: the expiry, then duo
    logged = events(r, "lazy")[n:]
    assert [e["type"] for e in logged] == ["WAITLIST_JOINED", "WAITLIST_EXPIRED", "WAITLIST_NOTIFIED"]
    assert logged[1]["entry_id"] == pair["entry_id"] and logged[1]["reason"] == "NOTIFY_WINDOW_PASSED"
    assert logged[2]["entry_id"] == duo["entry_id"]
    old = fcall(r, "resv_wl_position", "lazy", pair["entry_id"])
    assert old["status"] == "EXPIRED" and int(old["expired_at"]) >= deadline
    left = fcall(r, "resv_wl_leave", "lazy", pair["entry_id"])
    assert (left["decision"], left["reason"]) == ("REJECTED", "ENTRY_EXPIRED")
    assert fcall(r, "resv_resource", "lazy")["notified"] == "2"  # duo's


def test_a_reservation_after_the_deadline_does_not_fulfil_the_lapsed_entry(r):
    pair, duo, deadline = expiry_setup(r, "late")
    wait_past(r, deadline)
    n = len(events(r, "late"))
    assert reserve(r, "late", "pair", 2, "pair-late")["decision"] == "CONFIRMED"
    assert types_since(r, "late", n) == ["RESERVATION_CONFIRMED", "WAITLIST_EXPIRED"]
    # 1 left, nothing promised: duo (2) does not fit
    assert fcall(r, "resv_wl_position", "late", duo["entry_id"])["status"] == "WAITING"


def test_the_sweep_expires_without_traffic_and_logs_only_what_it_did(r):
    pair, duo, deadline = expiry_setup(r, "sw")
    index = keys.notified_index_key(keys.partition_of("sw", PARTITIONS))
    assert r.zscore(index, "sw") == deadline
    before = snapshot(r)
    early = fcall(r, "resv_wl_sweep", "sw")  # nothing due yet: nothing written
    assert (early["expired"], early["notified"]) == ("0", "0")
    assert snapshot(r) == before
    wait_past(r, deadline)
    n = len(events(r, "sw"))
    swept = fcall(r, "resv_wl_sweep", "sw")
    assert (swept["type"], swept["expired"], swept["notified"]) == ("WAITLIST_SWEPT", "1", "1")
    assert types_since(r, "sw", n) == ["WAITLIST_SWEPT", "WAITLIST_EXPIRED", "WAITLIST_NOTIFIED"]
    assert fcall(r, "resv_wl_position", "sw", pair["entry_id"])["status"] == "EXPIRED"
    duo_now = fcall(r, "resv_wl_position", "sw", duo["entry_id"])
    assert r.zscore(index, "sw") == int(duo_now["expires_at"])  # the index follows
    before = snapshot(r)
    assert fcall(r, "resv_wl_sweep", "sw")["expired"] == "0"
    assert snapshot(r) == before


def test_join_quantities_are_bounded(r):
    create(r, "q", 0, waitlist=True)
    join_many(r, "q", 1, 1, "one")
    for quantity in range(2, 65):
        assert fcall(r, "resv_wl_join", "q", f"c{quantity}", str(quantity))["decision"] == "CONFIRMED"
    before = snapshot(r, streams=False)
    refused = fcall(r, "resv_wl_join", "q", "c65", "65")
    assert (refused["code"], refused["reason"]) == ("INVALID_STATE", "TOO_MANY_QUANTITIES")
    assert snapshot(r, streams=False) == before
    # a quantity already waiting can always join
    assert fcall(r, "resv_wl_join", "q", "another", "7")["decision"] == "CONFIRMED"
    # when a quantity's last entry goes, a new one may come
    fcall(r, "resv_wl_leave", "q", fcall(r, "resv_wl_join", "q", "c64", "64")["entry_id"])
    assert fcall(r, "resv_wl_join", "q", "c65", "65")["decision"] == "CONFIRMED"


def test_a_version_1_waiting_list_is_indexed_on_first_touch(r):
    """State as the library on main before issue 14 left it: wl and we only,
    no notify window, a NOTIFIED entry without a deadline."""
    res, bk, cl, wl, we, _ = rkeys("old")
    now = server_us(r)
    r.hset(res, mapping={"type": "meetup", "capacity": "2", "state": "OPEN", "version": "1", "opens_at": "",
                         "closes_at": "", "waitlist_enabled": "1", "max_per_request": "", "max_per_client": "",
                         "updated_at": str(now), "reserved": "2", "created_at": str(now), "seq": "5"})
    bookings = {"old~1": ("x", 1), "old~2": ("y", 1)}
    for rid_, (client, q) in bookings.items():
        r.hset(bk, rid_, json.dumps({"reservation_id": rid_, "resource_id": "old", "client_id": client,
                                     "quantity": str(q), "status": "CONFIRMED", "confirmed_at": str(now),
                                     "request_id": rid_, "version": "1"}))
        r.hset(cl, client, q)

    def entry(seq: int, client: str, q: int, status: str, **more):
        eid = f"old~w{seq}"
        r.hset(we, f"e:{eid}", json.dumps({"entry_id": eid, "resource_id": "old", "client_id": client,
                                           "quantity": str(q), "status": status, "joined_at": str(now),
                                           **more}))
        r.hset(we, f"c:{client}", eid)
        if status == "WAITING":
            r.zadd(wl, {eid: now + seq})
        return eid

    stale = entry(3, "stale", 1, "NOTIFIED", notified_at=str(now - 3_600_000_000))  # an hour ago
    big = entry(4, "big", 2, "WAITING")
    small = entry(5, "small", 1, "WAITING")
    # a cancel of 1: the stale notification lapses first (15 min window, long
    # past); 1 is free: big (2) keeps its place, small (1) is notified
    n = len(events(r, "old"))
    fcall(r, "resv_cancel", "old", "old~1")
    logged = events(r, "old")[n:]
    assert [(e["type"], e.get("entry_id")) for e in logged] == [
        ("RESERVATION_CANCELLED", None), ("WAITLIST_EXPIRED", stale), ("WAITLIST_NOTIFIED", small)]
    assert fcall(r, "resv_wl_position", "old", big)["position"] == "1"
    state = fcall(r, "resv_resource", "old")
    assert (state["notified"], state["notify_window_ms"]) == ("1", "900000")
    assert r.zrange(wkeys("old")[0], 0, -1, withscores=True) == [("0000000000000004", 2.0)]
    # the stale client may join again (behind big); the other cancel frees 1
    # more, but 1 of the 2 free is promised to small: stale (1) fits, big not
    again = fcall(r, "resv_wl_join", "old", "stale", "1")
    assert again["created"] == "1"
    fcall(r, "resv_cancel", "old", "old~2")
    assert fcall(r, "resv_wl_position", "old", big)["status"] == "WAITING"
    assert fcall(r, "resv_wl_position", "old", again["entry_id"])["status"] == "NOTIFIED"
    for leaving in (small, again["entry_id"]):
        fcall(r, "resv_wl_leave", "old", leaving)
    assert fcall(r, "resv_wl_position", "old", big)["status"] == "NOTIFIED"


async def expiring_activity(engine, r) -> None:
    """Lazy expiries and sweeps, for the replays below."""
    await create_resource(engine, "exp", 3, waitlist_enabled=True, notify_window_ms=200)
    seats = [(await engine.reserve("exp", f"s{i}", 1, f"q{i}")).reservation_id for i in range(3)]
    pair = await engine.join_waitlist("exp", "pair", 2)
    await engine.join_waitlist("exp", "duo", 2)
    for s in seats:
        await engine.cancel(s)
    wait_past(r, (await engine.waitlist_entry(pair.entry_id)).expires_at)
    assert await Sweeper(engine, PARTITIONS).sweep() == 1          # the sweep: pair lapses, duo notified
    await engine.join_waitlist("exp", "pair", 2)                     # joins again
    duo = await engine.waitlist_entry("exp~w5")
    wait_past(r, duo.expires_at)
    await engine.reserve("exp", "solo", 1, "solo")                   # lazily: duo lapses, pair notified
    await engine.configure("exp", 1, {"notify_window_ms": 60_000})


async def test_expiry_replays_identically_and_restores(engine, make_archiver, pool, redis_url) -> None:
    sync = redis.Redis.from_url(redis_url, decode_responses=True)
    await expiring_activity(engine, sync)
    kinds = [e["type"] for e in events(sync, "exp")]
    assert kinds.count("WAITLIST_EXPIRED") == 2 and kinds.count("WAITLIST_SWEPT") == 1
    streams_only = await verify(engine.redis, None, PARTITIONS, scratch_server=scratch_server)
    assert streams_only.mismatches == [] and streams_only.resources == 1
    await (await make_archiver()).drain()
    assert (await verify(engine.redis, pool, PARTITIONS, scratch_server=scratch_server)).ok
    async with pool.connection() as conn:
        rows = await (await conn.execute(
            "SELECT client_id, status, expired_at IS NOT NULL, expires_at IS NOT NULL FROM waitlist_entries"
            " ORDER BY entry_id")).fetchall()
        window = await (await conn.execute(
            "SELECT notify_window_ms FROM resources WHERE resource_id = 'exp'")).fetchone()
    assert rows == [("pair", "EXPIRED", True, True), ("duo", "EXPIRED", True, True),
                    ("pair", "NOTIFIED", False, True)]
    assert window == (60_000,)
    before = state_of(sync)  # the deployment records are rewritten by restore, with the same id
    own(sync).flushall()
    report = await restore(engine.redis, pool, PARTITIONS, scratch_server=scratch_server)
    assert report.mismatches == []
    assert state_of(sync) == before
    sync.close()
