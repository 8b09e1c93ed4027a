"""Who asked: the optional trailing `actor` of every write entry point is
recorded in every event the call emits (consequences included), with the
release that decided it, and never in the reply."""

from __future__ import annotations

import pytest
import redis

from resv.engine import keys
from resv.engine.library import library_source, library_version
from tests.support import PARTITIONS, as_dict, rkeys, wkeys

LIB = str(library_version())


@pytest.fixture
def r(redis_url: str):
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.execute_command("FUNCTION", "LOAD", "REPLACE", library_source())
    yield client
    client.close()


def call(r, fn: str, rid: str, *args: str, extra_keys: tuple = ()) -> tuple[dict, list[dict]]:
    """The reply, and the events the call appended (every call here is a
    write: it takes the waiting-list keys last)."""
    ks = rkeys(rid) + list(extra_keys[:1]) + wkeys(rid) + list(extra_keys[1:])  # resv_reserve's KEYS[11] last
    stream = ks[5]
    last = r.xrevrange(stream, count=1)
    reply = as_dict(r.execute_command("FCALL", fn, len(ks), *ks, rid, *args))
    added = [f for _, f in r.xrange(stream, f"({last[0][0]}" if last else "-")]
    return reply, added


def req(rid: str, request_id: str, actor: str | None = None) -> tuple[str, ...]:
    """KEYS[7]; with an actor the request id is scoped to it (issue 16), and
    the unscoped key comes last (KEYS[11])."""
    scoped = keys.request_key(rid, request_id, PARTITIONS, actor)
    return (scoped, keys.request_key(rid, request_id, PARTITIONS)) if actor else (scoped,)


def test_every_write_records_its_actor_in_every_event(r):
    emitted: list[tuple[str, list[dict], dict]] = []

    def by(actor: str, fn: str, rid: str, *args: str, extra_keys: tuple = ()) -> dict:
        reply, added = call(r, fn, rid, *args, extra_keys=extra_keys)
        emitted.append((actor, added, reply))
        return reply

    by("ops-script", "resv_create", "hall", "meetup", "1", "", "", "1", "", "", "ops-script")
    by("client#1", "resv_reserve", "hall", "al", "1", "q1", "", "client#1", extra_keys=req("hall", "q1", "client#1"))
    by("client#2", "resv_wl_join", "hall", "bo", "1", "client#2")
    by("client#1", "resv_reserve", "hall", "cy", "1", "q2", "", "client#1",
       extra_keys=req("hall", "q2", "client#1"))                                          # rejected: full
    by("client#1", "resv_cancel", "hall", "hall~1", "client#1")              # notifies bo
    by("client#2", "resv_reserve", "hall", "bo", "1", "q3", "60000", "client#2",
       extra_keys=req("hall", "q3", "client#2"))                                          # fulfils bo's entry
    by("client#3", "resv_wl_join", "hall", "dd", "1", "client#3")
    by("operator#1", "resv_configure", "hall", "1", "actor", "operator#1", "capacity", "3")  # notifies dd
    by("operator#1", "resv_configure", "hall", "2", "capacity", "2", "actor", "operator#1")
    by("operator#1", "resv_close", "hall", "3", "operator#1")
    by("operator#1", "resv_open", "hall", "4", "operator#1")
    by("insecure-no-auth", "resv_wl_leave", "hall", "hall~w4", "insecure-no-auth")
    by("client#1", "resv_configure", "hall", "9", "state", "OPEN", "actor", "client#1")  # VERSION_MISMATCH

    types = [e["type"] for _, added, _ in emitted for e in added]
    assert types == ["RESOURCE_CREATED", "RESERVATION_CONFIRMED", "WAITLIST_JOINED", "RESERVATION_REJECTED",
                     "RESERVATION_CANCELLED", "WAITLIST_NOTIFIED", "RESERVATION_CONFIRMED",
                     "WAITLIST_FULFILLED", "WAITLIST_JOINED", "RULES_CHANGED", "WAITLIST_NOTIFIED",
                     "RULES_CHANGED", "RULES_CHANGED", "RULES_CHANGED", "WAITLIST_LEFT", "RULES_REJECTED"]
    for actor, added, reply in emitted:
        assert "actor" not in reply and "lib" not in reply
        for event in added:
            assert (event["actor"], event["lib"]) == (actor, LIB), event
    # the actor is not a rule: a refused configure logs only the rules it was asked
    assert emitted[-1][1][0]["requested"] == '["state","OPEN"]'


def test_no_actor_records_none(r):
    for actor_args in ((), ("",)):
        rid = f"r{len(actor_args)}"
        _, added = call(r, "resv_create", rid, "meetup", "1", "", "", "0", "", "", *actor_args)
        assert "actor" not in added[0] and added[0]["lib"] == LIB
    # ARGV[5] '' is the default ttl, so a caller can give an actor without one
    reply, added = call(r, "resv_reserve", "r0", "al", "1", "q", "", "ops", extra_keys=req("r0", "q", "ops"))
    assert reply["idempotency_ttl_ms"] == "86400000" and added[0]["actor"] == "ops"
