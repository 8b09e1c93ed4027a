"""The console's webhook pages and its sign-in limit, without a browser: the
app on the suite's Valkey and a fresh PostgreSQL database, signed in the way
a browser does (the form's CSRF token, the session cookie)."""

from __future__ import annotations

import re
from datetime import timedelta

import httpx

from tests.api_support import CLIENT_KEY, OP, OPERATOR_KEY, api
from tests.console_support import leak_pattern
from tests.procs import OPERATOR_KEY as SERVED_OPERATOR_KEY
from tests.procs import resv_serve

URL = "http://127.0.0.1:9/hook"
TOKEN = re.compile(r'name="_csrf_token" value="([^"]+)"')


async def sign_in(c, key: str = OPERATOR_KEY):
    form = await c.get("/console/sign-in")
    token = TOKEN.search(form.text).group(1)
    return await c.post("/console/sign-in", data={"key": key, "_csrf_token": token}, follow_redirects=False)


async def signed_in(c) -> str:
    """Signs in; the CSRF token for the forms."""
    answer = await sign_in(c)
    assert answer.status_code == 303, answer.text
    return TOKEN.search((await c.get("/console/webhooks")).text).group(1)


async def create_hook(c, **body) -> dict:
    response = await c.post("/webhooks", headers=OP, json={"url": URL, "event_types": ["*"], **body})
    assert response.status_code == 201, response.text
    return response.json()


async def test_without_a_database_the_pages_say_webhooks_need_it(redis_url):
    async with api(redis_url) as c:
        token = await signed_in(c)
        for path in ("/console/webhooks", "/console/webhooks/wh_x"):
            answer = await c.get(path)
            assert answer.status_code == 200
            assert "Webhooks need the audit database" in answer.text and "DATABASE_URL" in answer.text
        answer = await c.post("/console/webhooks/wh_x/deliveries/msg_x/retry", data={"_csrf_token": token})
        assert answer.status_code == 503 and "Webhooks need the audit database" in answer.text
        assert 'href="/console/webhooks"' in (await c.get("/console/resources")).text  # in the navigation


async def test_the_endpoints_and_their_deliveries_never_a_secret(redis_url, database_url, allow_private, pool):
    leaks = leak_pattern(OPERATOR_KEY, CLIENT_KEY)
    async with api(redis_url, database_url=database_url) as c:
        await signed_in(c)
        one = await create_hook(c, event_types=["reservation.confirmed", "waitlist.notified"],
                                resource_ids=["gig"], description="front desk")
        two = await create_hook(c)
        off = await c.patch(f"/webhooks/{two['webhook_id']}", headers=OP, json={"enabled": False})
        assert off.status_code == 200
        secrets = [one["secret"], two["secret"]]
        rotated = await c.post(f"/webhooks/{one['webhook_id']}/rotate-secret", headers=OP)
        secrets.append(rotated.json()["secret"])
        async with pool.connection() as conn:  # 105 deliveries, a few of each status
            await conn.execute(
                """INSERT INTO webhook_deliveries (webhook_id, event_type, payload, ms, seq, status, attempts,
                                                   last_status_code, last_error, created_at)
                   SELECT %s, 'webhook.test', '{}', 0, 0,
                          (ARRAY['PENDING', 'DELIVERED', 'FAILED', 'CANCELLED'])[1 + n %% 4], n %% 4,
                          CASE WHEN n %% 4 = 2 THEN 500 END, CASE WHEN n %% 4 = 2 THEN 'HTTP 500' END,
                          now() - make_interval(secs => n)
                   FROM generate_series(1, 105) AS n""", (one["webhook_id"],))
        pages = {}
        listing = await c.get("/console/webhooks")
        assert listing.status_code == 200
        pages["list"] = listing.text
        rows = re.findall(r'<tr data-webhook-id="([^"]+)">(.*?)</tr>', listing.text, re.S)
        assert [hook_id for hook_id, _ in rows] == [one["webhook_id"], two["webhook_id"]]
        first, second = (re.sub(r"<[^>]+>", "|", row) for _, row in rows)
        for shown in (URL, "reservation.confirmed, waitlist.notified", "gig", "yes", "front desk"):
            assert shown in first
        assert "every resource" in second and "|no|" in second and "disabled by an operator" in second

        newest = await c.get(f"/console/webhooks/{one['webhook_id']}")
        assert newest.status_code == 200
        pages["deliveries"] = newest.text
        ids = re.findall(r'data-delivery-id="([^"]+)"', newest.text)
        assert len(ids) == 100
        assert "HTTP 500" in newest.text and "<th scope=\"col\" class=\"n\">last status code</th>" in newest.text
        # a Retry form on each FAILED or PENDING row, none on the others
        statuses = re.findall(r'data-delivery-id="[^"]+" data-status="([A-Z]+)"', newest.text)
        assert newest.text.count('class="retry"') == sum(s in ("FAILED", "PENDING") for s in statuses) > 0
        older_link = re.search(r'rel="next" href="([^"]+)"', newest.text).group(1).replace("&amp;", "&")
        older = await c.get(older_link)
        pages["older"] = older.text
        older_ids = re.findall(r'data-delivery-id="([^"]+)"', older.text)
        assert len(older_ids) == 5 and not set(older_ids) & set(ids) and 'rel="next"' not in older.text
        async with pool.connection() as conn:
            cur = await conn.execute("SELECT delivery_id FROM webhook_deliveries WHERE webhook_id = %s "
                                     "ORDER BY created_at DESC", (one["webhook_id"],))
            assert ids + older_ids == [r[0] for r in await cur.fetchall()]  # newest first, each once

        failed = await c.get(f"/console/webhooks/{one['webhook_id']}?status=FAILED")
        pages["failed"] = failed.text
        assert set(re.findall(r'data-status="([A-Z]+)"', failed.text)) == {"FAILED"}
        assert len(re.findall(r'data-status="', failed.text)) == 26
        none = await c.get(f"/console/webhooks/{two['webhook_id']}")
        pages["no deliveries"] = none.text
        assert "No delivery." in none.text and "DISABLED" in none.text

        for name, path, status in (("unknown endpoint", "/console/webhooks/wh_nope", 404),
                                   ("bad status", f"/console/webhooks/{one['webhook_id']}?status=LOST", 400),
                                   ("bad cursor", f"/console/webhooks/{one['webhook_id']}?cursor=abc", 400),
                                   ("bad id", "/console/webhooks/bad%20id", 400)):
            answer = await c.get(path)
            assert answer.status_code == status, (name, answer.status_code)
            pages[name] = answer.text
        assert "There is no webhook endpoint wh_nope." in pages["unknown endpoint"]
        for name, html in pages.items():
            for secret in secrets:
                assert secret not in html and secret.removeprefix("whsec_") not in html, name
            assert not leaks.search(html), (name, leaks.search(html).group(0))


async def delivery_row(pool, delivery_id: str) -> tuple:
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT status, next_attempt_at, now(), attempts FROM webhook_deliveries "
                                 "WHERE delivery_id = %s", (delivery_id,))
        return await cur.fetchone()


async def test_retry_is_confirmed_then_does_what_the_api_route_does(redis_url, database_url, allow_private, pool):
    async with api(redis_url, database_url=database_url) as c:
        token = await signed_in(c)
        hook = await create_hook(c)
        hook_id = hook["webhook_id"]
        assert (await c.post(f"/webhooks/{hook_id}/test", headers=OP)).status_code == 202
        assert (await c.post(f"/webhooks/{hook_id}/test", headers=OP)).status_code == 202
        async with pool.connection() as conn:
            cur = await conn.execute("SELECT delivery_id FROM webhook_deliveries ORDER BY created_at")
            failed_id, done_id = [r[0] for r in await cur.fetchall()]
            await conn.execute("""UPDATE webhook_deliveries SET status = 'FAILED', attempts = 7,
                                         last_status_code = 500, last_error = 'HTTP 500',
                                         next_attempt_at = now() - interval '1 day' WHERE delivery_id = %s""",
                               (failed_id,))
            await conn.execute("UPDATE webhook_deliveries SET status = 'DELIVERED', delivered_at = now() "
                               "WHERE delivery_id = %s", (done_id,))
        action = f"/console/webhooks/{hook_id}/deliveries/{failed_id}/retry"
        shown = (await c.get(f"/console/webhooks/{hook_id}")).text
        assert f'action="{action}"' in shown  # the page's form is this one
        assert f'action="/console/webhooks/{hook_id}/deliveries/{done_id}/retry"' not in shown

        # missing or forged CSRF tokens: refused, nothing changed
        for data in ({"confirmed": "yes"}, {"confirmed": "yes", "_csrf_token": "0" * 128}):
            answer = await c.post(action, data=data)
            assert answer.status_code == 403 and "was not accepted" in answer.text
        assert (await delivery_row(pool, failed_id))[0] == "FAILED"

        # step one: a confirmation page, nothing sent yet
        confirm = await c.post(action, data={"_csrf_token": token})
        assert confirm.status_code == 200, confirm.text
        assert 'name="confirmed" value="yes"' in confirm.text and "HTTP 500" in confirm.text
        assert (await delivery_row(pool, failed_id))[0] == "FAILED"
        # step two: PENDING and due now, as POST /webhooks/{id}/deliveries/{delivery_id}/retry
        done = await c.post(action, data={"_csrf_token": token, "confirmed": "yes"})
        assert done.status_code == 200 and "Queued" in done.text, done.text
        status, next_at, now, attempts = await delivery_row(pool, failed_id)
        assert status == "PENDING" and attempts == 7
        assert timedelta(0) <= now - next_at < timedelta(seconds=30)

        # a DELIVERED one is not retried, at either step
        final = f"/console/webhooks/{hook_id}/deliveries/{done_id}/retry"
        for data in ({"_csrf_token": token}, {"_csrf_token": token, "confirmed": "yes"}):
            answer = await c.post(final, data=data)
            assert answer.status_code == 409 and "DELIVERED" in answer.text
        assert (await delivery_row(pool, done_id))[0] == "DELIVERED"
        # unknown endpoint or delivery: a 404 page, at either step
        for path in (f"/console/webhooks/wh_nope/deliveries/{failed_id}/retry",
                     f"/console/webhooks/{hook_id}/deliveries/msg_nope/retry"):
            for data in ({"_csrf_token": token}, {"_csrf_token": token, "confirmed": "yes"}):
                answer = await c.post(path, data=data)
                assert answer.status_code == 404, (path, data, answer.status_code)
                assert "There is no webhook endpoint" in answer.text or "has no delivery" in answer.text
        # a session is required: the form alone does nothing
        assert (await c.post("/console/sign-out", data={"_csrf_token": token},
                             follow_redirects=False)).status_code == 303
        async with pool.connection() as conn:
            await conn.execute("UPDATE webhook_deliveries SET status = 'FAILED' WHERE delivery_id = %s", (failed_id,))
        answer = await c.post(action, data={"_csrf_token": token, "confirmed": "yes"})
        assert answer.status_code == 401
        assert (await delivery_row(pool, failed_id))[0] == "FAILED"


async def test_sign_in_attempts_are_limited_per_address(redis_url):
    async with api(redis_url, console_sign_in_limit=3) as c:
        for _ in range(3):
            assert (await sign_in(c, "not-a-key")).status_code == 401
        for _ in range(5):  # the form itself is not counted
            assert (await c.get("/console/sign-in")).status_code == 200
        for key in ("not-a-key", OPERATOR_KEY):  # the right key too, once over the limit
            answer = await sign_in(c, key)
            assert answer.status_code == 429, answer.text
            assert answer.headers["content-type"].startswith("text/html")
            assert answer.headers["retry-after"] == "60"
            assert "Too many sign-in attempts" in answer.text and OPERATOR_KEY not in answer.text
            assert "resv_console=" not in answer.headers.get("set-cookie", "")
        # the API's routes do not share the limit
        assert (await c.get("/resources/none", headers=OP)).status_code == 404
    async with api(redis_url, console_sign_in_limit=0) as c:  # 0: no limit
        for _ in range(5):
            assert (await sign_in(c, "not-a-key")).status_code == 401


def test_another_address_still_signs_in(redis_url):
    """Against `resv serve`: the address is the connection's, as uvicorn
    reports it (127.0.0.2 is loopback too on Linux)."""
    with resv_serve(redis_url, RESV_CONSOLE_SIGN_IN_LIMIT="2", RESV_DURABILITY="relaxed") as base:
        def attempt(client: httpx.Client, key: str) -> httpx.Response:
            token = TOKEN.search(client.get(base + "/console/sign-in").text).group(1)
            return client.post(base + "/console/sign-in", data={"key": key, "_csrf_token": token})

        with httpx.Client() as here:
            assert [attempt(here, "nope").status_code for _ in range(3)] == [401, 401, 429]
            assert attempt(here, SERVED_OPERATOR_KEY).status_code == 429
        with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2")) as there:
            answer = attempt(there, SERVED_OPERATOR_KEY)
            assert answer.status_code == 303 and answer.headers["location"] == "/console/resources"
            assert "resv_console=" in answer.headers["set-cookie"]
