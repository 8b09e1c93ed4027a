"""Hypothesis stateful test: the Lua against a pure-Python model of the rules.

Random sequences of create / configure / close / open / reserve / retry /
cancel / join / leave; after every step the server's decision must equal the
model's, capacity is never exceeded, the waiting list keeps server-time order,
and versions only grow.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import redis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from resv.engine.library import library_source
from tests.support import create, events, fcall, reserve

RESOURCES = ["a", "b"]
CLIENTS = ["al", "bo", "cy", "di"]
PAST = str(int(time.time() * 1e6) - 3_600_000_000)


@dataclass
class Res:
    capacity: int
    waitlist: bool
    max_per_request: int | None
    max_per_client: int | None
    window_closed: bool
    state: str = "OPEN"
    version: int = 1
    reserved: int = 0
    per_client: dict = field(default_factory=dict)
    waiting: list = field(default_factory=list)  # entry ids in order
    entries: dict = field(default_factory=dict)  # entry id -> [client, qty, status]
    bookings: dict = field(default_factory=dict)  # reservation id -> [client, qty, status]


class Model(RuleBasedStateMachine):
    url: str = ""

    def __init__(self):
        super().__init__()
        self.r = redis.Redis.from_url(self.url, decode_responses=True)
        self.r.flushall()
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

    def notify(self, m: Res, freed: int):
        if m.state != "OPEN" or not m.waitlist:
            return
        for eid in list(m.waiting):
            if freed <= 0:
                break
            client, qty, _ = m.entries[eid]
            if qty <= freed:
                m.entries[eid][2] = "NOTIFIED"
                m.waiting.remove(eid)
                freed -= qty

    # -- rules

    @rule(rid=st.sampled_from(RESOURCES), capacity=st.integers(0, 6), waitlist=st.booleans(),
          mpr=st.sampled_from([None, 1, 2]), mpc=st.sampled_from([None, 2, 3]),
          window_closed=st.booleans())
    def create(self, rid, capacity, waitlist, mpr, mpc, window_closed):
        d = create(self.r, rid, capacity, waitlist=waitlist, max_per_request=str(mpr or ""),
                   max_per_client=str(mpc or ""), opens_at="1" if window_closed else "",
                   closes_at=PAST if window_closed else "")
        if rid in self.res:
            assert d["reason"] == "ALREADY_EXISTS"
        else:
            assert d["type"] == "RESOURCE_CREATED"
            self.res[rid] = Res(capacity, waitlist, mpr, mpc, window_closed)

    @precondition(lambda self: self.res)
    @rule(data=st.data(), qty=st.integers(1, 4), client=st.sampled_from(CLIENTS))
    def reserve(self, data, qty, client):
        rid = data.draw(st.sampled_from(RESOURCES))
        self.n += 1
        request_id = f"q{self.n}"
        expected = self.expect_reserve(rid, client, qty)
        d = reserve(self.r, rid, client, qty, request_id)
        assert (d["decision"], d["reason"]) == expected
        if d["reason"] != "UNKNOWN_RESOURCE":  # not remembered: a retry is decided afresh
            self.requests[(rid, request_id)] = (client, qty, d)
        m = self.res.get(rid)
        if d["decision"] == "CONFIRMED":
            m.reserved += qty
            m.per_client[client] = m.per_client.get(client, 0) + qty
            m.bookings[d["reservation_id"]] = [client, qty, "CONFIRMED"]
            for eid, e in m.entries.items():
                if e[0] == client and e[2] in ("WAITING", "NOTIFIED"):
                    e[2] = "FULFILLED"
                    if eid in m.waiting:
                        m.waiting.remove(eid)
        if m:
            assert d["version"] == str(m.version)

    @precondition(lambda self: self.requests)
    @rule(data=st.data())
    def retry(self, data):
        key = data.draw(st.sampled_from(sorted(self.requests)))
        client, qty, first = self.requests[key]
        again = reserve(self.r, key[0], client, qty, key[1])
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
        d = fcall(self.r, "resv_cancel", rid, bid)
        if status == "CANCELLED":
            assert d["type"] == "CANCEL_REPLAYED"
            return
        assert d["type"] == "RESERVATION_CANCELLED"
        m.bookings[bid][2] = "CANCELLED"
        m.reserved -= qty
        m.per_client[client] -= qty
        self.notify(m, qty)

    @precondition(lambda self: self.res)
    @rule(data=st.data(), capacity=st.integers(0, 8), stale=st.booleans())
    def configure(self, data, capacity, stale):
        rid = data.draw(st.sampled_from(sorted(self.res)))
        m = self.res[rid]
        version = m.version - 1 if stale else m.version
        d = fcall(self.r, "resv_configure", rid, str(version), "capacity", str(capacity))
        if stale:
            assert d["reason"] == "VERSION_MISMATCH"
        elif capacity < m.reserved:
            assert d["reason"] == "CAPACITY_BELOW_RESERVED"
        else:
            assert d["type"] == "RULES_CHANGED" and int(d["version"]) == m.version + 1
            old = m.capacity
            m.version += 1
            m.capacity = capacity
            if capacity > old:
                self.notify(m, min(capacity - old, capacity - m.reserved))

    @precondition(lambda self: self.res)
    @rule(data=st.data(), state=st.sampled_from(["OPEN", "CLOSED"]))
    def open_close(self, data, state):
        rid = data.draw(st.sampled_from(sorted(self.res)))
        m = self.res[rid]
        d = fcall(self.r, "resv_open" if state == "OPEN" else "resv_close", rid, str(m.version))
        assert d["type"] == "RULES_CHANGED" and d["state"] == state
        m.version += 1
        m.state = state

    @precondition(lambda self: self.res)
    @rule(data=st.data(), client=st.sampled_from(CLIENTS), qty=st.integers(1, 3))
    def join(self, data, client, qty):
        rid = data.draw(st.sampled_from(sorted(self.res)))
        m = self.res[rid]
        d = fcall(self.r, "resv_wl_join", rid, client, str(qty))
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

    @precondition(lambda self: any(m.entries for m in self.res.values()))
    @rule(data=st.data())
    def leave(self, data):
        rid = data.draw(st.sampled_from(sorted(r for r, m in self.res.items() if m.entries)))
        m = self.res[rid]
        eid = data.draw(st.sampled_from(sorted(m.entries)))
        d = fcall(self.r, "resv_wl_leave", rid, eid)
        status = m.entries[eid][2]
        if status == "FULFILLED":
            assert d["reason"] == "ENTRY_FULFILLED"
        elif status == "LEFT":
            assert d["type"] == "WAITLIST_LEAVE_REPLAYED"
        else:
            assert d["type"] == "WAITLIST_LEFT"
            m.entries[eid][2] = "LEFT"
            if eid in m.waiting:
                m.waiting.remove(eid)

    # -- invariants, checked after every step against the server

    @invariant()
    def server_matches_model(self):
        for rid, m in self.res.items():
            s = fcall(self.r, "resv_resource", rid)
            assert int(s["reserved"]) == m.reserved <= m.capacity == int(s["capacity"])
            assert int(s["version"]) == m.version
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
