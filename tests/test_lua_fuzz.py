"""Fuzz the Lua entry points directly with random and hostile arguments.

Each call either gets an error reply, and then the keyspace (streams included)
is byte for byte unchanged, or a well-formed decision, and then the state's
invariants hold: reserved <= capacity, reserved equals the confirmed
bookings, the per-client totals match, the waiting list holds exactly the
WAITING entries.
"""

from __future__ import annotations

import json

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resv.engine import keys
from resv.engine.codes import CONSEQUENCES, EventType, Reason
from resv.engine.library import library_source, library_version
from tests.report import record
from tests.support import PARTITIONS, WRITES, create, own, rkeys, snapshot, wkeys

FUNCTIONS = ["resv_create", "resv_configure", "resv_open", "resv_close", "resv_reserve", "resv_cancel",
             "resv_wl_join", "resv_wl_leave", "resv_wl_sweep", "resv_resource", "resv_reservation", "resv_wl_position"]
RIDS = ["f1", "f2"]
LIBRARY_VERSION = str(library_version())
STREAMS = sorted({rkeys(rid)[5] for rid in RIDS})

hostile = st.one_of(
    st.sampled_from(["", "0", "-1", "1", "2", "3", "nan", "NaN", "inf", "-inf", "1e309", "0x10", " 1",
                     "1.0", "9" * 40, "-0", "OPEN", "CLOSED", "capacity", "state", "max_per_client",
                     "opens_at", "closes_at", "waitlist_enabled", "true", "f1", "f1~1", "f1~w1",
                     "f2~1", "al", "{p1}", "resv:{p1}:res:f1", "\x00", "\xff", "a b", "x" * 200]),
    st.binary(max_size=40),
    st.text(max_size=20),
    st.integers(-2**63, 2**63).map(str),
)


def valid_keys(rid: str, fn: str, args: list) -> list[str]:
    ks = rkeys(rid)
    if fn == "resv_reserve":
        rq = args[3] if len(args) > 3 and isinstance(args[3], str) else "q"
        actor = args[5] if len(args) > 5 and isinstance(args[5], str) and args[5] else None
        return list(keys.reserve_keys(rid, rq, PARTITIONS, actor))  # an actor scopes the request id
    return ks + wkeys(rid) if fn in WRITES else ks


small = st.integers(-1, 4).map(str)
# who asked: none, valid ones, and ones the Lua must refuse (':' or space, too long, not ASCII)
actors = st.sampled_from([None, "", "client#1", "ops", "x" * 64])
bad_actors = st.sampled_from(["x" * 65, "a:b", "a b", "\xe9", "\x00"])


def with_actor(fn: str, args: list, actor: str | None) -> list:
    """The call with its optional actor where the contract puts it."""
    if actor is None:
        return args
    if fn == "resv_configure":
        return args + ["actor", actor]
    if fn == "resv_reserve":
        return args + ["", actor]  # ARGV[5] '' = the default ttl
    return args + [actor]


def actor_in(fn: str, args: list) -> str | None:
    """The actor a call carries, read back by the contract (hostile calls
    carry one too)."""
    if fn == "resv_configure":
        given = [args[i + 1] for i in range(2, len(args) - 1, 2) if args[i] == "actor"]
        actor = given[0] if given else None
    else:
        at = {"resv_create": 8, "resv_open": 2, "resv_close": 2, "resv_reserve": 5, "resv_cancel": 2,
              "resv_wl_join": 3, "resv_wl_leave": 2, "resv_wl_sweep": 1}[fn]
        actor = args[at] if len(args) > at else None
    if isinstance(actor, bytes):
        actor = actor.decode("utf-8", "replace")
    return actor or None


def after(before: dict, key: str) -> str:
    """XRANGE start past the stream's last entry in the snapshot."""
    entries = before.get(key, ("stream", []))[1]
    return f"({entries[-1][0]}" if entries else "-"
client = st.sampled_from(["al", "bo", "cy"])
ids = st.sampled_from(["f1~1", "f1~2", "f1~3", "f2~1", "f1~w1", "f1~w2", "f1~w4", "f2~w2", "nope"])
PLAUSIBLE = {
    "resv_create": st.tuples(st.just("t"), small, st.just(""), st.just(""), st.sampled_from("01"),
                             st.sampled_from(["", "2"]), st.sampled_from(["", "3"])),
    "resv_configure": st.tuples(small, st.sampled_from(["capacity", "state", "max_per_client",
                                                       "waitlist_enabled"]),
                                st.sampled_from(["0", "1", "3", "5", "OPEN", "CLOSED", ""])),
    "resv_open": st.tuples(small),
    "resv_close": st.tuples(small),
    "resv_reserve": st.tuples(client, small, st.sampled_from(["q1", "q2", "q3", "q4", "q5"])),
    "resv_cancel": st.tuples(ids),
    "resv_wl_join": st.tuples(client, small),
    "resv_wl_leave": st.tuples(ids),
    "resv_wl_sweep": st.tuples(),
    "resv_resource": st.tuples(),
    "resv_reservation": st.tuples(ids),
    "resv_wl_position": st.tuples(ids),
}


@st.composite
def calls(draw):
    fn = draw(st.sampled_from(FUNCTIONS))
    rid = draw(st.sampled_from(RIDS * 4 + ["", "ghost", "f1 "]))
    actor = None
    if draw(st.booleans()):
        args = [rid] + list(draw(PLAUSIBLE[fn]))
        if fn in WRITES:
            actor = draw(actors)
            args = with_actor(fn, args, actor)
    elif fn in WRITES and draw(st.booleans()):  # a plausible call with an actor the Lua must refuse
        args = with_actor(fn, [rid] + list(draw(PLAUSIBLE[fn])), draw(bad_actors))
    else:
        args = [rid] + draw(st.lists(hostile, max_size=9))
    mode = draw(st.sampled_from(["valid"] * 12 + ["other_slot", "short", "extra", "swapped"]))
    ks = valid_keys(rid if rid in RIDS else "f1", fn, args)
    if mode == "other_slot":
        other = next(rkeys(f"o{i}") for i in range(100) if rkeys(f"o{i}")[5] != rkeys("f1")[5])
        i = draw(st.integers(0, 5))
        ks[i] = other[i]
    elif mode == "short":
        ks = ks[: draw(st.integers(0, len(ks) - 1))]
    elif mode == "extra":
        ks = ks + ["resv:{p0}:junk"]
    elif mode == "swapped":
        ks[0], ks[1] = ks[1], ks[0]
    return fn, ks, args, actor


def check_invariants(r: redis.Redis) -> None:
    for rid in RIDS:
        res, bk, cl, wl, we, _ = rkeys(rid)
        if not r.exists(res):
            continue
        capacity, reserved = int(r.hget(res, "capacity")), int(r.hget(res, "reserved"))
        assert 0 <= reserved <= capacity
        bookings = [json.loads(v) for v in r.hvals(bk)]
        confirmed = [b for b in bookings if b["status"] == "CONFIRMED"]
        assert reserved == sum(int(b["quantity"]) for b in confirmed)
        per_client: dict[str, int] = {}
        for b in confirmed:
            per_client[b["client_id"]] = per_client.get(b["client_id"], 0) + int(b["quantity"])
        assert {k: int(v) for k, v in r.hgetall(cl).items()} == per_client
        entries = {k[2:]: json.loads(v) for k, v in r.hgetall(we).items() if k.startswith("e:")}
        waiting = {eid for eid, e in entries.items() if e["status"] == "WAITING"}
        assert set(r.zrange(wl, 0, -1)) == waiting


@pytest.fixture(scope="module")
def fuzz_redis(redis_server):
    r = redis.Redis.from_url(redis_server.url, decode_responses=True)
    yield r
    r.close()


def test_fuzz_lua_entry_points(fuzz_redis):
    r = fuzz_redis
    own(r).flushall()
    r.execute_command("FUNCTION", "LOAD", "REPLACE", library_source())
    create(r, "f1", 3, waitlist=True, max_per_client="2")
    create(r, "f2", 1)
    counts = {"error": 0, "decision": 0, "with actor": 0}

    @settings(max_examples=2000, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(calls())
    def one_call(call):
        fn, ks, args, actor = call
        before = snapshot(r)
        try:
            reply = r.execute_command("FCALL", fn, len(ks), *ks, *args)
        except redis.ResponseError as err:
            assert str(err).startswith(("BAD_ARGUMENT", "ERR")), err
            assert "attempt to" not in str(err) and "nil" not in str(err), err  # no Lua runtime errors
            assert snapshot(r) == before
            counts["error"] += 1
            return
        assert isinstance(reply, list)
        if reply and fn not in ("resv_resource", "resv_reservation", "resv_wl_position"):
            d = dict(zip(reply[::2], reply[1::2]))
            assert d["type"] in {t.value for t in EventType} - CONSEQUENCES, d
            assert d["decision"] in ("CONFIRMED", "REJECTED")
            assert d.get("reason", "") in {r.value for r in Reason} | {""}, d
            if d["decision"] == "REJECTED":
                assert d["code"] in ("RESOURCE_FULL", "RESOURCE_CLOSED", "INVALID_STATE")
            counts["decision"] += 1
            assert "actor" not in d  # who asked is logged, never answered
            # every event the call emitted says who asked and which release decided
            emitted = [fields for key in STREAMS for _, fields in r.xrange(key, after(before, key))]
            # a sweep that found nothing due logs nothing (its contract); every other decision is logged
            idle_sweep = fn == "resv_wl_sweep" and d.get("expired") == "0" and d.get("notified") == "0"
            assert bool(emitted) != idle_sweep, (fn, d)
            for fields in emitted:
                assert fields.get("actor") == actor_in(fn, args), (args, fields)
                assert fields["lib"] == LIBRARY_VERSION
            if actor:
                counts["with actor"] += 1
        check_invariants(r)

    one_call()
    record("lua: hostile FCALLs on every entry point", fuzz_cases=counts["error"] + counts["decision"],
           decisions=counts["decision"], overbooked=0)
    # the fuzzer must exercise both sides, or it proves little
    assert counts["error"] > 500 and counts["decision"] > 100 and counts["with actor"] > 20, counts
