"""Claiming ahead (notifier/endpoint.py): deliveries claimed in batches and
queued keep the stream order, are attempted once over several notifiers,
are not sent once their lease could have passed, and a notifier killed with
a queue loses none of it. Real PostgreSQL, real HTTP receivers; deliveries
are inserted as rows, as the archiver makes them."""

from __future__ import annotations

import asyncio
import signal
import sys

from resv.notifier.manage import WebhookStore
from resv.notifier.settings import NotifierSettings
from tests.procs import ROOT
from tests.webhook_support import eventually, notifier_env


async def queue_deliveries(pool, webhook_id: str, first: int, n: int) -> None:
    """n `webhook.test` deliveries numbered first.., in that stream order."""
    async with pool.connection() as conn:
        await conn.execute(
            """INSERT INTO webhook_deliveries (webhook_id, event_type, payload, ms, seq)
               SELECT %s, 'webhook.test', jsonb_build_object('type', 'webhook.test', 'timestamp',
                      '2026-01-01T00:00:00.000000Z', 'data', jsonb_build_object('n', g)), g, 0
               FROM generate_series(%s::bigint, %s::bigint) g""", (webhook_id, first, first + n - 1))


async def deliveries(pool, webhook_id: str) -> list[tuple]:
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT delivery_id, status, attempts, lease_until > now() FROM webhook_deliveries "
                                 "WHERE webhook_id = %s ORDER BY ms, seq", (webhook_id,))
        return list(await cur.fetchall())


def numbers(r) -> list[int]:
    return [g.json()["data"]["n"] for g in r.snapshot()]


async def endpoint(pool, url: str) -> str:
    hook, _ = await WebhookStore(pool, NotifierSettings(allow_private=True)).create(url, ["*"], None, None)
    return hook.webhook_id


async def test_two_notifiers_claiming_ahead_keep_stream_order_and_attempt_once(receiver, start_notifier, pool):
    """One in flight: the receiver sees the stream order exactly, while the
    endpoint passes between two notifiers as it runs dry and fills again."""
    r = receiver()
    webhook_id = await endpoint(pool, r.url)
    await start_notifier("a", concurrency=1)
    await start_notifier("b", concurrency=1)
    total = 0
    for size in (1, 7, 30, 3, 60, 2, 25):
        await queue_deliveries(pool, webhook_id, total + 1, size)
        total += size
        await asyncio.sleep(0.05 * (size % 3))
    got = await eventually(lambda: _settled(pool, webhook_id, total), what=f"{total} delivered")
    assert numbers(r) == list(range(1, total + 1))  # stream order, each once
    assert {attempts for _, _, attempts, _ in got} == {1}


async def test_several_in_flight_each_attempted_once_and_started_in_order(receiver, start_notifier, pool):
    r = receiver(lambda got, nth: (204, {}, 0.002))
    webhook_id = await endpoint(pool, r.url)
    await queue_deliveries(pool, webhook_id, 1, 200)
    await start_notifier("a", concurrency=4)
    await start_notifier("b", concurrency=4)
    got = await eventually(lambda: _settled(pool, webhook_id, 200), what="200 delivered")
    seen = numbers(r)
    assert sorted(seen) == list(range(1, 201))  # each once
    # started in stream order, 4 at a time: a delivery arrives at most 3 places early
    assert all(n <= position + 3 for position, n in enumerate(seen, start=1))
    assert {attempts for _, _, attempts, _ in got} == {1}


async def test_a_queued_delivery_whose_lease_could_pass_is_not_sent(receiver, start_notifier, pool):
    """The first attempt is held past the point where the queued ones could
    still end inside their leases (half the timeout after the claim); meanwhile
    another notifier takes those over, as it may once a lease passes. The
    holder must not send them on its old claim."""
    timeout_s = 6.0  # lease 10 s: a queued delivery must start within 3 s of its claim
    r = receiver(lambda got, nth: (204, {}, 5.0) if got.json()["data"]["n"] == 1 else (204, {}, 0.0))
    webhook_id = await endpoint(pool, r.url)
    await queue_deliveries(pool, webhook_id, 1, 4)
    await start_notifier("a", concurrency=1, timeout_s=timeout_s)  # claims all 4, sends the first
    await eventually(lambda: r.snapshot(), what="the first attempt")
    await asyncio.sleep(3.5)
    async with pool.connection() as conn:  # what another notifier's claim does
        taken = await conn.execute(
            "UPDATE webhook_deliveries SET attempts = attempts + 1, lease_until = now() + interval '1 hour' "
            "WHERE webhook_id = %s AND status = 'PENDING' AND attempts = 1 AND ms > 1", (webhook_id,))
        assert taken.rowcount == 3  # they were claimed ahead: attempt 1, leased
    await eventually(lambda: _released(pool, webhook_id), what="the endpoint released")
    assert numbers(r) == [1]
    got = await deliveries(pool, webhook_id)
    assert [(status, attempts) for _, status, attempts, _ in got] == [("DELIVERED", 1)] + [("PENDING", 2)] * 3


async def test_a_stopped_notifier_gives_back_what_it_claimed_ahead(receiver, start_notifier, pool):
    r = receiver(lambda got, nth: (204, {}, 0.5))
    webhook_id = await endpoint(pool, r.url)
    await queue_deliveries(pool, webhook_id, 1, 10)
    first = await start_notifier("a", concurrency=1)
    await eventually(lambda: r.snapshot(), what="the first attempt")
    await first.stop()
    got = await deliveries(pool, webhook_id)
    sent = len(r.snapshot())
    assert [(status, attempts, leased) for _, status, attempts, leased in got[sent:]] \
        == [("PENDING", 0, None)] * (10 - sent)  # claims undone: due now, not after a lease
    await start_notifier("b", concurrency=1)
    await eventually(lambda: _settled(pool, webhook_id, 10), what="the rest delivered by the next notifier")
    assert numbers(r) == list(range(1, 11))


async def test_a_notifier_killed_with_a_queue_loses_nothing(receiver, pool, database_url):
    """SIGKILL while deliveries wait claimed in its queue: their leases pass,
    the next notifier sends them, same webhook-id; each of them counts one
    attempt more than it was sent (endpoint.py)."""
    r = receiver(lambda got, nth: (204, {}, 0.3))
    webhook_id = await endpoint(pool, r.url)
    await queue_deliveries(pool, webhook_id, 1, 12)
    env = {**notifier_env(database_url), "RESV_WEBHOOK_CONCURRENCY": "1"}  # timeout 1 s: leases of 2.5 s

    async def start() -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(sys.executable, "-m", "resv", "notifier", env=env, cwd=str(ROOT),
                                                    stdout=asyncio.subprocess.DEVNULL,
                                                    stderr=asyncio.subprocess.DEVNULL)

    doomed = await start()
    await eventually(lambda: r.snapshot(), what="the first attempt")
    doomed.send_signal(signal.SIGKILL)
    await doomed.wait()
    at_kill = await deliveries(pool, webhook_id)
    sent_before = {g.webhook_id for g in r.snapshot()}
    queued = [d for d, status, attempts, leased in at_kill if attempts == 1 and leased and d not in sent_before]
    assert queued  # the kill did catch claimed-ahead deliveries in its queue
    survivor = await start()
    try:
        got = await eventually(lambda: _settled(pool, webhook_id, 12), what="every delivery DELIVERED")
    finally:
        survivor.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(survivor.wait(), 30) == 0
    by_id = {d: attempts for d, _, attempts, _ in got}
    assert {g.webhook_id for g in r.snapshot()} == set(by_id)  # none lost
    assert all(by_id[d] == 2 for d in queued)  # claimed, never sent, claimed again once the lease passed
    assert sorted(set(numbers(r))) == list(range(1, 13))


async def _settled(pool, webhook_id: str, n: int):
    got = await deliveries(pool, webhook_id)
    return got if len(got) == n and all(status == "DELIVERED" for _, status, _, _ in got) else None


async def _released(pool, webhook_id: str) -> bool:
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT owner FROM webhooks WHERE webhook_id = %s", (webhook_id,))
        owner = (await cur.fetchone())[0]
    delivered = [d for d in await deliveries(pool, webhook_id) if d[1] == "DELIVERED"]
    return owner is None and len(delivered) == 1
