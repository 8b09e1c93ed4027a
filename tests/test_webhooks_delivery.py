"""Deliveries end to end on real servers: engine -> Redis -> archiver ->
PostgreSQL -> notifier -> real HTTP receivers. Retry clocks are driven by
configuration (a 0.2 s backoff base), never by long sleeps."""

from __future__ import annotations

import asyncio
import random
from datetime import timedelta

import pytest
from standardwebhooks import Webhook

from resv.archiver.drain import drain_until_empty
from resv.notifier.manage import WebhookStore
from resv.notifier.settings import NotifierSettings
from tests.api_support import OP, api, create_resource, reserve
from tests.archiver_support import create
from tests.webhook_support import eventually


def store(pool) -> WebhookStore:
    return WebhookStore(pool, NotifierSettings(allow_private=True))


async def rows(pool, webhook_id: str | None = None) -> list[dict]:
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT delivery_id, webhook_id, partition, stream_id, event_type, status, attempts, last_status_code, "
            "last_error, next_attempt_at, delivered_at, created_at FROM webhook_deliveries "
            + ("WHERE webhook_id = %s " if webhook_id else "") + "ORDER BY ms, seq",
            (webhook_id,) if webhook_id else ())
        names = [c.name for c in cur.description]
        return [dict(zip(names, r, strict=True)) for r in await cur.fetchall()]


def settled(pool, webhook_id: str, n: int, statuses=("DELIVERED",)):
    async def check():
        got = await rows(pool, webhook_id)
        return got if len(got) == n and all(r["status"] in statuses for r in got) else None
    return check


async def test_a_decision_through_the_api_reaches_the_receiver_signed(
        redis_url, database_url, make_archiver, receiver, start_notifier, pool, allow_private):
    r = receiver()
    archiver = await make_archiver()
    async with api(redis_url, database_url=database_url) as c:
        hook = (await c.post("/webhooks", headers=OP, json={"url": r.url, "event_types": ["*"]})).json()
        await start_notifier()
        await create_resource(c, "gig", 2)
        assert (await reserve(c, "gig", key="k1")).status_code == 201
        assert (await reserve(c, "gig", key="k1")).status_code == 201  # a replay: logged, not delivered
        await drain_until_empty(archiver)
        await eventually(settled(pool, hook["webhook_id"], 2), what="two deliveries")
        # 4 attempts in flight: neighbours may arrive swapped (stream order: the concurrency=1 test)
        got = sorted(r.verified(hook["secret"]), key=lambda g: g.json()["type"] != "resource.created")
        assert [g.json()["type"] for g in got] == ["resource.created", "reservation.confirmed"]
        confirmed = got[1]
        body = confirmed.json()
        assert body["data"]["resource_id"] == "gig" and body["data"]["quantity"] == 1
        assert body["data"]["reservation_id"] and body["data"]["stream_id"]
        assert body["timestamp"].endswith("Z") and len(body["timestamp"]) == 27
        assert confirmed.headers["content-type"] == "application/json"
        assert confirmed.headers["user-agent"].startswith("resv/")
        assert confirmed.path == "/hook"
        page = (await c.get(f"/webhooks/{hook['webhook_id']}/deliveries", headers=OP)).json()
        assert {d["status"] for d in page["deliveries"]} == {"DELIVERED"}
        assert {d["delivery_id"] for d in page["deliveries"]} == {g.webhook_id for g in got}
        metrics = (await c.get("/metrics", headers=OP)).text
        assert 'resv_webhook_deliveries{status="DELIVERED"} 2.0' in metrics
        assert 'resv_webhook_delivery_latency_seconds{quantile="0.99"}' in metrics


async def test_every_matching_decision_of_a_contention_run_is_delivered(
        engine, make_archiver, receiver, start_notifier, pool):
    """Reservations, cancellations that notify a waiting list, joins and
    leaves on three resources, concurrently: each endpoint receives exactly
    the matching events PostgreSQL holds, committed after its creation."""
    everything, notified, one = receiver(), receiver(), receiver()
    archiver = await make_archiver()
    await create(engine, "before", 5)
    await drain_until_empty(archiver)  # committed before any endpoint: never delivered
    s = store(pool)
    all_hook, _ = await s.create(everything.url, ["*"], None, None)
    notified_hook, _ = await s.create(notified.url, ["waitlist.notified"], None, None)
    one_hook, _ = await s.create(one.url, ["reservation.confirmed", "reservation.cancelled"], ["r1"], None)
    for rid in ("r0", "r1", "r2"):
        await create(engine, rid, 20, waitlist_enabled=True)
    await start_notifier(concurrency=8)
    rng = random.Random(7)
    confirmed: list[str] = []

    async def client(n: int) -> None:
        rid = f"r{n % 3}"
        for i in range(15):
            d = await engine.reserve(rid, f"c{n}", rng.randint(1, 3), f"q{n}-{i}")
            if d.decision == "CONFIRMED":
                confirmed.append(d.reservation_id)
            else:
                await engine.join_waitlist(rid, f"c{n}", 1)
            if confirmed and rng.random() < 0.4:
                await engine.cancel(confirmed.pop(rng.randrange(len(confirmed))))
            await engine.reserve(rid, f"c{n}", 1, f"q{n}-{i}")  # a retry: a replay

    drains = asyncio.create_task(_drain_while(archiver, client, 12))
    await drains
    await drain_until_empty(archiver)
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT type, resource_id, partition, stream_id FROM events "
            "WHERE resource_id <> 'before' AND type NOT LIKE '%REPLAYED'")
        events = await cur.fetchall()
    expected = {  # an event is (partition, stream id): stream ids repeat across partitions
        all_hook.webhook_id: {(p, sid) for _, _, p, sid in events},
        notified_hook.webhook_id: {(p, sid) for t, _, p, sid in events if t == "WAITLIST_NOTIFIED"},
        one_hook.webhook_id: {(p, sid) for t, r, p, sid in events
                              if r == "r1" and t in ("RESERVATION_CONFIRMED", "RESERVATION_CANCELLED")},
    }
    assert len(expected[notified_hook.webhook_id]) > 5  # the run did notify waiting lists
    for hook, r in ((all_hook, everything), (notified_hook, notified), (one_hook, one)):
        await eventually(settled(pool, hook.webhook_id, len(expected[hook.webhook_id])), timeout=60,
                         what=f"deliveries to {hook.webhook_id}",
                         explain=lambda h=hook: _summary(pool, h.webhook_id, len(expected[h.webhook_id])))
        got = r.snapshot()
        assert {(g.json()["data"]["partition"], g.json()["data"]["stream_id"]) for g in got} \
            == expected[hook.webhook_id]
        assert len({g.webhook_id for g in got}) == len(expected[hook.webhook_id])
        assert not [g for g in got if g.json()["type"].endswith("replayed")]


async def _summary(pool, webhook_id, expected):
    from collections import Counter
    got = await rows(pool, webhook_id)
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT type, count(*) FROM events GROUP BY type")
        types = await cur.fetchall()
    return (f"expected {expected} rows, got {len(got)}: " + str(Counter((r["status"], r["last_error"]) for r in got))
            + str(Counter(r["event_type"] for r in got)) + str(types))


async def _drain_while(archiver, client, n: int) -> None:
    work = asyncio.gather(*(client(i) for i in range(n)))
    while not work.done():
        await archiver.drain()
        await asyncio.sleep(0.05)
    await work


async def test_stream_order_and_a_failing_delivery_does_not_block(engine, make_archiver, receiver,
                                                                   start_notifier, pool):
    blocked = {}

    def answer(got, nth):
        if got.json()["data"]["client_id"] == "stuck":
            blocked.setdefault("id", got.webhook_id)
            return 500, {}, 0.0
        return 204, {}, 0.0

    r = receiver(answer)
    archiver = await make_archiver()
    hook, _ = await store(pool).create(r.url, ["reservation.confirmed"], None, None)
    await create(engine, "line", 100)
    await engine.reserve("line", "stuck", 1, "first")
    for i in range(30):
        await engine.reserve("line", f"c{i}", 1, f"r{i}")
    await drain_until_empty(archiver)
    await start_notifier(concurrency=1)
    await eventually(lambda: len({g.webhook_id for g in r.snapshot()}) == 31, what="31 deliveries")
    delivered = [g for g in r.snapshot() if g.json()["data"]["client_id"] != "stuck"]
    assert [g.json()["data"]["client_id"] for g in delivered] == [f"c{i}" for i in range(30)]  # stream order
    got = await eventually(lambda: _status_of(pool, blocked["id"], "PENDING", min_attempts=2), what="retries")
    assert got["last_error"] == "HTTP 500" and got["last_status_code"] == 500


async def _status_of(pool, delivery_id, status, min_attempts=1):
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT status, attempts, last_status_code, last_error, next_attempt_at, "
                                 "delivered_at FROM webhook_deliveries WHERE delivery_id = %s", (delivery_id,))
        row = await cur.fetchone()
        names = [c.name for c in cur.description]
    found = dict(zip(names, row, strict=True)) if row else None
    if found and status == "PENDING" and found["last_error"] is None:
        return None  # claimed, its attempt not over yet
    return found if found and found["status"] == status and found["attempts"] >= min_attempts else None


async def test_retries_back_off_until_the_receiver_takes_it(engine, make_archiver, receiver, start_notifier, pool):
    r = receiver(lambda got, nth: (500, {}, 0.0) if nth < 3 else (200, {}, 0.0))
    archiver = await make_archiver()
    hook, _ = await store(pool).create(r.url, ["resource.created"], None, None)
    await create(engine, "flaky", 1)
    await drain_until_empty(archiver)
    await start_notifier(backoff_base_s=0.2)
    [row] = await eventually(settled(pool, hook.webhook_id, 1), what="delivered after 3 failures")
    assert row["attempts"] == 4 and row["last_status_code"] == 200 and row["last_error"] is None
    times = [g.at for g in r.snapshot()]
    assert len(times) == 4 and len({g.webhook_id for g in r.snapshot()}) == 1
    for n, (a, b) in enumerate(zip(times, times[1:], strict=False), start=1):
        assert b - a >= 0.2 * 3 ** (n - 1) * 0.8 - 0.05  # never sooner than the schedule


async def test_a_timeout_is_a_failed_attempt(engine, make_archiver, receiver, start_notifier, pool):
    r = receiver(lambda got, nth: (204, {}, 3.0) if nth == 0 else (204, {}, 0.0))
    archiver = await make_archiver()
    hook, _ = await store(pool).create(r.url, ["resource.created"], None, None)
    await create(engine, "slow", 1)
    await drain_until_empty(archiver)
    await start_notifier(timeout_s=0.5, backoff_base_s=0.2)
    timed_out = await eventually(lambda: _status_of(pool, _only(r), "PENDING") if r.snapshot() else None,
                                 what="a timeout")
    assert (timed_out["last_error"], timed_out["last_status_code"]) == ("timeout", None)
    [row] = await eventually(settled(pool, hook.webhook_id, 1), what="delivered on the second attempt")
    assert row["attempts"] == 2
    assert len(r.snapshot()) == 2


def _only(r):
    return r.snapshot()[0].webhook_id


@pytest.mark.parametrize("status", [429, 503])
async def test_retry_after_on_429_and_503_is_honoured(engine, make_archiver, receiver, start_notifier, pool, status):
    r = receiver(lambda got, nth: (status, {"Retry-After": "2"}, 0.0) if nth == 0 else (204, {}, 0.0))
    archiver = await make_archiver()
    hook, _ = await store(pool).create(r.url, ["resource.created"], None, None)
    await create(engine, "busy", 1)
    await drain_until_empty(archiver)
    await start_notifier(backoff_base_s=0.2)
    waiting = await eventually(lambda: _status_of(pool, _only(r), "PENDING") if r.snapshot() else None,
                               what=f"the {status}")
    assert (waiting["last_status_code"], waiting["last_error"]) == (status, f"HTTP {status}")
    await eventually(settled(pool, hook.webhook_id, 1), what="delivered after Retry-After")
    first, second = r.snapshot()
    assert second.at - first.at >= 1.9  # the 2 s asked for, not the 0.2 s base


async def test_a_retry_after_past_the_horizon_is_cut_to_it(engine, make_archiver, receiver, start_notifier, pool):
    """Retry-After: 3600 with a 2 s horizon: the last attempt is at the
    horizon, not an hour later, and then the delivery is FAILED."""
    r = receiver(lambda got, nth: (429, {"Retry-After": "3600"}, 0.0))
    archiver = await make_archiver()
    hook, _ = await store(pool).create(r.url, ["resource.created"], None, None)
    await create(engine, "busy", 1)
    await drain_until_empty(archiver)
    await start_notifier(backoff_base_s=0.2, retry_horizon_s=2.0)
    [row] = await eventually(settled(pool, hook.webhook_id, 1, statuses=("FAILED",)), timeout=30, what="FAILED")
    assert row["attempts"] == 2 and row["last_status_code"] == 429
    _, last = r.snapshot()
    assert last.at >= (row["created_at"] + timedelta(seconds=2.0)).timestamp() - 0.1


async def test_410_disables_the_endpoint_and_cancels_what_is_pending(engine, make_archiver, receiver,
                                                                     start_notifier, pool, redis_url,
                                                                     database_url):
    r = receiver(lambda got, nth: (410, {}, 0.0))
    archiver = await make_archiver()
    hook, _ = await store(pool).create(r.url, ["*"], None, None)
    await create(engine, "gone", 100)
    for i in range(20):
        await engine.reserve("gone", f"c{i}", 1, f"g{i}")
    await drain_until_empty(archiver)
    await start_notifier(concurrency=1)
    got = await eventually(lambda: _all_final(pool, hook.webhook_id), what="everything cancelled")
    assert {row["status"] for row in got} == {"CANCELLED"}
    assert len(r.snapshot()) == 1  # one 410 was enough
    first = [row for row in got if row["attempts"]]
    assert [(row["last_status_code"], row["last_error"]) for row in first] == [(410, "HTTP 410 Gone")]
    view = await store(pool).get(hook.webhook_id)
    assert view.enabled is False and "410 Gone" in view.disabled_reason
    await create(engine, "after", 1)
    await drain_until_empty(archiver)  # a disabled endpoint gets no new deliveries
    assert len(await rows(pool, hook.webhook_id)) == 21


async def _all_final(pool, webhook_id):
    got = await rows(pool, webhook_id)
    return got if got and all(row["status"] != "PENDING" for row in got) else None


async def test_after_the_horizon_a_delivery_fails_and_can_be_retried(engine, make_archiver, receiver,
                                                                      start_notifier, pool):
    healthy = {"now": False}
    r = receiver(lambda got, nth: (204, {}, 0.0) if healthy["now"] else (503, {}, 0.0))
    archiver = await make_archiver()
    s = store(pool)
    hook, _ = await s.create(r.url, ["resource.created"], None, None)
    await create(engine, "down", 1)
    await drain_until_empty(archiver)
    await start_notifier(backoff_base_s=0.2, retry_horizon_s=1.5)
    [row] = await eventually(settled(pool, hook.webhook_id, 1, statuses=("FAILED",)), what="FAILED")
    assert row["attempts"] >= 3 and row["last_error"] == "HTTP 503"
    # it kept trying until the horizon: the last attempt was made at it
    assert max(g.at for g in r.snapshot()) >= (row["created_at"] + timedelta(seconds=1.5)).timestamp() - 0.1
    assert await s.retry(hook.webhook_id, row["delivery_id"]) == "queued"
    attempts = row["attempts"]
    [again] = await eventually(lambda: _attempted(pool, hook.webhook_id, attempts + 1), what="retried now")
    assert again["status"] == "FAILED"  # past its horizon: one attempt, then FAILED again
    healthy["now"] = True
    assert await s.retry(hook.webhook_id, row["delivery_id"]) == "queued"
    [done] = await eventually(settled(pool, hook.webhook_id, 1), what="delivered on the manual retry")
    assert done["attempts"] == attempts + 2
    assert await s.retry(hook.webhook_id, row["delivery_id"]) == "final"


async def _attempted(pool, webhook_id, attempts):
    got = await rows(pool, webhook_id)
    return got if got[0]["attempts"] >= attempts and got[0]["status"] != "PENDING" else None


async def test_redirects_are_not_followed(engine, make_archiver, receiver, start_notifier, pool):
    elsewhere = receiver()
    r = receiver(lambda got, nth: (302, {"Location": elsewhere.url}, 0.0))
    archiver = await make_archiver()
    hook, _ = await store(pool).create(r.url, ["resource.created"], None, None)
    await create(engine, "moved", 1)
    await drain_until_empty(archiver)
    await start_notifier()
    got = await eventually(lambda: _status_of(pool, _only(r), "PENDING") if r.snapshot() else None, what="302")
    assert got["last_error"] == "HTTP 302 (redirects are not followed)"
    assert elsewhere.snapshot() == []


async def test_a_name_that_resolves_to_loopback_fails_at_connection_time(engine, make_archiver, receiver,
                                                                          start_notifier, pool):
    r = receiver()
    archiver = await make_archiver()
    url = r.url.replace("127.0.0.1", "localhost")
    hook, _ = await store(pool).create(url, ["resource.created"], None, None)  # allowed when registered
    await create(engine, "ssrf", 1)
    await drain_until_empty(archiver)
    await start_notifier(allow_private=False)
    [row] = await eventually(lambda: _attempted_pending(pool, hook.webhook_id), what="a refused attempt")
    assert row["last_error"] == "the host resolves to a loopback address" and row["last_status_code"] is None
    assert r.snapshot() == []


async def _attempted_pending(pool, webhook_id):
    got = await rows(pool, webhook_id)
    return got if got and got[0]["attempts"] >= 1 and got[0]["last_error"] else None


async def test_after_a_rotation_deliveries_carry_both_signatures(engine, make_archiver, receiver,
                                                                  start_notifier, pool):
    r = receiver()
    archiver = await make_archiver()
    s = store(pool)
    hook, old = await s.create(r.url, ["resource.created"], None, None)
    new = await s.rotate(hook.webhook_id)
    await create(engine, "rot", 1)
    await drain_until_empty(archiver)
    await start_notifier()
    await eventually(settled(pool, hook.webhook_id, 1), what="delivered")
    [got] = r.snapshot()
    assert len(got.headers["webhook-signature"].split(" ")) == 2
    for secret in (new, old):
        Webhook(secret).verify(got.body, got.headers)


async def test_two_notifiers_make_each_attempt_once(engine, make_archiver, receiver, start_notifier, pool):
    receivers = [receiver(lambda got, nth: (204, {}, 0.01)) for _ in range(4)]
    archiver = await make_archiver()
    s = store(pool)
    hooks = [(await s.create(r.url, ["*"], None, None))[0] for r in receivers]
    await start_notifier("a", concurrency=2)
    await start_notifier("b", concurrency=2)
    for rid in ("t0", "t1", "t2"):
        await create(engine, rid, 1000)
    for i in range(120):
        await engine.reserve(f"t{i % 3}", f"c{i}", 1, f"two{i}")
        if i % 20 == 0:
            await archiver.drain()
    await drain_until_empty(archiver)
    for hook, r in zip(hooks, receivers, strict=True):
        got = await eventually(settled(pool, hook.webhook_id, 123), timeout=60, what="123 deliveries")
        assert all(row["attempts"] == 1 for row in got)
        ids = [g.webhook_id for g in r.snapshot()]
        assert len(ids) == len(set(ids)) == 123  # no attempt made twice


async def test_an_endpoint_this_notifier_still_holds_is_taken_again(engine, make_archiver, receiver,
                                                                     start_notifier, pool):
    """A hold of its own with no task delivering there (a task that ended
    as a round took the endpoint again, a release that failed) does not
    leave the endpoint idle until the hold lapses; another notifier's hold
    is still respected."""
    mine, theirs = receiver(), receiver()
    archiver = await make_archiver()
    s = store(pool)
    held, _ = await s.create(mine.url, ["resource.created"], None, None)
    other, _ = await s.create(theirs.url, ["resource.created"], None, None)
    await create(engine, "held", 1)
    await drain_until_empty(archiver)
    async with pool.connection() as conn:
        for hook, owner in ((held, "n1"), (other, "n2")):
            await conn.execute("UPDATE webhooks SET owner = %s, owner_until = now() + interval '1 hour' "
                               "WHERE webhook_id = %s", (owner, hook.webhook_id))
    await start_notifier("n1")
    await eventually(settled(pool, held.webhook_id, 1), what="delivered under its own hold")
    assert theirs.snapshot() == []
    [row] = await rows(pool, other.webhook_id)
    assert (row["status"], row["attempts"]) == ("PENDING", 0)
