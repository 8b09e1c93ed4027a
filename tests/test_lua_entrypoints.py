"""Each Lua entry point alone, against a real server: the happy path and every
rejection path. A rejection changes nothing but its one logged event."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
import redis

from resv.engine.library import library_version
from tests.conftest import empty_backend
from tests.support import as_dict, create, events, fcall, reserve, rkeys, snapshot, wkeys


@pytest.fixture(params=["server", "cluster"])
def r(request: pytest.FixtureRequest):
    """A client of the session server, or of the session cluster (every key
    of a call in one slot; reads of the keyspace gather every primary)."""
    from resv.engine.library import library_source

    if request.param == "cluster":
        cluster = request.getfixturevalue("redis_cluster")
        empty_backend(SimpleNamespace(url=cluster.url, cluster=cluster))
        client = redis.RedisCluster.from_url(cluster.url, decode_responses=True)
    else:
        client = redis.Redis.from_url(request.getfixturevalue("redis_url"), decode_responses=True)
        client.execute_command("FUNCTION", "LOAD", "REPLACE", library_source())
    yield client
    client.close()


def assert_only_event_added(r, before: dict, event_type: str, reason: str | None = None) -> dict:
    """The keyspace equals `before` except one new event in one stream."""
    after = snapshot(r)
    assert {k: v for k, v in after.items() if v[0] != "stream"} == {
        k: v for k, v in before.items() if v[0] != "stream"
    }
    added = []
    for key, (kind, entries) in after.items():
        if kind != "stream":
            continue
        old = before.get(key, ("stream", []))[1]
        assert entries[: len(old)] == old
        added += entries[len(old):]
    assert len(added) == 1, added
    ev = added[0][1]
    assert ev["type"] == event_type
    if reason:
        assert ev["reason"] == reason
    return ev


def now_us() -> int:
    return int(time.time() * 1_000_000)


def test_create_then_read(r):
    d = create(r, "conf", 30, type_="training", waitlist=True, max_per_request="4", max_per_client="6")
    assert d["type"] == "RESOURCE_CREATED" and d["decision"] == "CONFIRMED"
    assert d["version"] == "1" and d["remaining"] == "30" and d["state"] == "OPEN"
    state = fcall(r, "resv_resource", "conf")
    assert state["capacity"] == "30" and state["reserved"] == "0" and state["status"] == "OPEN"
    assert state["resource_type"] == "training" and state["max_per_client"] == "6"
    assert state["waitlist_enabled"] == "1" and state["waitlist_length"] == "0"
    ev = events(r, "conf")
    assert [e["type"] for e in ev] == ["RESOURCE_CREATED"]
    assert int(ev[0]["ts"]) == int(state["created_at"])


def test_create_existing_is_rejected_and_changes_nothing(r):
    create(r, "dup", 5)
    before = snapshot(r)
    d = create(r, "dup", 99)
    assert (d["decision"], d["code"], d["reason"]) == ("REJECTED", "INVALID_STATE", "ALREADY_EXISTS")
    assert_only_event_added(r, before, "RESOURCE_REJECTED", "ALREADY_EXISTS")
    assert fcall(r, "resv_resource", "dup")["capacity"] == "5"


def test_reserve_confirms_and_uses_server_time(r):
    create(r, "m", 3)
    t0 = int(r.time()[0]) * 1_000_000
    d = reserve(r, "m", "alice", 2, "req-1")
    assert (d["decision"], d["reason"], d["remaining"], d["replayed"]) == ("CONFIRMED", "CONFIRMED", "1", "0")
    assert d["reservation_id"] == "m~1" and d["version"] == "1"
    assert t0 <= int(d["ts"]) <= t0 + 5_000_000
    b = fcall(r, "resv_reservation", "m", d["reservation_id"])
    assert b["status"] == "CONFIRMED" and b["quantity"] == "2" and b["client_id"] == "alice"
    assert b["confirmed_at"] == d["ts"]


@pytest.mark.parametrize(
    "setup, qty, code, reason",
    [
        (dict(capacity=0), 1, "RESOURCE_FULL", "SOLD_OUT"),
        (dict(capacity=2), 3, "RESOURCE_FULL", "INSUFFICIENT_CAPACITY"),
        (dict(capacity=9, max_per_request="2"), 3, "INVALID_STATE", "OVER_REQUEST_LIMIT"),
        (dict(capacity=9, opens_at="FUTURE"), 1, "RESOURCE_CLOSED", "WINDOW_NOT_OPEN"),
        (dict(capacity=9, closes_at="PAST"), 1, "RESOURCE_CLOSED", "WINDOW_CLOSED"),
    ],
)
def test_reserve_rejections_change_nothing(r, setup, qty, code, reason):
    if setup.get("opens_at") == "FUTURE":
        setup["opens_at"] = str(now_us() + 3_600_000_000)
    if setup.get("closes_at") == "PAST":
        setup["opens_at"], setup["closes_at"] = "1", str(now_us() - 1_000_000)
    create(r, "x", **setup)
    before = snapshot(r)
    d = reserve(r, "x", "bob", qty, "rq")
    assert (d["decision"], d["code"], d["reason"]) == ("REJECTED", code, reason)
    # the rejection is remembered for retries (idempotency record) and logged
    after = snapshot(r)
    assert set(after) - set(before) == {"resv:{p%s}:req:x:rq" % rkeys("x")[0].split("{p")[1].split("}")[0]}
    r.delete(*(set(after) - set(before)))
    assert_only_event_added(r, before, "RESERVATION_REJECTED", reason)


def test_reserve_closed_resource(r):
    create(r, "c", 5)
    d = fcall(r, "resv_close", "c", "1")
    assert d["type"] == "RULES_CHANGED" and d["state"] == "CLOSED" and d["version"] == "2"
    res = reserve(r, "c", "bob", 1, "q")
    assert (res["code"], res["reason"], res["version"]) == ("RESOURCE_CLOSED", "STATE_CLOSED", "2")
    assert fcall(r, "resv_open", "c", "2")["state"] == "OPEN"
    assert reserve(r, "c", "bob", 1, "q2")["decision"] == "CONFIRMED"


def test_unknown_resource(r):
    d = reserve(r, "ghost", "bob", 1, "q")
    assert (d["decision"], d["code"], d["reason"]) == ("REJECTED", "INVALID_STATE", "UNKNOWN_RESOURCE")
    assert fcall(r, "resv_resource", "ghost") == {}
    assert fcall(r, "resv_configure", "ghost", "1", "capacity", "3")["reason"] == "UNKNOWN_RESOURCE"
    assert fcall(r, "resv_wl_join", "ghost", "bob", "1")["reason"] == "UNKNOWN_RESOURCE"
    assert fcall(r, "resv_cancel", "ghost", "ghost~1")["reason"] == "UNKNOWN_RESERVATION"
    assert r.keys("resv:*res:ghost") == []


def test_per_client_limit_counts_confirmed_total(r):
    create(r, "pc", 10, max_per_client="3")
    assert reserve(r, "pc", "al", 2, "a")["decision"] == "CONFIRMED"
    d = reserve(r, "pc", "al", 2, "b")
    assert d["reason"] == "OVER_CLIENT_LIMIT" and d["code"] == "INVALID_STATE"
    assert reserve(r, "pc", "al", 1, "c")["decision"] == "CONFIRMED"
    assert reserve(r, "pc", "bo", 3, "d")["decision"] == "CONFIRMED"
    # cancelling gives the client its allowance back
    fcall(r, "resv_cancel", "pc", "pc~1")
    assert reserve(r, "pc", "al", 2, "e")["decision"] == "CONFIRMED"


def test_idempotent_retry_and_reuse(r):
    create(r, "i", 5)
    first = reserve(r, "i", "al", 2, "same")
    before = snapshot(r)
    again = reserve(r, "i", "al", 2, "same")
    assert again["replayed"] == "1"
    assert {k: v for k, v in again.items() if k != "replayed"} == {k: v for k, v in first.items() if k != "replayed"}
    assert_only_event_added(r, before, "RESERVATION_REPLAYED")
    before = snapshot(r)
    other = reserve(r, "i", "al", 3, "same")
    assert (other["decision"], other["reason"]) == ("REJECTED", "REQUEST_ID_REUSED")
    assert_only_event_added(r, before, "RESERVATION_REJECTED", "REQUEST_ID_REUSED")
    assert fcall(r, "resv_resource", "i")["reserved"] == "2"


def test_idempotency_record_expires(r):
    create(r, "ttl", 5)
    req = "resv:{p%s}:req:ttl:q" % rkeys("ttl")[0].split("{p")[1].split("}")[0]
    ks = rkeys("ttl") + [req] + wkeys("ttl")
    r.execute_command("FCALL", "resv_reserve", 10, *ks, "ttl", "al", "1", "q", "50")
    assert 0 < r.pttl(req) <= 50
    time.sleep(0.1)
    assert r.exists(req) == 0
    d = r.execute_command("FCALL", "resv_reserve", 10, *ks, "ttl", "al", "1", "q")
    assert d[d.index("replayed") + 1] == "0"
    assert 86_000_000 < r.pttl(req) <= 86_400_000


def test_cancel_frees_capacity_and_is_idempotent(r):
    create(r, "cx", 1)
    d = reserve(r, "cx", "al", 1, "q")
    assert reserve(r, "cx", "bo", 1, "q2")["reason"] == "SOLD_OUT"
    c = fcall(r, "resv_cancel", "cx", d["reservation_id"])
    assert (c["type"], c["status"], c["remaining"]) == ("RESERVATION_CANCELLED", "CANCELLED", "1")
    before = snapshot(r)
    c2 = fcall(r, "resv_cancel", "cx", d["reservation_id"])
    assert c2["type"] == "CANCEL_REPLAYED" and c2["cancelled_at"] == c["cancelled_at"]
    assert_only_event_added(r, before, "CANCEL_REPLAYED")
    before = snapshot(r)
    u = fcall(r, "resv_cancel", "cx", "cx~99")
    assert (u["decision"], u["reason"]) == ("REJECTED", "UNKNOWN_RESERVATION")
    assert_only_event_added(r, before, "CANCEL_REJECTED")
    assert reserve(r, "cx", "bo", 1, "q3")["decision"] == "CONFIRMED"


def test_configure_cas_and_capacity_floor(r):
    create(r, "cf", 5)
    reserve(r, "cf", "al", 4, "q")
    d = fcall(r, "resv_configure", "cf", "1", "capacity", "8", "max_per_request", "2")
    assert d["type"] == "RULES_CHANGED" and d["version"] == "2" and d["capacity"] == "8"
    before = snapshot(r)
    stale = fcall(r, "resv_configure", "cf", "1", "capacity", "9")
    assert (stale["decision"], stale["reason"], stale["version"]) == ("REJECTED", "VERSION_MISMATCH", "2")
    assert_only_event_added(r, before, "RULES_REJECTED", "VERSION_MISMATCH")
    before = snapshot(r)
    low = fcall(r, "resv_configure", "cf", "2", "capacity", "3")
    assert low["reason"] == "CAPACITY_BELOW_RESERVED"
    assert_only_event_added(r, before, "RULES_REJECTED", "CAPACITY_BELOW_RESERVED")
    # '' clears an optional rule
    d = fcall(r, "resv_configure", "cf", "2", "max_per_request", "", "state", "CLOSED")
    assert d["version"] == "3" and "max_per_request" not in {k for k, v in d.items() if v}
    assert d["state"] == "CLOSED"


@pytest.mark.parametrize("stored", ["none", "stale", "current"])
def test_configure_with_an_inverted_window_in_the_call_is_malformed(r, stored):
    """Whatever is stored (no resource, another version, this one), a call
    that itself asks for closes_at <= opens_at writes nothing and logs nothing."""
    if stored != "none":
        create(r, "win", 5)
    version = "7" if stored == "stale" else "1"
    before = snapshot(r)
    for opens, closes in (("9", "3"), ("5", "5")):
        with pytest.raises(redis.ResponseError, match="^BAD_ARGUMENT opens_at must be before closes_at"):
            fcall(r, "resv_configure", "win", version, "capacity", "4", "opens_at", opens, "closes_at", closes)
    assert snapshot(r) == before


def test_configure_inverting_the_stored_window_is_a_logged_rejection(r):
    create(r, "win", 5, opens_at="1000", closes_at="9000")
    before = snapshot(r)
    d = fcall(r, "resv_configure", "win", "1", "closes_at", "1000")
    assert (d["type"], d["decision"], d["code"], d["reason"]) == (
        "RULES_REJECTED", "REJECTED", "INVALID_STATE", "WINDOW_INVERTED")
    assert (d["version"], d["remaining"], d["expected_version"]) == ("1", "5", "1")
    ev = assert_only_event_added(r, before, "RULES_REJECTED", "WINDOW_INVERTED")
    assert ev["requested"] == '["closes_at","1000"]' and ev == {**{k: v for k, v in d.items() if v}, "lib": str(library_version())}
    # clearing one bound together with moving the other is no inversion
    d = fcall(r, "resv_configure", "win", "1", "opens_at", "", "closes_at", "500")
    assert (d["type"], d["opens_at"], d["closes_at"]) == ("RULES_CHANGED", "", "500")
    before = snapshot(r)
    d = fcall(r, "resv_configure", "win", "2", "opens_at", "500")
    assert d["reason"] == "WINDOW_INVERTED" and d["version"] == "2"
    assert_only_event_added(r, before, "RULES_REJECTED", "WINDOW_INVERTED")


def test_waitlist_join_position_leave(r):
    create(r, "w", 1, waitlist=True)
    a = fcall(r, "resv_wl_join", "w", "al", "1")
    b = fcall(r, "resv_wl_join", "w", "bo", "2")
    assert (a["status"], a["position"], a["created"]) == ("WAITING", "1", "1")
    assert b["position"] == "2"
    again = fcall(r, "resv_wl_join", "w", "al", "5")
    assert again["entry_id"] == a["entry_id"] and again["created"] == "0"
    assert again["type"] == "WAITLIST_JOIN_REPLAYED"
    left = fcall(r, "resv_wl_leave", "w", a["entry_id"])
    assert (left["type"], left["status"]) == ("WAITLIST_LEFT", "LEFT")
    assert fcall(r, "resv_wl_position", "w", b["entry_id"])["position"] == "1"
    assert fcall(r, "resv_wl_leave", "w", a["entry_id"])["type"] == "WAITLIST_LEAVE_REPLAYED"
    assert fcall(r, "resv_wl_leave", "w", "w~w77")["reason"] == "UNKNOWN_ENTRY"
    # after leaving, joining makes a new entry at the back
    c = fcall(r, "resv_wl_join", "w", "al", "1")
    assert c["entry_id"] != a["entry_id"] and c["position"] == "2"


@pytest.mark.parametrize(
    "setup, reason, code",
    [
        (dict(waitlist=False), "WAITLIST_DISABLED", "INVALID_STATE"),
        (dict(waitlist=True, max_per_request="1"), "OVER_REQUEST_LIMIT", "INVALID_STATE"),
        (dict(waitlist=True, closed=True), "STATE_CLOSED", "RESOURCE_CLOSED"),
    ],
)
def test_waitlist_join_rejections_change_nothing(r, setup, reason, code):
    setup = dict(setup)  # the parameter is shared by the server and cluster runs
    closed = setup.pop("closed", False)
    create(r, "wj", 1, **setup)
    if closed:
        fcall(r, "resv_close", "wj", "1")
    before = snapshot(r)
    d = fcall(r, "resv_wl_join", "wj", "al", "2")
    assert (d["decision"], d["code"], d["reason"]) == ("REJECTED", code, reason)
    assert_only_event_added(r, before, "WAITLIST_REJECTED", reason)


def test_freed_capacity_notifies_in_order_skipping_too_large(r):
    create(r, "n", 3, waitlist=True)
    booked = reserve(r, "n", "x", 3, "q")
    big = fcall(r, "resv_wl_join", "n", "big", "3")
    one = fcall(r, "resv_wl_join", "n", "one", "1")
    two = fcall(r, "resv_wl_join", "n", "two", "1")
    three = fcall(r, "resv_wl_join", "n", "three", "1")
    fcall(r, "resv_cancel", "n", booked["reservation_id"])
    notified = [e["entry_id"] for e in events(r, "n") if e["type"] == "WAITLIST_NOTIFIED"]
    # 3 freed: "big" (3) fits first and takes the whole freed capacity
    assert notified == [big["entry_id"]]
    assert fcall(r, "resv_wl_position", "n", one["entry_id"])["position"] == "1"
    # big's notification is outstanding: a freeing of 2 frees nothing that is not promised
    reserve(r, "n", "y", 2, "q2")
    fcall(r, "resv_cancel", "n", "n~6")
    notified = [e["entry_id"] for e in events(r, "n") if e["type"] == "WAITLIST_NOTIFIED"]
    assert notified == [big["entry_id"]]
    # big leaves: its 3 are free again; one, two and three fit, in join order
    fcall(r, "resv_wl_leave", "n", big["entry_id"])
    notified = [e["entry_id"] for e in events(r, "n") if e["type"] == "WAITLIST_NOTIFIED"]
    assert notified == [big["entry_id"], one["entry_id"], two["entry_id"], three["entry_id"]]
    n1 = fcall(r, "resv_wl_position", "n", one["entry_id"])
    assert n1["status"] == "NOTIFIED" and n1["notified_at"] and n1["position"] == ""
    assert int(n1["expires_at"]) == int(n1["notified_at"]) + 900_000_000


def test_too_large_entry_keeps_its_place(r):
    create(r, "k", 2, waitlist=True)
    d = reserve(r, "k", "x", 1, "a")
    reserve(r, "k", "y", 1, "b")
    big = fcall(r, "resv_wl_join", "k", "big", "2")
    small = fcall(r, "resv_wl_join", "k", "small", "1")
    fcall(r, "resv_cancel", "k", d["reservation_id"])
    assert fcall(r, "resv_wl_position", "k", big["entry_id"])["position"] == "1"
    assert fcall(r, "resv_wl_position", "k", small["entry_id"])["status"] == "NOTIFIED"


def test_capacity_raise_notifies_and_reserve_fulfils(r):
    create(r, "up", 1, waitlist=True)
    reserve(r, "up", "x", 1, "a")
    e = fcall(r, "resv_wl_join", "up", "al", "2")
    d = fcall(r, "resv_configure", "up", "1", "capacity", "2")
    assert [ev["type"] for ev in events(r, "up")][-1] == "RULES_CHANGED"  # 1 free: 2 does not fit
    # what is free accumulates: +1 then +1 makes 2 free
    d = fcall(r, "resv_configure", "up", "2", "capacity", "3")
    assert d["version"] == "3"
    assert events(r, "up")[-1]["type"] == "WAITLIST_NOTIFIED"
    assert fcall(r, "resv_resource", "up")["notified"] == "2"
    res = reserve(r, "up", "al", 2, "b")
    assert res["decision"] == "CONFIRMED"
    assert events(r, "up")[-1]["type"] == "WAITLIST_FULFILLED"
    assert fcall(r, "resv_resource", "up")["notified"] == "0"
    st = fcall(r, "resv_wl_position", "up", e["entry_id"])
    assert st["status"] == "FULFILLED"
    assert fcall(r, "resv_wl_leave", "up", e["entry_id"])["reason"] == "ENTRY_FULFILLED"


def test_every_decision_records_its_version(r):
    create(r, "v", 5)
    fcall(r, "resv_configure", "v", "1", "capacity", "6")
    reserve(r, "v", "al", 1, "a")
    fcall(r, "resv_close", "v", "2")
    reserve(r, "v", "al", 1, "b")
    evs = events(r, "v")
    assert [(e["type"], e["version"]) for e in evs] == [
        ("RESOURCE_CREATED", "1"), ("RULES_CHANGED", "2"), ("RESERVATION_CONFIRMED", "2"),
        ("RULES_CHANGED", "3"), ("RESERVATION_REJECTED", "3"),
    ]
    ts = [int(e["ts"]) for e in evs]
    assert ts == sorted(ts)


def test_waitlist_lists_the_waiting_in_order_and_writes_nothing(r):
    create(r, "line", 1, waitlist=True)
    reserve(r, "line", "x", 1, "q1")
    joined = [fcall(r, "resv_wl_join", "line", c, "1")["entry_id"] for c in ("a", "b", "c", "d")]
    fcall(r, "resv_wl_leave", "line", joined[1])  # b leaves: c and d move up
    ks = rkeys("line")
    before = snapshot(r)
    reply = r.execute_command("FCALL_RO", "resv_waitlist", len(ks), *ks, "line", "0", "10")
    assert reply[0] == 3
    page = [as_dict(e) for e in reply[1:]]
    assert [(e["entry_id"], e["client_id"], e["position"], e["status"]) for e in page] == [
        (joined[0], "a", "1", "WAITING"), (joined[2], "c", "2", "WAITING"), (joined[3], "d", "3", "WAITING")]
    second = r.execute_command("FCALL_RO", "resv_waitlist", len(ks), *ks, "line", "1", "1")
    assert second[0] == 3 and as_dict(second[1])["entry_id"] == joined[2]
    assert snapshot(r) == before
    ks = rkeys("nothing")
    assert r.execute_command("FCALL_RO", "resv_waitlist", len(ks), *ks, "nothing", "0", "10") == []
