"""Hypothesis stateful test: the Lua against a pure-Python model of the rules.

Random sequences of create / configure / close / open / reserve / retry /
cancel / join / leave / sweep / pause; after every step the server's decision
must equal the model's, capacity is never exceeded, the waiting list keeps
server-time order, and versions only grow.

Waiting list (issue 14): every write call first lapses the notifications
whose deadline has come (at the call's server time, read from its logged
event), then decides, then, when capacity may have freed, notifies in join
order the WAITING entries that fit in capacity - reserved - outstanding
notifications. The events each call appends after its decision must be
exactly the model's expiries then notifications, in that order: what is
free is never over-notified and no entry that fits is passed over for a
later one. Short notify windows (20-60 ms) and pauses make lapses happen.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import redis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from resv.engine.library import library_source
from resv.engine import keys
from tests.support import PARTITIONS, events, fcall, own, reserve

RESOURCES = ["a", "b"]
CLIENTS = ["al", "bo", "cy", "di", "ed", "fy"]
PAST = str(int(time.time() * 1e6) - 3_600_000_000)


@dataclass
class Res:
    capacity: int
    waitlist: bool
    max_per_request: int | None
    max_per_client: int | None
    window_closed: bool
    notify_window_ms: int = 900_000
    state: str = "OPEN"
    version: int = 1
    reserved: int = 0
    per_client: dict = field(default_factory=dict)
    waiting: list = field(default_factory=list)  # entry ids in order
    entries: dict = field(default_factory=dict)  # entry id -> [client, qty, status]
    deadlines: dict = field(default_factory=dict)  # NOTIFIED entry id -> deadline (us)
    bookings: dict = field(default_factory=dict)  # reservation id -> [client, qty, status]


class Model(RuleBasedStateMachine):
    url: str = ""

    def __init__(self):
        super().__init__()
        self.r = redis.Redis.from_url(self.url, decode_responses=True)
        own(self.r).flushall()
        self.r.execute_command("FUNCTION", "LOAD", "REPLACE", library_source())
        self.res: dict[str, Res] = {}
        self.requests: dict[tuple, tuple] = {}
        self.n = 0

    def teardown(self):
        self.r.close()

    # -- model helpers

    def expect_reserve(self, rid, client, qty):
        m = self.res.get(rid)
        if m is None:
            return "REJECTED", "UNKNOWN_RESOURCE"
        if m.state != "OPEN":
            return "REJECTED", "STATE_CLOSED"
        if m.window_closed:
            return "REJECTED", "WINDOW_CLOSED"
        if m.max_per_request and qty > m.max_per_request:
            return "REJECTED", "OVER_REQUEST_LIMIT"
        if m.max_per_client and m.per_client.get(client, 0) + qty > m.max_per_client:
            return "REJECTED", "OVER_CLIENT_LIMIT"
        left = m.capacity - m.reserved
        if qty > left:
            return "REJECTED", "SOLD_OUT" if left == 0 else "INSUFFICIENT_CAPACITY"
        return "CONFIRMED", "CONFIRMED"

    def outstanding(self, m: Res) -> int:
        return sum(m.entries[eid][1] for eid in m.deadlines)

    def lapse(self, m: Res, now: int) -> list[str]:
        lapsed = sorted((d, eid) for eid, d in m.deadlines.items() if d <= now)
        for _, eid in lapsed:
            m.entries[eid][2] = "EXPIRED"
            del m.deadlines[eid]
        return [eid for _, eid in lapsed]

    def notify(self, m: Res, now: int) -> list[str]:
        """In join order, every WAITING entry that fits in what is really free."""
        if m.state != "OPEN" or not m.waitlist:
            return []
        free = m.capacity - m.reserved - self.outstanding(m)
        picked = []
        for eid in list(m.waiting):
            qty = m.entries[eid][1]
            if qty <= free:
                m.entries[eid][2] = "NOTIFIED"
                m.deadlines[eid] = now + m.notify_window_ms * 1000
                m.waiting.remove(eid)
                free -= qty
                picked.append(eid)
        return picked

    def write(self, rid, call):
        """Runs a write call; returns its reply, the server time it ran at and
        what it logged after its decision, as (type, entry_id) pairs."""
        stream = keys.stream_key(keys.partition_of(rid, PARTITIONS))
        last = self.r.xrevrange(stream, count=1)
        d = call()
        logged = [f for _, f in self.r.xrange(stream, f"({last[0][0]}" if last else "-")]
        if not logged:  # a sweep with nothing to do
            return d, None, []
        return d, int(logged[0]["ts"]), [(e["type"], e.get("entry_id")) for e in logged[1:]]

    def settle(self, m: Res | None, now, lapsed, freed, after, fulfilled=()):
        """Checks what the call logged after its decision against the model."""
        picked = self.notify(m, now) if m is not None and (freed or lapsed) else []
        expected = ([("WAITLIST_FULFILLED", eid) for eid in fulfilled]
                    + [("WAITLIST_EXPIRED", eid) for eid in lapsed]
                    + [("WAITLIST_NOTIFIED", eid) for eid in picked])
        assert after == expected

    # -- rules

    # every run starts with a small resource with a waiting list, where
    # notifications happen (steps are not spent on getting there)
    @initialize(capacity=st.integers(1, 4), notify_window_ms=st.sampled_from([None, 20, 60]),
                queue=st.lists(st.integers(1, 3), min_size=1, max_size=len(CLIENTS)))
    def crowded(self, capacity, notify_window_ms, queue):
        self.create("a", capacity, True, None, None, False, notify_window_ms)
        for i, client in enumerate(CLIENTS[:capacity]):
            self.n += 1
            assert reserve(self.r, "a", f"early{i}", 1, f"q{self.n}")["decision"] == "CONFIRMED"
            self.res["a"].reserved += 1
            self.res["a"].per_client[f"early{i}"] = 1
            self.res["a"].bookings[f"a~{i + 1}"] = [f"early{i}", 1, "CONFIRMED"]
        for client, qty in zip(CLIENTS, queue):  # the resource is full: they wait
            d = fcall(self.r, "resv_wl_join", "a", client, str(qty))
            self.res["a"].entries[d["entry_id"]] = [client, qty, "WAITING"]
            self.res["a"].waiting.append(d["entry_id"])

    @rule(rid=st.sampled_from(RESOURCES), capacity=st.integers(0, 6),
          waitlist=st.sampled_from([True, True, True, False]),
          mpr=st.sampled_from([None, 1, 2]), mpc=st.sampled_from([None, 2, 3]),
          window_closed=st.sampled_from([False, False, False, True]),
          notify_window_ms=st.sampled_from([None, 20, 60]))
    def create(self, rid, capacity, waitlist, mpr, mpc, window_closed, notify_window_ms):
        d = fcall(self.r, "resv_create", rid, "meetup", str(capacity), "1" if window_closed else "",
                  PAST if window_closed else "", "1" if waitlist else "0", str(mpr or ""), str(mpc or ""),
                  "", str(notify_window_ms or ""))
        if rid in self.res:
            assert d["reason"] == "ALREADY_EXISTS"
        else:
            assert d["type"] == "RESOURCE_CREATED"
            self.res[rid] = Res(capacity, waitlist, mpr, mpc, window_closed, notify_window_ms or 900_000)

    @precondition(lambda self: self.res)
    @rule(data=st.data(), qty=st.integers(1, 4), client=st.sampled_from(CLIENTS))
    def reserve(self, data, qty, client):
        rid = data.draw(st.sampled_from(RESOURCES))
        self.n += 1
        request_id = f"q{self.n}"
        d, now, after = self.write(rid, lambda: reserve(self.r, rid, client, qty, request_id))
        m = self.res.get(rid)
        lapsed = self.lapse(m, now) if m else []
        expected = self.expect_reserve(rid, client, qty)
        assert (d["decision"], d["reason"]) == expected
        if d["reason"] != "UNKNOWN_RESOURCE":  # not remembered: a retry is decided afresh
            self.requests[(rid, request_id)] = (client, qty, d)
        fulfilled, freed = [], False
        if d["decision"] == "CONFIRMED":
            m.reserved += qty
            m.per_client[client] = m.per_client.get(client, 0) + qty
            m.bookings[d["reservation_id"]] = [client, qty, "CONFIRMED"]
            for eid, e in m.entries.items():
                if e[0] == client and e[2] in ("WAITING", "NOTIFIED"):
                    freed = e[2] == "NOTIFIED"
                    e[2] = "FULFILLED"
                    m.deadlines.pop(eid, None)
                    if eid in m.waiting:
                        m.waiting.remove(eid)
                    fulfilled.append(eid)
        self.settle(m, now, lapsed, freed, after, fulfilled)
        if m:
            assert d["version"] == str(m.version)

    @precondition(lambda self: self.requests)
    @rule(data=st.data())
    def retry(self, data):
        key = data.draw(st.sampled_from(sorted(self.requests)))
        client, qty, first = self.requests[key]
        again, now, after = self.write(key[0], lambda: reserve(self.r, key[0], client, qty, key[1]))
        m = self.res.get(key[0])
        self.settle(m, now, self.lapse(m, now) if m else [], False, after)
        assert again["replayed"] == "1"
        assert {k: v for k, v in again.items() if k != "replayed"} == {
            k: v for k, v in first.items() if k != "replayed"}

    @precondition(lambda self: any(m.bookings for m in self.res.values()))
    @rule(data=st.data())
    def cancel(self, data):
        rid = data.draw(st.sampled_from(sorted(r for r, m in self.res.items() if m.bookings)))
        m = self.res[rid]
        bid = data.draw(st.sampled_from(sorted(m.bookings)))
        client, qty, status = m.bookings[bid]
        d, now, after = self.write(rid, lambda: fcall(self.r, "resv_cancel", rid, bid))
        lapsed = self.lapse(m, now)
        if status == "CANCELLED":
            assert d["type"] == "CANCEL_REPLAYED"
            self.settle(m, now, lapsed, False, after)
            return
        assert d["type"] == "RESERVATION_CANCELLED"
        m.bookings[bid][2] = "CANCELLED"
        m.reserved -= qty
        m.per_client[client] -= qty
        self.settle(m, now, lapsed, True, after)

    @precondition(lambda self: self.res)
    @rule(data=st.data(), capacity=st.integers(0, 8), stale=st.booleans())
    def configure(self, data, capacity, stale):
        rid = data.draw(st.sampled_from(sorted(self.res)))
        m = self.res[rid]
        version = m.version - 1 if stale else m.version
        d, now, after = self.write(rid, lambda: fcall(self.r, "resv_configure", rid, str(version),
                                                      "capacity", str(capacity)))
        lapsed = self.lapse(m, now)
        if stale:
            assert d["reason"] == "VERSION_MISMATCH"
        elif capacity < m.reserved:
            assert d["reason"] == "CAPACITY_BELOW_RESERVED"
        else:
            assert d["type"] == "RULES_CHANGED" and int(d["version"]) == m.version + 1
            m.version += 1
            m.capacity = capacity
        self.settle(m, now, lapsed, d["type"] == "RULES_CHANGED", after)

    @precondition(lambda self: self.res)
    @rule(data=st.data(), state=st.sampled_from(["OPEN", "CLOSED"]))
    def open_close(self, data, state):
        rid = data.draw(st.sampled_from(sorted(self.res)))
        m = self.res[rid]
        d, now, after = self.write(rid, lambda: fcall(self.r, "resv_open" if state == "OPEN" else "resv_close",
                                                      rid, str(m.version)))
        lapsed = self.lapse(m, now)
        assert d["type"] == "RULES_CHANGED" and d["state"] == state
        m.version += 1
        m.state = state
        self.settle(m, now, lapsed, True, after)

    @precondition(lambda self: self.res)
    @rule(data=st.data(), client=st.sampled_from(CLIENTS), qty=st.integers(1, 3))
    def join(self, data, client, qty):
        rid = data.draw(st.sampled_from(sorted(self.res)))
        m = self.res[rid]
        d, now, after = self.write(rid, lambda: fcall(self.r, "resv_wl_join", rid, client, str(qty)))
        lapsed = self.lapse(m, now)
        active = [eid for eid, e in m.entries.items() if e[0] == client and e[2] in ("WAITING", "NOTIFIED")]
        if active:
            assert d["entry_id"] == active[0] and d["created"] == "0"
        elif not m.waitlist:
            assert d["reason"] == "WAITLIST_DISABLED"
        elif m.state != "OPEN":
            assert d["reason"] == "STATE_CLOSED"
        elif m.window_closed:
            assert d["reason"] == "WINDOW_CLOSED"
        elif m.max_per_request and qty > m.max_per_request:
            assert d["reason"] == "OVER_REQUEST_LIMIT"
        else:
            assert d["type"] == "WAITLIST_JOINED"
            m.entries[d["entry_id"]] = [client, qty, "WAITING"]
            m.waiting.append(d["entry_id"])
            assert d["position"] == str(len(m.waiting))
        self.settle(m, now, lapsed, False, after)

    @precondition(lambda self: any(m.entries for m in self.res.values()))
    @rule(data=st.data())
    def leave(self, data):
        rid = data.draw(st.sampled_from(sorted(r for r, m in self.res.items() if m.entries)))
        m = self.res[rid]
        eid = data.draw(st.sampled_from(sorted(m.entries)))
        d, now, after = self.write(rid, lambda: fcall(self.r, "resv_wl_leave", rid, eid))
        lapsed = self.lapse(m, now)
        status = m.entries[eid][2]
        freed = False
        if status in ("FULFILLED", "EXPIRED"):
            assert d["reason"] == "ENTRY_" + status
        elif status == "LEFT":
            assert d["type"] == "WAITLIST_LEAVE_REPLAYED"
        else:
            assert d["type"] == "WAITLIST_LEFT"
            freed = status == "NOTIFIED"
            m.entries[eid][2] = "LEFT"
            m.deadlines.pop(eid, None)
            if eid in m.waiting:
                m.waiting.remove(eid)
        self.settle(m, now, lapsed, freed, after)

    @precondition(lambda self: self.res)
    @rule(data=st.data())
    def sweep(self, data):
        rid = data.draw(st.sampled_from(sorted(self.res)))
        m = self.res[rid]
        d, now, after = self.write(rid, lambda: fcall(self.r, "resv_wl_sweep", rid))
        if now is None:  # logged nothing: nothing was due and nothing fits
            now = int(d["ts"])
            assert self.lapse(m, now) == [] and self.notify(m, now) == []
            assert d["expired"] == "0"
            return
        assert d["type"] == "WAITLIST_SWEPT"
        lapsed = self.lapse(m, now)
        assert d["expired"] == str(len(lapsed))
        self.settle(m, now, lapsed, True, after)

    @rule(ms=st.integers(0, 40))
    def pause(self, ms):
        """Lets server time pass, so short notify windows lapse."""
        time.sleep(ms / 1000)

    # -- invariants, checked after every step against the server

    @invariant()
    def server_matches_model(self):
        for rid, m in self.res.items():
            s = fcall(self.r, "resv_resource", rid)
            assert int(s["reserved"]) == m.reserved <= m.capacity == int(s["capacity"])
            assert int(s["version"]) == m.version
            assert int(s["notified"]) == self.outstanding(m)
            for eid, (_, _, status) in m.entries.items():
                got = fcall(self.r, "resv_wl_position", rid, eid)
                assert got["status"] == status
                if status == "WAITING":
                    assert got["position"] == str(m.waiting.index(eid) + 1)

    @invariant()
    def versions_never_decrease(self):
        for rid in self.res:
            versions = [int(e["version"]) for e in events(self.r, rid) if e.get("version")]
            assert versions == sorted(versions)


def test_engine_matches_model(redis_url):
    Model.url = redis_url
    run = Model.TestCase
    run.settings = settings(max_examples=100, stateful_step_count=30, deadline=None,
                            suppress_health_check=list(HealthCheck))
    run().runTest()
