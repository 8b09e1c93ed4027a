"""The /webhooks routes: contract, refusals that write nothing, secrets shown
only at creation and rotation."""

from __future__ import annotations

import logging

import pytest

from tests.api_support import CL, OP, api, assert_no_leak

ROUTES = [
    ("GET", "/webhooks/event-types"), ("POST", "/webhooks"), ("GET", "/webhooks"), ("GET", "/webhooks/wh_x"),
    ("PATCH", "/webhooks/wh_x"), ("DELETE", "/webhooks/wh_x"), ("POST", "/webhooks/wh_x/rotate-secret"),
    ("POST", "/webhooks/wh_x/test"), ("GET", "/webhooks/wh_x/deliveries"),
    ("POST", "/webhooks/wh_x/deliveries/msg_x/retry"),
]
URL = "http://127.0.0.1:9/hook"


async def snapshot(pool) -> tuple:
    async with pool.connection() as conn:
        hooks = await (await conn.execute("SELECT * FROM webhooks ORDER BY webhook_id")).fetchall()
        deliveries = await (await conn.execute("SELECT * FROM webhook_deliveries ORDER BY delivery_id")).fetchall()
    return hooks, deliveries


async def create(c, **body):
    response = await c.post("/webhooks", headers=OP, json={"url": URL, "event_types": ["*"], **body})
    assert response.status_code == 201, response.text
    return response.json()


async def test_without_a_database_every_route_is_503(redis_url):
    async with api(redis_url) as c:
        for method, path in ROUTES:
            response = await c.request(method, path, headers=OP, json={"url": URL, "event_types": ["*"]}
                                       if method in ("POST", "PATCH") else None)
            assert (response.status_code, response.json()) == (503, {"error": "UNAVAILABLE"}), (method, path)


async def test_client_keys_are_refused(redis_url, database_url):
    async with api(redis_url, database_url=database_url) as c:
        for method, path in ROUTES:
            response = await c.request(method, path, headers=CL)
            assert response.status_code == 403, (method, path)
            assert (await c.request(method, path)).status_code == 401


async def test_lifecycle_and_the_secret_shown_twice(redis_url, database_url, allow_private, caplog):
    caplog.set_level(logging.DEBUG)
    async with api(redis_url, database_url=database_url) as c:
        types = (await c.get("/webhooks/event-types", headers=OP)).json()["event_types"]
        assert "waitlist.notified" in types and "reservation.confirmed" in types
        assert not [t for t in types if t.endswith("replayed")]
        created = await create(c, event_types=["waitlist.notified", "reservation.cancelled"],
                               resource_ids=["gig"], description="front desk")
        secret = created.pop("secret")
        assert secret.startswith("whsec_")
        hook_id = created["webhook_id"]
        assert created == {"webhook_id": hook_id, "url": URL, "event_types": ["waitlist.notified",
                           "reservation.cancelled"], "resource_ids": ["gig"], "description": "front desk",
                           "enabled": True, "created_at": created["created_at"]}
        answers = []
        got = await c.get(f"/webhooks/{hook_id}", headers=OP)
        assert got.status_code == 200
        assert got.json() == {**created, "disabled_reason": None}
        answers.append(got.text)
        listed = await c.get("/webhooks", headers=OP)
        assert [h["webhook_id"] for h in listed.json()["webhooks"]] == [hook_id]
        answers.append(listed.text)
        patched = await c.patch(f"/webhooks/{hook_id}", headers=OP,
                                json={"event_types": ["*"], "resource_ids": None, "enabled": False})
        assert patched.status_code == 200, patched.text
        assert patched.json()["event_types"] == ["*"] and patched.json()["resource_ids"] is None
        assert patched.json()["enabled"] is False and patched.json()["disabled_reason"]
        answers.append(patched.text)
        again = await c.patch(f"/webhooks/{hook_id}", headers=OP, json={"enabled": True, "description": None})
        assert again.json()["enabled"] is True and again.json()["disabled_reason"] is None
        assert again.json()["description"] is None
        answers.append(again.text)
        rotated = await c.post(f"/webhooks/{hook_id}/rotate-secret", headers=OP)
        assert rotated.status_code == 200
        new_secret = rotated.json()["secret"]
        assert new_secret.startswith("whsec_") and new_secret != secret
        assert (await c.post(f"/webhooks/{hook_id}/test", headers=OP)).status_code == 202
        deliveries = await c.get(f"/webhooks/{hook_id}/deliveries", headers=OP)
        assert deliveries.status_code == 200
        [test] = deliveries.json()["deliveries"]
        assert test["event_type"] == "webhook.test" and test["status"] == "PENDING"
        assert set(test) == {"delivery_id", "event_type", "stream_id", "resource_id", "status", "attempts",
                             "last_status_code", "last_error", "next_attempt_at", "delivered_at", "created_at"}
        answers.append(deliveries.text)
        assert (await c.get(f"/webhooks/{hook_id}/deliveries?status=DELIVERED", headers=OP)).json() == {
            "deliveries": [], "next": None}
        retried = await c.post(f"/webhooks/{hook_id}/deliveries/{test['delivery_id']}/retry", headers=OP)
        assert retried.status_code == 202
        assert (await c.delete(f"/webhooks/{hook_id}", headers=OP)).status_code == 204
        assert (await c.get(f"/webhooks/{hook_id}", headers=OP)).status_code == 404
        assert (await c.delete(f"/webhooks/{hook_id}", headers=OP)).status_code == 404
        answers.append((await c.get("/webhooks", headers=OP)).text)
        metrics = (await c.get("/metrics", headers=OP)).text
        assert 'resv_webhook_deliveries{status="CANCELLED"} 1.0' in metrics
        assert "resv_webhook_oldest_pending_seconds" in metrics
    for text in answers + [metrics]:
        assert secret not in text and new_secret not in text
    logged = "\n".join(r.getMessage() + repr(getattr(r, "resv", "")) for r in caplog.records)
    assert logged  # the operator log did write
    for s in (secret, new_secret, secret.removeprefix("whsec_"), new_secret.removeprefix("whsec_")):
        assert s not in logged


async def test_a_deleted_endpoints_pending_deliveries_are_cancelled(redis_url, database_url, allow_private, pool):
    async with api(redis_url, database_url=database_url) as c:
        hook = await create(c)
        for _ in range(3):
            await c.post(f"/webhooks/{hook['webhook_id']}/test", headers=OP)
        await c.delete(f"/webhooks/{hook['webhook_id']}", headers=OP)
    async with pool.connection() as conn:
        rows = await (await conn.execute("SELECT status, last_error FROM webhook_deliveries")).fetchall()
        secret = (await (await conn.execute("SELECT secret FROM webhooks")).fetchone())[0]
    assert rows == [("CANCELLED", "endpoint deleted")] * 3
    assert secret == ""  # a deleted endpoint's secret is forgotten


BAD_CREATES = [
    ({}, "body"),
    ({"url": URL}, "event_types"),
    ({"event_types": ["*"]}, "url"),
    ({"url": URL, "event_types": []}, "event_types"),
    ({"url": URL, "event_types": ["reservation.confirmd"]}, "event_types"),
    ({"url": URL, "event_types": ["reservation.replayed"]}, "event_types"),
    ({"url": URL, "event_types": ["*", "waitlist.notified"]}, "event_types"),
    ({"url": URL, "event_types": "*"}, "event_types"),
    ({"url": URL, "event_types": [1]}, "event_types"),
    ({"url": "ftp://example.com/", "event_types": ["*"]}, "url"),
    ({"url": "https://u:p@example.com/", "event_types": ["*"]}, "url"),
    ({"url": "http://169.254.169.254/latest", "event_types": ["*"]}, "url"),
    ({"url": "http://[fe80::1]/", "event_types": ["*"]}, "url"),
    ({"url": "http://no-such-host.invalid/", "event_types": ["*"]}, "url"),
    ({"url": "", "event_types": ["*"]}, "url"),
    ({"url": 5, "event_types": ["*"]}, "url"),
    ({"url": URL, "event_types": ["*"], "resource_ids": []}, "resource_ids"),
    ({"url": URL, "event_types": ["*"], "resource_ids": ["bad id"]}, "resource_ids"),
    ({"url": URL, "event_types": ["*"], "description": "x" * 300}, "description"),
    ({"url": URL, "event_types": ["*"], "description": "a\nb"}, "description"),
    ({"url": URL, "event_types": ["*"], "secret": "whsec_mine"}, "secret"),
    ({"url": URL, "event_types": ["*"], "enabled": False}, "enabled"),
]


@pytest.mark.parametrize("body, field", BAD_CREATES)
async def test_bad_creates_name_the_field_and_write_nothing(redis_url, database_url, allow_private, pool,
                                                            body, field):
    async with api(redis_url, database_url=database_url) as c:
        before = await snapshot(pool)
        response = await c.post("/webhooks", headers=OP, json=body)
        assert response.status_code == 400, response.text
        assert response.json()["error"] == "BAD_REQUEST"
        assert field in response.json()["detail"], response.json()
        assert_no_leak(response.text)
        assert await snapshot(pool) == before


async def test_private_receivers_need_the_setting(redis_url, database_url, pool):
    async with api(redis_url, database_url=database_url) as c:
        response = await c.post("/webhooks", headers=OP, json={"url": URL, "event_types": ["*"]})
        assert response.status_code == 400
        assert response.json()["detail"] == "url: the host resolves to a loopback address"
        assert await snapshot(pool) == ([], [])


async def test_bad_input_on_the_other_routes(redis_url, database_url, allow_private, pool):
    async with api(redis_url, database_url=database_url) as c:
        hook = await create(c)
        hid = hook["webhook_id"]
        await c.post(f"/webhooks/{hid}/test", headers=OP)
        before = await snapshot(pool)
        cases = [
            ("PATCH", f"/webhooks/{hid}", {}, "body"),
            ("PATCH", f"/webhooks/{hid}", {"enabled": "yes"}, "enabled"),
            ("PATCH", f"/webhooks/{hid}", {"url": "gopher://x/"}, "url"),
            ("PATCH", f"/webhooks/{hid}", {"event_types": ["nope"]}, "event_types"),
            ("PATCH", f"/webhooks/{hid}", {"resource_ids": ["ok", "not ok"]}, "resource_ids"),
            ("PATCH", f"/webhooks/{hid}", {"secret": "x"}, "secret"),
            ("PATCH", f"/webhooks/{hid}", {"event_types": None}, "event_types"),
            ("GET", f"/webhooks/{hid}/deliveries?status=LOST", None, "status"),
            ("GET", f"/webhooks/{hid}/deliveries?cursor=bm9wZQ", None, "cursor"),
            ("GET", f"/webhooks/{hid}/deliveries?cursor=" + "x" * 300, None, "cursor"),
        ]
        for method, path, body, field in cases:
            response = await c.request(method, path, headers=OP, json=body)
            assert response.status_code == 400, (path, body, response.text)
            assert field in response.json()["detail"], (path, body, response.json())
            assert hook["secret"] not in response.text
        for method, path in [("GET", "/webhooks/wh_nope"), ("PATCH", "/webhooks/wh_nope"),
                             ("DELETE", "/webhooks/wh_nope"), ("POST", "/webhooks/wh_nope/rotate-secret"),
                             ("POST", "/webhooks/wh_nope/test"), ("GET", "/webhooks/wh_nope/deliveries"),
                             ("POST", f"/webhooks/{hid}/deliveries/msg_nope/retry"),
                             ("POST", "/webhooks/wh_nope/deliveries/msg_nope/retry")]:
            response = await c.request(method, path, headers=OP, json={"enabled": True} if method == "PATCH" else None)
            assert (response.status_code, response.json()) == (404, {"error": "NOT_FOUND"}), (method, path)
        assert await snapshot(pool) == before


NOT_OBJECTS = [b"{", b"not json", b"[]", b'["*"]', b"null", b"42", b'"url"', b'{"url": "' + URL.encode() + b'",}']


@pytest.mark.parametrize("raw", NOT_OBJECTS, ids=lambda r: r.decode())
async def test_bodies_that_are_not_json_objects_are_400s_that_write_nothing(redis_url, database_url, allow_private,
                                                                             pool, raw):
    async with api(redis_url, database_url=database_url) as c:
        hook = await create(c)
        before = await snapshot(pool)
        for method, path in (("POST", "/webhooks"), ("PATCH", f"/webhooks/{hook['webhook_id']}")):
            response = await c.request(method, path, headers={**OP, "Content-Type": "application/json"},
                                       content=raw)
            assert response.status_code == 400, (method, raw, response.text)
            assert response.json()["error"] == "BAD_REQUEST"
            assert hook["secret"] not in response.text
            assert_no_leak(response.text)
        assert await snapshot(pool) == before


async def test_retrying_a_delivered_or_cancelled_delivery_is_409_and_writes_nothing(
        redis_url, database_url, allow_private, pool):
    async with api(redis_url, database_url=database_url) as c:
        hook = await create(c)
        hid = hook["webhook_id"]
        for _ in range(2):
            assert (await c.post(f"/webhooks/{hid}/test", headers=OP)).status_code == 202
        async with pool.connection() as conn:  # one taken by a receiver, one cancelled (what a notifier writes)
            ids = [r[0] for r in await (await conn.execute(
                "SELECT delivery_id FROM webhook_deliveries ORDER BY delivery_id")).fetchall()]
            await conn.execute("UPDATE webhook_deliveries SET status = 'DELIVERED', attempts = 1, "
                               "delivered_at = now() WHERE delivery_id = %s", (ids[0],))
            await conn.execute("UPDATE webhook_deliveries SET status = 'CANCELLED' WHERE delivery_id = %s", (ids[1],))
        before = await snapshot(pool)
        for delivery_id in ids:
            response = await c.post(f"/webhooks/{hid}/deliveries/{delivery_id}/retry", headers=OP)
            assert (response.status_code, response.json()) == (409, {"error": "INVALID_STATE"})
        assert await snapshot(pool) == before
