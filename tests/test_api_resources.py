"""Operator routes: POST /resources, GET and PATCH /resources/{id}."""

from __future__ import annotations

import pytest
import redis

from resv.engine import keys
from tests.api_support import CL, ISO_UTC_US, OP, api, create_resource, reserve

FULL_STATE = {"resource_id", "type", "capacity", "reserved", "remaining", "state", "status", "version",
              "opens_at", "closes_at", "waitlist_enabled", "max_per_request", "max_per_client",
              "notify_window_ms", "waitlist_length", "notified", "created_at", "updated_at"}


async def test_create_then_read(redis_url):
    async with api(redis_url) as c:
        r = await c.post("/resources", headers=OP, json={
            "resource_id": "gig.2026-11_a", "type": "meetup", "capacity": 40,
            "opens_at": "2026-01-01T02:00:00+02:00", "closes_at": "2040-01-01T00:00:00.5Z",
            "waitlist_enabled": True, "max_per_request": 4, "max_per_client": 6, "notify_window_ms": 120000})
        assert r.status_code == 201
        assert r.headers["etag"] == '"1"'
        body = r.json()
        assert {k: body[k] for k in ("resource_id", "type", "capacity", "reserved", "state", "version")} == {
            "resource_id": "gig.2026-11_a", "type": "meetup", "capacity": 40, "reserved": 0,
            "state": "OPEN", "version": 1}
        assert body["opens_at"] == "2026-01-01T00:00:00.000000Z"  # converted to UTC
        assert body["closes_at"] == "2040-01-01T00:00:00.500000Z"
        assert (body["waitlist_enabled"], body["max_per_request"], body["max_per_client"]) == (True, 4, 6)
        assert body["notify_window_ms"] == 120000

        got = await c.get("/resources/gig.2026-11_a", headers=OP)
        assert got.status_code == 200 and got.headers["etag"] == '"1"'
        state = got.json()
        assert set(state) == FULL_STATE
        assert (state["remaining"], state["status"], state["waitlist_length"]) == (40, "OPEN", 0)
        assert ISO_UTC_US.fullmatch(state["created_at"]) and ISO_UTC_US.fullmatch(state["updated_at"])
        assert state["notified"] == 0
        for key in ("opens_at", "closes_at", "max_per_request", "max_per_client", "type", "capacity",
                    "notify_window_ms"):
            assert state[key] == body[key]


async def test_create_conflict_and_bad_input(redis_url):
    async with api(redis_url) as c:
        await create_resource(c, "gig", 1)
        dup = await c.post("/resources", headers=OP, json={"resource_id": "gig", "type": "t", "capacity": 5})
        assert (dup.status_code, dup.json()) == (409, {"error": "ALREADY_EXISTS"})
        bad = {
            "naive time": ({"opens_at": "2030-01-01T00:00:00"}, "opens_at"),
            "window": ({"opens_at": "2030-01-02T00:00:00Z", "closes_at": "2030-01-01T00:00:00Z"}, "closes_at"),
            "capacity": ({"capacity": -1}, "capacity"),
            "huge capacity": ({"capacity": 10**10}, "capacity"),
            "limit": ({"max_per_client": 0}, "max_per_client"),
            "no window": ({"notify_window_ms": 0}, "notify_window_ms"),
            "long window": ({"notify_window_ms": 30 * 86_400_000 + 1}, "notify_window_ms"),
            "type": ({"type": "has space"}, "type"),
            "waitlist": ({"waitlist_enabled": "yes"}, "waitlist_enabled"),
            "unknown": ({"colour": "red"}, "colour"),
            "id": ({"resource_id": "no/slash"}, "resource_id"),
        }
        for name, (change, field) in bad.items():
            r = await c.post("/resources", headers=OP,
                             json={"resource_id": "new", "type": "t", "capacity": 5, **change})
            assert r.status_code == 400, name
            assert r.json()["error"] == "BAD_REQUEST" and field in r.json()["detail"], (name, r.json())
        assert (await c.get("/resources/new", headers=OP)).status_code == 404


async def test_unknown_resource_is_404(redis_url):
    async with api(redis_url) as c:
        r = await c.get("/resources/nowhere", headers=OP)
        assert (r.status_code, r.json()) == (404, {"error": "NOT_FOUND"})
        r = await c.patch("/resources/nowhere", headers={**OP, "If-Match": "1"}, json={"capacity": 3})
        assert (r.status_code, r.json()) == (404, {"error": "NOT_FOUND"})


@pytest.mark.parametrize("if_match", ["1", '"1"', ' "1" '])
async def test_patch_accepts_both_if_match_forms(redis_url, if_match):
    async with api(redis_url) as c:
        await create_resource(c, "gig", 5)
        r = await c.patch("/resources/gig", headers={**OP, "If-Match": if_match}, json={"capacity": 8})
        assert r.status_code == 200
        assert r.headers["etag"] == '"2"'
        assert set(r.json()) == FULL_STATE
        assert (r.json()["capacity"], r.json()["version"]) == (8, 2)


async def test_patch_preconditions(redis_url):
    async with api(redis_url) as c:
        await create_resource(c, "gig", 5)
        missing = await c.patch("/resources/gig", headers=OP, json={"capacity": 8})
        assert (missing.status_code, missing.json()) == (428, {"error": "PRECONDITION_REQUIRED"})
        for garbage in ("abc", "W/\"1\"", "*", "1, 2", '"1'):
            r = await c.patch("/resources/gig", headers={**OP, "If-Match": garbage}, json={"capacity": 8})
            assert r.status_code == 400 and "If-Match" in r.json()["detail"], garbage
        ok = await c.patch("/resources/gig", headers={**OP, "If-Match": "1"}, json={"capacity": 8})
        assert ok.status_code == 200
        stale = await c.patch("/resources/gig", headers={**OP, "If-Match": "1"}, json={"capacity": 9})
        assert (stale.status_code, stale.json()) == (412, {"error": "VERSION_MISMATCH"})
        assert (await c.get("/resources/gig", headers=OP)).json()["capacity"] == 8


async def test_patch_is_one_version_bump_and_null_clears(redis_url):
    async with api(redis_url) as c:
        await create_resource(c, "gig", 5, max_per_client=2, max_per_request=1, closes_at="2040-01-01T00:00:00Z")
        r = await c.patch("/resources/gig", headers={**OP, "If-Match": '"1"'}, json={
            "capacity": 7, "max_per_client": None, "closes_at": None, "waitlist_enabled": True,
            "type": "concert", "state": "CLOSED"})
        assert r.status_code == 200
        state = r.json()
        assert state["version"] == 2 and r.headers["etag"] == '"2"'
        assert (state["capacity"], state["max_per_client"], state["closes_at"], state["waitlist_enabled"],
                state["type"], state["state"], state["status"], state["max_per_request"]) == (
            7, None, None, True, "concert", "CLOSED", "CLOSED", 1)
        assert state["notify_window_ms"] == 900_000  # the default
        r = await c.patch("/resources/gig", headers={**OP, "If-Match": '"2"'}, json={"notify_window_ms": 5000})
        assert (r.status_code, r.json()["notify_window_ms"], r.json()["version"]) == (200, 5000, 3)
        r = await c.patch("/resources/gig", headers={**OP, "If-Match": '"3"'}, json={"notify_window_ms": None})
        assert (r.status_code, r.json()["notify_window_ms"]) == (200, 900_000)
        r = await c.patch("/resources/gig", headers={**OP, "If-Match": '"4"'}, json={"notify_window_ms": -1})
        assert r.status_code == 400 and "notify_window_ms" in r.json()["detail"]


async def test_patch_refusals(redis_url):
    async with api(redis_url) as c:
        await create_resource(c, "gig", 5)
        for _ in range(3):
            assert (await reserve(c, "gig", "ann")).status_code == 201
        below = await c.patch("/resources/gig", headers={**OP, "If-Match": "1"}, json={"capacity": 2})
        assert (below.status_code, below.json()) == (409, {"error": "INVALID_STATE"})
        for body, field in (({}, "body"), ({"type": None}, "type"), ({"state": "PAUSED"}, "state"),
                            ({"capacity": None}, "capacity"), ({"version": 3}, "version")):
            r = await c.patch("/resources/gig", headers={**OP, "If-Match": "1"}, json=body)
            assert r.status_code == 400 and field in r.json()["detail"], (body, r.json())
        # a window that conflicts with the stored one is refused by the engine, still a 400,
        # and logged as the engine's decision (every refused attempt is audited)
        await c.patch("/resources/gig", headers={**OP, "If-Match": "1"}, json={"closes_at": "2030-01-01T00:00:00Z"})
        r = await c.patch("/resources/gig", headers={**OP, "If-Match": "2"}, json={"opens_at": "2031-01-01T00:00:00Z"})
        assert (r.status_code, r.json()["error"]) == (400, "BAD_REQUEST") and "closes_at" in r.json()["detail"]
        assert (await c.get("/resources/gig", headers=OP)).json()["version"] == 2
    with redis.Redis.from_url(redis_url, decode_responses=True) as r:
        last = r.xrevrange(keys.stream_key(keys.partition_of("gig", 16)), count=1)[0][1]
    assert (last["type"], last["reason"], last["requested"]) == (
        "RULES_REJECTED", "WINDOW_INVERTED", '["opens_at","1924992000000000"]')


async def test_get_reads_the_source_of_truth_not_the_cache(redis_url):
    async with api(redis_url, availability_ttl_ms=60_000) as c:
        await create_resource(c, "gig", 5)
        assert (await c.get("/availability?resource_id=gig", headers=CL)).json()["remaining"] == 5
        await reserve(c, "gig", "ann", 2)
        assert (await c.get("/resources/gig", headers=OP)).json()["reserved"] == 2
        assert (await c.get("/availability?resource_id=gig", headers=CL)).json()["remaining"] == 5
