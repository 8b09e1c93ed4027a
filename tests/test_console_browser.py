"""The operator console in a real browser (Debian's Chromium, headless, via
Playwright) against a real `resv serve` and `resv archiver`, the suite's
Valkey and a fresh PostgreSQL database."""

from __future__ import annotations

import asyncio
import re
from concurrent.futures import ThreadPoolExecutor

import httpx
import psycopg
import pytest
import redis

from resv.engine.keys import partition_of, stream_key
from tests.console_support import (
    CL,
    CLIENT_KEY,
    LEAKS,
    OP,
    OPERATOR_KEY,
    chromium_or_skip,
    console_stack,
    create_resource,
    docs_path,
    notifier_process,
    wait_until,
)
from tests.webhook_support import Receiver

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(redis_server, pg_server):
    with console_stack(redis_server.url, pg_server.url) as (base, database_url):
        yield base, database_url, redis_server.url


@pytest.fixture(scope="module")
def browser():
    path = chromium_or_skip()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    yield context.new_page()
    context.close()


def sign_in(page, base: str, key: str = OPERATOR_KEY, then: str = "/console/resources"):
    page.goto(base + "/console/sign-in")
    page.fill("#key", key)
    page.click("button[type=submit]")
    if then:
        page.wait_for_url(re.compile(re.escape(then)))


def burst(base: str, rid: str, n: int) -> list[httpx.Response]:
    async def run():
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as http:
            return await asyncio.gather(*[
                http.post("/reservations", headers={**CL, "Idempotency-Key": f"{rid}-{i}"},
                          json={"resource_id": rid, "quantity": 1, "client_id": f"fan-{i}"})
                for i in range(n)])
    # in a thread of its own: Playwright's sync API runs an event loop in this one
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, run()).result()


def logged_events(redis_url: str, database_url: str, rid: str, seen: dict) -> list[tuple[str, dict]]:
    """The resource's events in stream order: what the stream held when read
    (the archiver trims what it archived), with PostgreSQL's verbatim copy."""
    with psycopg.connect(database_url) as conn:
        for sid, fields in conn.execute("SELECT stream_id, fields FROM events WHERE resource_id = %s", (rid,)):
            seen.setdefault(sid, fields)
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    for sid, fields in r.xrange(stream_key(partition_of(rid, 16))):
        if fields.get("resource_id") == rid:
            seen.setdefault(sid, fields)
    r.close()
    return sorted(seen.items(), key=lambda item: tuple(map(int, item[0].split("-"))))


def stream_snapshot(redis_url: str, rid: str) -> dict:
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        return {sid: f for sid, f in r.xrange(stream_key(partition_of(rid, 16))) if f.get("resource_id") == rid}
    finally:
        r.close()


def rows(page) -> list[dict]:
    return page.eval_on_selector_all("#timeline tbody tr", """rows => rows.map(r => ({
        id: r.dataset.streamId, type: r.dataset.type, decision: r.dataset.decision,
        reason: r.querySelector('td.reason').textContent.trim(),
        time: r.querySelector('td.time').textContent.trim(),
        group: r.parentElement.dataset.ms, grouped: r.parentElement.classList.contains('same-ms')}))""")


def test_a_burst_of_200_on_10_seats_reads_in_order_on_the_page(stack, page):
    base, database_url, redis_url = stack
    create_resource(base, "burst", 10)
    answers = burst(base, "burst", 200)
    assert sorted(a.status_code for a in answers) == [201] * 10 + [409] * 190
    seen = stream_snapshot(redis_url, "burst")

    sign_in(page, base)
    # the list comes from the audit's projection: the archiver has to catch up
    wait_until(lambda: page.reload() or page.locator("a", has_text="burst").count(), what="burst in the list")
    row = page.locator("tr", has=page.locator("a", has_text="burst"))
    assert row.locator("td").nth(5).inner_text() == "0"  # remaining
    page.click("a:text-is('burst')")
    page.wait_for_url(re.compile(r"/console/resources/burst$"))
    assert page.inner_text("#remaining") == "0" and page.inner_text("#capacity") == "10"
    page.select_option("#t-limit", "500")
    page.click("form.filters button")
    page.wait_for_url(re.compile(r"limit=500"))

    expected = logged_events(redis_url, database_url, "burst", seen)
    shown = rows(page)
    assert [r["id"] for r in shown] == [sid for sid, _ in expected]  # every event, in stream order
    assert [r["type"] for r in shown] == [f["type"] for _, f in expected]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}Z", r["time"]) for r in shown)
    confirmed = [r for r in shown if r["type"] == "RESERVATION_CONFIRMED"]
    rejected = [r for r in shown if r["type"] == "RESERVATION_REJECTED"]
    assert len(confirmed) == 10 and len(rejected) == 190
    assert {r["reason"] for r in rejected} == {"SOLD_OUT"} and all(r["decision"] == "REJECTED" for r in rejected)

    # same-millisecond groups: the page's groups are the events' milliseconds
    by_ms: list[list[str]] = []
    last = None
    for sid, f in expected:
        ms = int(f["ts"]) // 1000
        if by_ms and ms == last:
            by_ms[-1].append(sid)
        else:
            by_ms.append([sid])
        last = ms
    page_groups = page.eval_on_selector_all(
        "#timeline tbody", "bodies => bodies.map(b => Array.from(b.rows).map(r => r.dataset.streamId))")
    assert page_groups == by_ms
    multi = [g for g in by_ms if len(g) > 1]
    assert multi, "a burst of 200 decided nothing in the same millisecond?"
    first = page.locator(f"tr[data-stream-id='{multi[0][0]}'] .badge")
    assert first.is_visible() and first.inner_text() == f"{len(multi[0])} in 1 ms"
    assert all(r["grouped"] for r in shown if any(r["id"] in g for g in multi))

    # the pictures: drawn, with one mark per confirmation and per rejection
    assert page.locator("#picture-remaining svg path.step").count() == 1
    assert page.locator("#picture-remaining svg circle.mark-confirmed").count() == 10
    assert page.locator("#picture-remaining svg path.mark-rejected").count() == 190
    assert page.locator("#picture-rate svg rect.bar-confirmed").count() >= 1
    reasons = page.locator("#picture-reasons svg text").all_text_contents()
    assert "SOLD_OUT" in reasons and "190" in reasons
    for figure in ("#picture-remaining", "#picture-rate", "#picture-reasons"):
        box = page.locator(f"{figure} svg").bounding_box()
        assert box and box["width"] > 100 and box["height"] > 20

    # filters: the refusals alone, one client alone
    page.goto(base + "/console/resources/burst?outcome=REJECTED&limit=500")
    assert len(rows(page)) == 190
    page.fill("#t-client", "fan-7")
    page.select_option("#t-outcome", "")
    page.click("form.filters button")
    only = rows(page)
    assert len(only) == 1 and only[0]["id"] == next(sid for sid, f in expected if f.get("client_id") == "fan-7")

    # readable at 1280 px and at 390 px: nothing wider than the window; screenshots for docs/
    for width in (1280, 390):
        page.set_viewport_size({"width": width, "height": 900})
        page.goto(base + "/console/resources/burst?limit=50")
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        for element in ("h1", "#state", "#picture-remaining svg", "#timeline"):
            assert page.locator(element).first.is_visible()
        page.screenshot(path=str(docs_path(f"console-{width}.png")), full_page=True)


def test_change_capacity_from_the_page_and_a_stale_page_is_refused_in_words(stack, browser):
    base, _, _ = stack
    create_resource(base, "talk", 5)
    context = browser.new_context()
    page, stale = context.new_page(), context.new_page()
    sign_in(page, base)
    page.goto(base + "/console/resources/talk")
    stale.goto(base + "/console/resources/talk")
    assert page.inner_text("#page-version") == "version 1"

    # the live tail: a decision made elsewhere shows up on the open page
    made = httpx.post(base + "/reservations", headers={**CL, "Idempotency-Key": "live-1"},
                      json={"resource_id": "talk", "quantity": 2, "client_id": "zoe"})
    assert made.status_code == 201
    page.wait_for_selector("#timeline tr[data-type='RESERVATION_CONFIRMED']", timeout=10_000)

    page.fill("#f-capacity", "7")
    page.click("#change-rules")
    page.wait_for_selector("#confirm")
    assert "version 1" in page.inner_text("main")
    assert page.locator("#changes td").all_inner_texts() == ["capacity", "5", "7"]
    assert httpx.get(base + "/resources/talk", headers=OP).json()["version"] == 1  # nothing sent yet
    page.click("#confirm")
    page.wait_for_selector("#message")
    assert "RULES_CHANGED" in page.inner_text("#message") and "version 2" in page.inner_text("#message")
    page.click("#back")
    page.wait_for_selector("#timeline tr[data-type='RULES_CHANGED']")
    assert page.inner_text("#version") == "2" and page.inner_text("#capacity") == "7"
    changed = page.locator("#timeline tr[data-type='RULES_CHANGED']").last
    assert changed.locator("td").nth(11).inner_text() == "2"

    # the other page still shows version 1
    stale.fill("#f-capacity", "9")
    stale.click("#change-rules")
    stale.click("#confirm")
    message = stale.inner_text("#message")
    assert "this page showed version 1, but the resource is at version 2" in message
    state = httpx.get(base + "/resources/talk", headers=OP).json()
    assert (state["capacity"], state["version"]) == (7, 2)

    # close from the page, confirmed first
    page.goto(base + "/console/resources/talk")
    page.click("#close")
    page.click("#confirm")
    assert "version 3" in page.inner_text("#message")
    assert httpx.get(base + "/resources/talk", headers=OP).json()["state"] == "CLOSED"
    context.close()


def test_a_client_key_cannot_sign_in(stack, page):
    base, _, _ = stack
    for key in (CLIENT_KEY, "not-a-key"):
        sign_in(page, base, key, then="")
        assert "not an operator key" in page.inner_text("#refused")
        assert key not in page.content()
        assert not [c for c in page.context.cookies() if c["name"] == "resv_console"]
        page.goto(base + "/console/resources")
        assert "/console/sign-in" in page.url


def test_without_a_session_every_page_leads_to_sign_in_and_back(stack, page):
    base, _, _ = stack
    create_resource(base, "quiet", 3)
    page.goto(base + "/console/resources/quiet?limit=50")
    assert "/console/sign-in?next=" in page.url
    page.fill("#key", OPERATOR_KEY)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r"/console/resources/quiet\?limit=50$"))
    session = [c for c in page.context.cookies() if c["name"] == "resv_console"]
    assert session and session[0]["httpOnly"] and session[0]["sameSite"] == "Strict"
    assert OPERATOR_KEY not in session[0]["value"]
    page.click(".signout button")
    page.wait_for_url(re.compile(r"/console/sign-in$"))
    page.goto(base + "/console/resources/quiet")
    assert "/console/sign-in" in page.url
    # the tail answers 401 without a session, and never a page of data
    assert httpx.get(base + "/console/resources/quiet/tail").status_code == 401
    # the API's keys still work on the API and do not open the console
    assert httpx.get(base + "/console/resources", headers=OP, follow_redirects=False).status_code == 303


def test_forged_or_missing_csrf_tokens_are_refused(stack, page):
    base, _, _ = stack
    create_resource(base, "guarded", 4)
    sign_in(page, base)
    page.goto(base + "/console/resources/guarded")
    form = {"action": "rules", "version": "1", "capacity": "40", "confirmed": "yes"}
    for token in (None, "0" * 128):
        data = dict(form) if token is None else {**form, "_csrf_token": token}
        answer = page.request.post(base + "/console/resources/guarded/change", form=data)
        assert answer.status == 403
        assert "was not accepted" in answer.text()
    # a token from another session's cookie does not match this session's cookie
    other = httpx.get(base + "/console/sign-in")
    token = re.search(r'name="_csrf_token" value="([^"]+)"', other.text).group(1)
    answer = page.request.post(base + "/console/resources/guarded/change", form={**form, "_csrf_token": token})
    assert answer.status == 403
    assert httpx.get(base + "/resources/guarded", headers=OP).json()["capacity"] == 4
    # the page's own token works
    token = page.locator("#rules-form input[name=_csrf_token]").get_attribute("value")
    answer = page.request.post(base + "/console/resources/guarded/change", form={**form, "_csrf_token": token})
    assert answer.status == 200
    assert httpx.get(base + "/resources/guarded", headers=OP).json()["capacity"] == 40


def test_no_page_leaks_internals(stack, page):
    base, _, _ = stack
    create_resource(base, "leaky", 2, waitlist_enabled=True)
    httpx.post(base + "/reservations", headers={**CL, "Idempotency-Key": "lk-1"},
               json={"resource_id": "leaky", "quantity": 2, "client_id": "amy"})
    joined = httpx.post(base + "/waiting-list/join", headers=CL,
                        json={"resource_id": "leaky", "client_id": "bob", "quantity": 1})
    assert joined.status_code == 201, joined.text
    made = httpx.post(base + "/webhooks", headers=OP, json={"url": "http://127.0.0.1:9/hook", "event_types": ["*"],
                                                           "description": "nobody listens"})
    assert made.status_code == 201, made.text
    hook_id, secret = made.json()["webhook_id"], made.json()["secret"]
    assert httpx.post(base + f"/webhooks/{hook_id}/test", headers=OP).status_code == 202
    visited = {}
    page.goto(base + "/console/sign-in")
    visited["sign-in"] = page.content()
    sign_in(page, base)
    for name, path in {
        "list": "/console/resources?q=lea",
        "resource": "/console/resources/leaky",
        "unknown": "/console/resources/nothing-here",
        "bad id": "/console/resources/bad%20id!",
        "bad cursor": "/console/resources/leaky?after=abc",
        "bad limit": "/console/resources/leaky?limit=7",
        "bad outcome": "/console/resources/leaky?outcome=MAYBE",
        "story": "/console/requests?request_id=lk-1",
        "no story": "/console/requests?request_id=never",
        "no page": "/console/nowhere",
        "lookup missing": "/console/resources?id=nope",
        "webhooks": "/console/webhooks",
        "deliveries": f"/console/webhooks/{hook_id}",
        "failed deliveries": f"/console/webhooks/{hook_id}?status=FAILED",
        "unknown endpoint": "/console/webhooks/wh_nothing",
        "bad delivery cursor": f"/console/webhooks/{hook_id}?cursor=abc",
        "bad delivery status": f"/console/webhooks/{hook_id}?status=LOST",
    }.items():
        answer = page.goto(base + path)
        visited[name] = page.content()
        assert answer.status < 500, (name, answer.status)
    assert "WAITING" in visited["resource"] and "bob" in visited["resource"]
    assert "RESERVATION_CONFIRMED" in visited["story"]
    assert "nobody listens" in visited["webhooks"] and "webhook.test" in visited["deliveries"]
    delivery_id = page.goto(base + f"/console/webhooks/{hook_id}") and \
        page.locator("#deliveries tr").first.get_attribute("data-delivery-id")
    token = page.locator("input[name=_csrf_token]").first.get_attribute("value")
    for name, path in {"retry": f"/console/webhooks/{hook_id}/deliveries/{delivery_id}/retry",
                       "retry unknown": f"/console/webhooks/{hook_id}/deliveries/msg_nothing/retry"}.items():
        answer = page.request.post(base + path, form={"_csrf_token": token})
        visited[name] = answer.text()
        assert answer.status in (200, 404), (name, answer.status)
    for name, html in visited.items():
        assert not LEAKS.search(html), (name, LEAKS.search(html).group(0))
        assert secret not in html and secret.removeprefix("whsec_") not in html, name
    # a refused change, malformed values, a stale version: words only
    for form in ({"action": "rules", "version": "1", "capacity": "-1"},
                 {"action": "rules", "version": "1", "capacity": "1", "closes_at": "tomorrow"},
                 {"action": "rules", "version": "1", "capacity": "1", "confirmed": "yes"},
                 {"action": "rules", "version": "99", "capacity": "5", "confirmed": "yes"},
                 {"action": "explode", "version": "1"}):
        token = page.locator("input[name=_csrf_token]").first.get_attribute("value")
        answer = page.request.post(base + "/console/resources/leaky/change", form={**form, "_csrf_token": token})
        assert answer.status in (400, 409), (form, answer.status)
        assert not LEAKS.search(answer.text()), (form, LEAKS.search(answer.text()).group(0))
        assert "Not" in answer.text()


def tab_to(page, element_id: str, limit: int = 60) -> None:
    """Presses Tab until the element has the focus, which must be visible."""
    for _ in range(limit):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == element_id:
            style = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
            assert style != "none", "the focus must be visible"
            return
    raise AssertionError(f"Tab never reached #{element_id}")


def test_usable_with_the_keyboard_alone(stack, page):
    base, _, _ = stack
    create_resource(base, "keys", 3)
    page.goto(base + "/console/sign-in")
    page.keyboard.type(OPERATOR_KEY)  # the key field has the focus
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"/console/resources$"))

    tab_to(page, "lookup")
    page.keyboard.type("keys")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"/console/resources/keys$"))
    tab_to(page, "f-capacity")
    page.keyboard.press("Control+A")
    page.keyboard.type("6")
    tab_to(page, "change-rules")
    page.keyboard.press("Enter")
    page.wait_for_selector("#confirm")
    assert page.evaluate("document.activeElement.id") == "confirm"
    page.keyboard.press("Enter")
    page.wait_for_selector("#message")
    assert "RULES_CHANGED" in page.inner_text("#message")
    assert httpx.get(base + "/resources/keys", headers=OP).json()["capacity"] == 6


def test_a_failed_delivery_is_seen_and_retried_with_the_keyboard(stack, page):
    base, database_url, redis_url = stack
    receiver = Receiver(lambda got, nth: (500, {}, 0.0))  # a real endpoint that always fails
    try:
        create_resource(base, "hooked", 5)
        made = httpx.post(base + "/webhooks", headers=OP, json={
            "url": receiver.url, "event_types": ["reservation.confirmed"], "resource_ids": ["hooked"]})
        assert made.status_code == 201, made.text
        hook_id, secret = made.json()["webhook_id"], made.json()["secret"]
        deliveries = base + f"/webhooks/{hook_id}/deliveries"
        # attempted at once and at the horizon (1 s), then FAILED
        with notifier_process(redis_url, database_url, RESV_WEBHOOK_RETRY_HORIZON_S="1",
                              RESV_WEBHOOK_TIMEOUT_S="2"):
            assert httpx.post(base + "/reservations", headers={**CL, "Idempotency-Key": "hooked-1"},
                              json={"resource_id": "hooked", "quantity": 1, "client_id": "kim"}).status_code == 201
            [failed] = wait_until(lambda: [d for d in httpx.get(deliveries, headers=OP).json()["deliveries"]
                                           if d["status"] == "FAILED"], what="the delivery FAILED")
            attempts = failed["attempts"]
            assert attempts >= 1 and failed["last_status_code"] == 500

            page.goto(base + "/console/sign-in")
            page.keyboard.type(OPERATOR_KEY)
            page.keyboard.press("Enter")
            page.wait_for_url(re.compile(r"/console/resources$"))
            tab_to(page, "nav-webhooks")
            page.keyboard.press("Enter")
            page.wait_for_url(re.compile(r"/console/webhooks$"))
            row = page.locator(f"tr[data-webhook-id='{hook_id}']")
            assert receiver.url in row.inner_text() and "reservation.confirmed" in row.inner_text()
            tab_to(page, f"hook-{hook_id}")
            page.keyboard.press("Enter")
            page.wait_for_url(re.compile(re.escape(f"/console/webhooks/{hook_id}") + "$"))
            shown = page.locator(f"#deliveries tr[data-delivery-id='{failed['delivery_id']}']")
            cells = shown.locator("td").all_inner_texts()
            assert cells[1:7] == ["reservation.confirmed", "hooked", "FAILED", str(attempts), "500", "HTTP 500"]
            assert secret not in page.content()
            tab_to(page, f"retry-{failed['delivery_id']}")
            page.keyboard.press("Enter")
            page.wait_for_selector("#confirm")
            assert page.evaluate("document.activeElement.id") == "confirm"
            assert httpx.get(deliveries, headers=OP).json()["deliveries"][0]["status"] == "FAILED"  # not yet
            page.keyboard.press("Enter")
            page.wait_for_selector("#message")
            assert "Queued" in page.inner_text("#message")
            # the notifier attempts it again (past its horizon: FAILED again, one attempt more)
            wait_until(lambda: receiver_attempts(receiver) > attempts, what="the retried attempt")
            again = wait_until(lambda: [d for d in httpx.get(deliveries, headers=OP).json()["deliveries"]
                                        if d["status"] == "FAILED" and d["attempts"] == attempts + 1],
                               what="the retry recorded")
            assert again[0]["delivery_id"] == failed["delivery_id"]
            page.click("#back")
            page.wait_for_selector(f"#deliveries tr[data-delivery-id='{failed['delivery_id']}']")
            assert shown.locator("td").nth(4).inner_text() == str(attempts + 1)
            # readable at 390 px: nothing wider than the window (the tables scroll in their box)
            page.set_viewport_size({"width": 390, "height": 900})
            for path in ("/console/webhooks", f"/console/webhooks/{hook_id}"):
                page.goto(base + path)
                assert page.evaluate("document.documentElement.scrollWidth") <= 390, path
    finally:
        receiver.close()


def receiver_attempts(receiver: Receiver) -> int:
    return len(receiver.snapshot())
