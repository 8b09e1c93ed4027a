"""POST /reservations, GET /reservations/{id}, POST .../cancel: the contract."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from resv.engine.errors import PUBLIC_MESSAGES
from tests.api_support import CL, ISO_UTC_US, OP, api, create_resource, reserve


async def test_confirmed_reservation_and_its_reading(redis_url):
    async with api(redis_url) as c:
        await create_resource(c, "gig", 3)
        r = await reserve(c, "gig", "ann", 2)
        assert r.status_code == 201
        body = r.json()
        assert set(body) >= {"reservation_id", "status", "resource_id", "quantity", "client_id", "confirmed_at"}
        assert body["status"] == "CONFIRMED"
        assert (body["resource_id"], body["quantity"], body["client_id"]) == ("gig", 2, "ann")
        assert ISO_UTC_US.fullmatch(body["confirmed_at"])
        confirmed = datetime.fromisoformat(body["confirmed_at"])
        assert abs(confirmed - datetime.now(UTC)) < timedelta(minutes=1)

        got = await c.get(f"/reservations/{body['reservation_id']}", headers=CL)
        assert got.status_code == 200
        assert got.json() == {**body, "cancelled_at": None}


async def test_an_integral_json_number_is_an_integer(redis_url):
    async with api(redis_url) as c:
        await create_resource(c, "gig", 3)
        r = await c.post("/reservations", headers=CL, json={"resource_id": "gig", "quantity": 2.0, "client_id": "a"})
        assert (r.status_code, r.json()["quantity"]) == (201, 2)


async def test_rejections_are_409_with_one_generic_message_per_code(redis_url):
    async with api(redis_url) as c:
        await create_resource(c, "gig", 1, max_per_request=1)
        assert (await reserve(c, "gig", "ann", 1)).status_code == 201
        full = await reserve(c, "gig", "bob", 1)
        assert full.status_code == 409
        assert full.json() == {"status": "REJECTED", "code": "RESOURCE_FULL",
                               "message": PUBLIC_MESSAGES["RESOURCE_FULL"]}
        over_limit = await reserve(c, "gig", "bob", 2)
        assert over_limit.json()["code"] == "INVALID_STATE"
        unknown = await reserve(c, "nowhere", "bob", 1)
        assert unknown.status_code == 409
        assert unknown.json() == {"status": "REJECTED", "code": "INVALID_STATE",
                                  "message": PUBLIC_MESSAGES["INVALID_STATE"]}
        # the exact reason is not in the body
        assert "UNKNOWN_RESOURCE" not in unknown.text and "SOLD_OUT" not in full.text


async def test_closed_and_out_of_window_are_resource_closed(redis_url):
    async with api(redis_url) as c:
        created = await create_resource(c, "gig", 5)
        closed = await c.patch("/resources/gig", headers={**OP, "If-Match": str(created["version"])},
                               json={"state": "CLOSED"})
        assert closed.status_code == 200
        r = await reserve(c, "gig")
        assert (r.status_code, r.json()["code"]) == (409, "RESOURCE_CLOSED")
        later = (datetime.now(UTC) + timedelta(days=1)).isoformat()
        await create_resource(c, "later", 5, opens_at=later)
        r = await reserve(c, "later")
        assert (r.status_code, r.json()["code"]) == (409, "RESOURCE_CLOSED")


async def test_idempotent_retry_returns_the_same_status_and_body(redis_url):
    async with api(redis_url) as c:
        await create_resource(c, "gig", 5)
        first = await reserve(c, "gig", "ann", 1, key="order-17")
        again = await reserve(c, "gig", "ann", 1, key="order-17")
        assert first.status_code == again.status_code == 201
        assert first.content == again.content
        state = (await c.get("/resources/gig", headers=OP)).json()
        assert state["reserved"] == 1


async def test_replayed_rejection_stays_a_rejection(redis_url):
    async with api(redis_url) as c:
        await create_resource(c, "gig", 1)
        won = await reserve(c, "gig", "ann", 1)
        lost = await reserve(c, "gig", "bob", 1, key="bob-1")
        assert lost.status_code == 409
        await c.post(f"/reservations/{won.json()['reservation_id']}/cancel", headers=CL)
        retry = await reserve(c, "gig", "bob", 1, key="bob-1")  # capacity is free now
        assert (retry.status_code, retry.content) == (409, lost.content)


async def test_same_key_with_another_body_is_422(redis_url):
    async with api(redis_url) as c:
        await create_resource(c, "gig", 5)
        assert (await reserve(c, "gig", "ann", 1, key="k-1")).status_code == 201
        for client_id, quantity in (("ann", 2), ("bob", 1)):
            reused = await reserve(c, "gig", client_id, quantity, key="k-1")
            assert reused.status_code == 422
            assert reused.json() == {"error": "IDEMPOTENCY_KEY_REUSED"}


async def test_idempotency_keys_are_scoped_per_resource(redis_url):
    async with api(redis_url) as c:
        await create_resource(c, "a", 5)
        await create_resource(c, "b", 5)
        ra = await reserve(c, "a", "ann", 1, key="same")
        rb = await reserve(c, "b", "ann", 1, key="same")
        assert ra.status_code == rb.status_code == 201
        assert ra.json()["reservation_id"] != rb.json()["reservation_id"]


async def test_without_a_key_each_request_is_new(redis_url):
    async with api(redis_url) as c:
        await create_resource(c, "gig", 5)
        one, two = await reserve(c, "gig", "ann"), await reserve(c, "gig", "ann")
        assert one.json()["reservation_id"] != two.json()["reservation_id"]


async def test_idempotency_key_is_validated(redis_url):
    async with api(redis_url) as c:
        await create_resource(c, "gig", 5)
        for bad in ("", "has space", "x" * 129, "tab\there"):
            r = await reserve(c, "gig", key=bad)
            assert r.status_code == 400, bad
            assert r.json()["error"] == "BAD_REQUEST"
            assert "Idempotency-Key" in r.json()["detail"]
        assert (await reserve(c, "gig", key="x" * 128)).status_code == 201
        assert (await reserve(c, "gig", key="!~{p}\"'")).status_code == 201


async def test_cancel_is_idempotent_and_frees_capacity(redis_url):
    async with api(redis_url) as c:
        await create_resource(c, "gig", 1)
        rid = (await reserve(c, "gig", "ann")).json()["reservation_id"]
        first = await c.post(f"/reservations/{rid}/cancel", headers=CL)
        assert first.status_code == 200
        body = first.json()
        assert body["status"] == "CANCELLED" and ISO_UTC_US.fullmatch(body["cancelled_at"])
        assert body["reservation_id"] == rid and body["client_id"] == "ann" and body["quantity"] == 1
        again = await c.post(f"/reservations/{rid}/cancel", headers=CL)
        assert (again.status_code, again.json()) == (200, body)
        assert (await c.get(f"/reservations/{rid}", headers=CL)).json() == body
        assert (await reserve(c, "gig", "bob")).status_code == 201


async def test_unknown_reservations_are_404(redis_url):
    async with api(redis_url) as c:
        await create_resource(c, "gig", 1)
        for rid in ("gig~99", "nowhere~1", "plain", "gig~w1", "bad!rid~1"):
            for method, path in (("GET", f"/reservations/{rid}"), ("POST", f"/reservations/{rid}/cancel")):
                r = await c.request(method, path, headers=CL)
                assert (r.status_code, r.json()) == (404, {"error": "NOT_FOUND"}), (method, path)
