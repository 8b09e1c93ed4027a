"""Idempotency records: none for a resource that does not exist, and request
ids scoped to the actor (the application) when one is given, at the Lua and
through the HTTP API."""

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
    req = keys.request_key(rid, request_id, PARTITIONS, actor)
    args = [rid, client, str(qty), request_id, ttl] + ([actor] if actor is not None else [])
    ks = rkeys(rid) + [req]
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
    ks = rkeys("gig") + [f"{keys.resource_prefix('gig', PARTITIONS)}req:gig:{actor}:k"]
    with pytest.raises(redis.ResponseError, match="BAD_ARGUMENT actor"):
        r.execute_command("FCALL", "resv_reserve", 7, *ks, "gig", "ann", "1", "k", "", actor)
    assert snapshot(r) == before


def test_keys7_must_carry_the_actor(r) -> None:
    create(r, "gig", 5)
    before = snapshot(r)
    unscoped = keys.request_key("gig", "k", PARTITIONS)
    with pytest.raises(redis.ResponseError, match="BAD_ARGUMENT KEYS\\[7\\]"):
        r.execute_command("FCALL", "resv_reserve", 7, *rkeys("gig"), unscoped, "gig", "ann", "1", "k", "", "client#1")
    assert snapshot(r) == before


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
