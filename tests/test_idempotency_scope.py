"""Idempotency records: none for a resource that does not exist, and request
ids scoped to the actor (the application) when one is given, at the Lua and
through the HTTP API; a record written before scoping (release 2) still
answers an actor's retry after the upgrade."""

from __future__ import annotations

import asyncio

import pytest
import redis

from resv.engine import Engine, Settings
from resv.engine import keys
from resv.engine.library import library_source
from tests.api_support import api, create_resource, reserve as api_reserve
from tests.support import PARTITIONS, as_dict, create, events, rkeys, snapshot

@pytest.fixture
def r(redis_url: str):
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.execute_command("FUNCTION", "LOAD", "REPLACE", library_source())
    yield client
    client.close()


def reserve_as(r, rid: str, client: str, qty: int, request_id: str, actor: str | None, *, ttl: str = "") -> dict:
    args = [rid, client, str(qty), request_id, ttl] + ([actor] if actor is not None else [])
    ks = keys.reserve_keys(rid, request_id, PARTITIONS, actor)
    return as_dict(r.execute_command("FCALL", "resv_reserve", len(ks), *ks, *args))


def request_keys(r) -> list[str]:
    return sorted(r.scan_iter(match="resv:*:req:*", count=1000))


async def test_reservations_for_unknown_resources_leave_no_record(redis_url) -> None:
    async with Engine(Settings(redis_url=redis_url, partitions=PARTITIONS)) as engine:
        for start in range(0, 10_000, 500):
            replies = await asyncio.gather(*(
                engine.reserve(f"nothing-{n % 50}", f"c{n}", 1, f"q{n}")
                for n in range(start, start + 500)))
            assert {(d.decision, d.reason) for d in replies} == {("REJECTED", "UNKNOWN_RESOURCE")}
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        assert request_keys(r) == []
        logged = events(r)
        assert len(logged) == 10_000  # every attempt is still audited
        assert all("idempotency_ttl_ms" not in e for e in logged)
    finally:
        r.close()


def test_an_unknown_resource_rejection_does_not_pre_empt_the_real_request(r) -> None:
    first = reserve_as(r, "soon", "ann", 1, "q1", None)
    assert (first["reason"], first["replayed"]) == ("UNKNOWN_RESOURCE", "0")
    again = reserve_as(r, "soon", "ann", 1, "q1", None)
    assert (again["reason"], again["replayed"]) == ("UNKNOWN_RESOURCE", "0")  # decided again, not replayed
    create(r, "soon", 5)
    real = reserve_as(r, "soon", "ann", 1, "q1", None)
    assert (real["decision"], real["replayed"]) == ("CONFIRMED", "0")


def test_the_same_request_id_under_two_actors_makes_two_requests(r) -> None:
    create(r, "gig", 5)
    a = reserve_as(r, "gig", "ann", 2, "k", "client#1")
    b = reserve_as(r, "gig", "bob", 1, "k", "client#2")  # another body: no 422 across applications
    assert (a["decision"], b["decision"]) == ("CONFIRMED", "CONFIRMED")
    assert a["reservation_id"] != b["reservation_id"]
    assert reserve_as(r, "gig", "ann", 2, "k", "client#1")["replayed"] == "1"
    assert reserve_as(r, "gig", "ann", 9, "k", "client#1")["reason"] == "REQUEST_ID_REUSED"
    # without an actor the scope is the resource alone, as before
    c = reserve_as(r, "gig", "cat", 1, "k", None)
    assert (c["decision"], c["replayed"]) == ("CONFIRMED", "0")
    assert request_keys(r) == sorted([keys.request_key("gig", "k", PARTITIONS, "client#1"),
                                      keys.request_key("gig", "k", PARTITIONS, "client#2"),
                                      keys.request_key("gig", "k", PARTITIONS)])
    logged = [e for e in events(r, "gig") if e["type"].startswith("RESERVATION_")]
    assert [e.get("actor") for e in logged] == ["client#1", "client#2", "client#1", "client#1", None]
    assert "actor" not in a or a["actor"] == "client#1"


@pytest.mark.parametrize("actor", ["has:colon", "has space", "x" * 65, "tab\t"])
def test_a_malformed_actor_is_refused_before_any_write(r, actor) -> None:
    create(r, "gig", 5)
    before = snapshot(r)
    ks = keys.reserve_keys("gig", "k", PARTITIONS, "client#1")
    with pytest.raises(redis.ResponseError, match="BAD_ARGUMENT actor"):
        r.execute_command("FCALL", "resv_reserve", len(ks), *ks, "gig", "ann", "1", "k", "", actor)
    assert snapshot(r) == before


@pytest.mark.parametrize("case", ["unscoped KEYS[7]", "another actor's KEYS[7]", "KEYS[11] missing",
                                  "KEYS[11] scoped", "no actor, 11 keys"])
def test_the_request_keys_must_match_the_actor(r, case) -> None:
    create(r, "gig", 5)
    before = snapshot(r)
    ks = list(keys.reserve_keys("gig", "k", PARTITIONS, "client#1"))
    actor: tuple[str, ...] = ("client#1",)
    if case == "unscoped KEYS[7]":
        ks[6], expected = keys.request_key("gig", "k", PARTITIONS), "KEYS\\[7\\] must be"
    elif case == "another actor's KEYS[7]":
        ks[6], expected = keys.request_key("gig", "k", PARTITIONS, "client#2"), "KEYS\\[7\\] must be"
    elif case == "KEYS[11] missing":
        ks, expected = ks[:10], "KEYS\\[7\\] must be"  # ten keys: release 2's call, KEYS[7] unscoped
    elif case == "KEYS[11] scoped":
        ks[10], expected = ks[6], "KEYS\\[11\\] must be"
    else:
        ks[6], actor, expected = keys.request_key("gig", "k", PARTITIONS), (), "expected 10 keys"
    with pytest.raises(redis.ResponseError, match=f"BAD_ARGUMENT {expected}"):
        r.execute_command("FCALL", "resv_reserve", len(ks), *ks, "gig", "ann", "1", "k", "", *actor)
    assert snapshot(r) == before


def test_scopes_never_collide_whatever_the_request_id(r) -> None:
    """No-actor request ids may hold ':' and '@'; an actor's scoped key can
    still not be spelled by one."""
    create(r, "gig", 5)
    op = reserve_as(r, "gig", "ann", 1, "client#1:k", None)  # an ops script's id, shaped like a scope
    app = reserve_as(r, "gig", "ann", 1, "k", "client#1")
    assert (op["replayed"], app["replayed"]) == ("0", "0")
    assert op["reservation_id"] != app["reservation_id"]
    assert keys.request_key("gig", "client#1:k", PARTITIONS) != keys.request_key("gig", "k", PARTITIONS, "client#1")


def test_a_record_from_before_scoping_answers_an_actors_retry(r) -> None:
    """Release 2 kept every request unscoped: the API's retry after the
    upgrade reads that record (KEYS[11]) and replays it, never books twice."""
    r.execute_command("FUNCTION", "LOAD", "REPLACE", library_source(2))
    create(r, "gig", 5)
    ks = [*rkeys("gig"), keys.request_key("gig", "k", PARTITIONS), *keys.waitlist_keys("gig", PARTITIONS)]
    first = as_dict(r.execute_command("FCALL", "resv_reserve", 10, *ks, "gig", "ann", "2", "k", "", "client#1"))
    assert first["decision"] == "CONFIRMED"
    r.execute_command("FUNCTION", "LOAD", "REPLACE", library_source())
    retry = reserve_as(r, "gig", "ann", 2, "k", "client#1")
    assert retry["replayed"] == "1"
    assert {k: v for k, v in retry.items() if k != "replayed"} == {k: v for k, v in first.items() if k != "replayed"}
    assert r.hget(rkeys("gig")[0], "reserved") == "2"  # booked once
    assert not r.exists(keys.request_key("gig", "k", PARTITIONS, "client#1"))  # a replay writes no record
    # another body under the same key is still a reuse, as it was before the upgrade
    assert reserve_as(r, "gig", "ann", 3, "k", "client#1")["reason"] == "REQUEST_ID_REUSED"


def test_an_unscoped_record_of_this_release_is_not_an_actors(r) -> None:
    """From release 3 on an unscoped record is an ops script's (it carries
    `lib`): an application's equal request id is its own request."""
    create(r, "gig", 5)
    ops = reserve_as(r, "gig", "ann", 1, "k", None)
    app = reserve_as(r, "gig", "ann", 1, "k", "client#1")
    assert (ops["replayed"], app["replayed"]) == ("0", "0")
    assert ops["reservation_id"] != app["reservation_id"]


async def test_two_applications_with_the_same_idempotency_key_get_independent_decisions(redis_url) -> None:
    two_clients = "operator:op-secret-4f2a9e,client:web-secret-9c1d77,client:app2-secret-55aa01"
    from resv.api.settings import parse_api_keys

    other = {"Authorization": "Bearer app2-secret-55aa01"}
    async with api(redis_url, api_keys=parse_api_keys(two_clients)) as client:
        await create_resource(client, "gig", 5)
        first = await api_reserve(client, "gig", "ann", 2, key="order-1")
        second = await api_reserve(client, "gig", "bob", 1, key="order-1", headers=other)
        assert (first.status_code, second.status_code) == (201, 201), second.text
        assert first.json()["reservation_id"] != second.json()["reservation_id"]
        # each application's retry replays its own decision
        retry = await api_reserve(client, "gig", "bob", 1, key="order-1", headers=other)
        assert retry.status_code == 201 and retry.json() == second.json()
        assert "actor" not in retry.text and "client#" not in retry.text
        # within one application nothing changed: another body under its key is 422
        assert (await api_reserve(client, "gig", "ann", 3, key="order-1")).status_code == 422


def test_a_release_2_process_during_a_rolling_upgrade(r) -> None:
    """A process not yet upgraded makes release 2's call (ten keys, an
    actor, KEYS[7] unscoped) on release 3: accepted, remembered as release 2
    did, so the upgraded process's retry of that request replays it."""
    create(r, "gig", 5)
    ks = [*rkeys("gig"), keys.request_key("gig", "k", PARTITIONS), *keys.waitlist_keys("gig", PARTITIONS)]
    old = as_dict(r.execute_command("FCALL", "resv_reserve", 10, *ks, "gig", "ann", "2", "k", "", "client#1"))
    assert (old["decision"], old["replayed"]) == ("CONFIRMED", "0")
    retry = reserve_as(r, "gig", "ann", 2, "k", "client#1")
    assert retry["replayed"] == "1" and retry["reservation_id"] == old["reservation_id"]
    assert r.hget(rkeys("gig")[0], "reserved") == "2"
    logged = [e for e in events(r, "gig") if e["type"].startswith("RESERVATION_")]
    assert [(e["type"], e.get("request_scope")) for e in logged] == [
        ("RESERVATION_CONFIRMED", "resource"), ("RESERVATION_REPLAYED", None)]


def test_the_record_keeps_only_what_a_retry_does_not_repeat(r) -> None:
    """Release 3's record is a short line, not a JSON copy of the reply, and
    the reply rebuilt from it is the original one, field for field."""
    create(r, "gig", 5)
    first = reserve_as(r, "gig", "ann", 2, "k", "client#1")
    full = reserve_as(r, "gig", "bob", 9, "f", None)  # a remembered rejection
    for (client, qty, rq, actor), original in (((("ann", 2, "k", "client#1")), first), (("bob", 9, "f", None), full)):
        record = r.get(keys.request_key("gig", rq, PARTITIONS, actor))
        assert record.startswith("3 ") and len(record) < 100, record
        again = reserve_as(r, "gig", client, qty, rq, actor)
        assert again["replayed"] == "1"
        assert list(again.items())[:-1] == [(k, v) for k, v in original.items() if k != "replayed"]


def test_an_unreadable_record_is_never_taken_for_a_new_request(r) -> None:
    create(r, "gig", 5)
    r.set(keys.request_key("gig", "k", PARTITIONS, "client#1"), "3 garbled")
    d = reserve_as(r, "gig", "ann", 1, "k", "client#1")
    assert (d["decision"], d["reason"]) == ("REJECTED", "REQUEST_ID_REUSED")
    assert r.hget(rkeys("gig")[0], "reserved") == "0"
