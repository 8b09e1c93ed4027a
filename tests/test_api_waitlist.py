"""POST /waiting-list/join, GET and DELETE /waiting-list/{entry_id}."""

from __future__ import annotations

from resv.engine.errors import PUBLIC_MESSAGES
from tests.api_support import CL, ISO_UTC_US, OP, api, create_resource, reserve


async def join(c, resource_id="gig", client_id="ann", quantity=1):
    return await c.post("/waiting-list/join", headers=CL,
                        json={"resource_id": resource_id, "client_id": client_id, "quantity": quantity})


async def test_join_positions_and_rejoin(redis_url):
    async with api(redis_url) as c:
        await create_resource(c, "gig", 1, waitlist_enabled=True)
        first = await join(c, client_id="ann", quantity=2)
        assert first.status_code == 201
        body = first.json()
        assert {k: body[k] for k in ("resource_id", "client_id", "quantity", "position", "status")} == {
            "resource_id": "gig", "client_id": "ann", "quantity": 2, "position": 1, "status": "WAITING"}
        assert body["entry_id"]
        second = await join(c, client_id="bob")
        assert (second.status_code, second.json()["position"]) == (201, 2)
        again = await join(c, client_id="ann", quantity=2)
        assert again.status_code == 200
        assert again.json() == body

        got = await c.get(f"/waiting-list/{body['entry_id']}", headers=CL)
        assert got.status_code == 200
        assert got.json()["status"] == "WAITING" and got.json()["position"] == 1
        assert got.json()["notified_at"] is None


async def test_leave_is_idempotent(redis_url):
    async with api(redis_url) as c:
        await create_resource(c, "gig", 1, waitlist_enabled=True)
        entry = (await join(c)).json()["entry_id"]
        left = await c.delete(f"/waiting-list/{entry}", headers=CL)
        assert left.status_code == 200
        assert left.json()["status"] == "LEFT" and left.json()["position"] is None
        again = await c.delete(f"/waiting-list/{entry}", headers=CL)
        assert (again.status_code, again.json()) == (200, left.json())
        assert (await c.get(f"/waiting-list/{entry}", headers=CL)).json()["status"] == "LEFT"
        # a new join after leaving is a new entry
        assert (await join(c)).json()["entry_id"] != entry


async def test_notified_when_capacity_frees_then_fulfilled(redis_url):
    async with api(redis_url) as c:
        await create_resource(c, "gig", 1, waitlist_enabled=True)
        won = (await reserve(c, "gig", "ann")).json()["reservation_id"]
        entry = (await join(c, client_id="bob")).json()["entry_id"]
        await c.post(f"/reservations/{won}/cancel", headers=CL)
        notified = (await c.get(f"/waiting-list/{entry}", headers=CL)).json()
        assert notified["status"] == "NOTIFIED" and ISO_UTC_US.fullmatch(notified["notified_at"])
        assert notified["position"] is None
        assert (await reserve(c, "gig", "bob")).status_code == 201
        assert (await c.get(f"/waiting-list/{entry}", headers=CL)).json()["status"] == "FULFILLED"
        refused = await c.delete(f"/waiting-list/{entry}", headers=CL)
        assert refused.status_code == 409
        assert refused.json() == {"status": "REJECTED", "code": "INVALID_STATE",
                                  "message": PUBLIC_MESSAGES["INVALID_STATE"]}


async def test_join_rejections(redis_url):
    async with api(redis_url) as c:
        await create_resource(c, "nolist", 1)
        created = await create_resource(c, "closed", 1, waitlist_enabled=True)
        await c.patch("/resources/closed", headers={**OP, "If-Match": str(created["version"])},
                      json={"state": "CLOSED"})
        for resource_id, code in (("nolist", "INVALID_STATE"), ("nowhere", "INVALID_STATE"),
                                  ("closed", "RESOURCE_CLOSED")):
            r = await join(c, resource_id)
            assert r.status_code == 409, resource_id
            assert r.json() == {"status": "REJECTED", "code": code, "message": PUBLIC_MESSAGES[code]}


async def test_unknown_entries_are_404(redis_url):
    async with api(redis_url) as c:
        await create_resource(c, "gig", 1, waitlist_enabled=True)
        for entry in ("gig~w99", "nowhere~w1", "gig~1", "plain"):
            for method in ("GET", "DELETE"):
                r = await c.request(method, f"/waiting-list/{entry}", headers=CL)
                assert (r.status_code, r.json()) == (404, {"error": "NOT_FOUND"}), (method, entry)
