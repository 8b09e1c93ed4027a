"""Retention of the delivery log (RESV_WEBHOOK_RETENTION_DAYS) on real
PostgreSQL with real receivers and notifiers: finished deliveries go once
they are older than the retention, in batches; PENDING ones never; 0 keeps
everything; /metrics still counts what went. The clock is driven through
the settings (a retention of one second), never by long sleeps."""

from __future__ import annotations

import asyncio

import psycopg

from resv.archiver.drain import drain_until_empty
from resv.archiver.migrate import apply_migrations, load_migrations
from resv.notifier.manage import WebhookStore
from resv.notifier.retention import Pruner, prune
from resv.notifier.settings import NotifierSettings
from tests.archiver_support import create
from tests.webhook_support import eventually

ONE_SECOND = 1 / 86_400  # in days


def store(pool) -> WebhookStore:
    return WebhookStore(pool, NotifierSettings(allow_private=True))


async def counts(pool) -> dict[tuple[str, str], int]:
    """(webhook_id, status) -> deliveries."""
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT webhook_id, status, count(*) FROM webhook_deliveries GROUP BY 1, 2")
        return {(w, s): n for w, s, n in await cur.fetchall()}


async def endpoint_rows(pool) -> set[str]:
    async with pool.connection() as conn:
        return {r[0] for r in await (await conn.execute("SELECT webhook_id FROM webhooks")).fetchall()}


def test_the_setting() -> None:
    assert NotifierSettings.from_env({}).retention_days == 30.0
    assert NotifierSettings.from_env({"RESV_WEBHOOK_RETENTION_DAYS": "0"}).retention_days == 0.0
    assert NotifierSettings.from_env({"RESV_WEBHOOK_RETENTION_DAYS": "7.5"}).retention_days == 7.5


async def test_finished_deliveries_go_after_the_retention_and_pending_ones_stay(
        engine, make_archiver, receiver, start_notifier, pool) -> None:
    ok = receiver()
    down = receiver(lambda got, nth: (500, {}, 0.0))
    unused = receiver()
    archiver = await make_archiver()
    s = store(pool)
    delivered, _ = await s.create(ok.url, ["*"], ["ok"], None)
    failed, _ = await s.create(down.url, ["*"], ["down"], None)
    waiting, _ = await s.create(unused.url, ["*"], ["wait"], None)
    deleted, _ = await s.create(unused.url, ["*"], ["del"], None)
    await create(engine, "ok", 100)
    for i in range(11):
        await engine.reserve("ok", f"c{i}", 1, f"ok{i}")
    await create(engine, "down", 10)
    await engine.reserve("down", "c", 1, "down1")
    await create(engine, "wait", 10)
    await create(engine, "del", 10)
    await engine.reserve("del", "c", 1, "del1")
    await drain_until_empty(archiver)
    # PENDING forever: a disabled endpoint's deliveries wait for it
    await s.update(waiting.webhook_id, {"enabled": False})
    assert await s.delete(deleted.webhook_id)  # its two deliveries: CANCELLED
    before = {(delivered.webhook_id, "PENDING"): 12, (failed.webhook_id, "PENDING"): 2,
              (waiting.webhook_id, "PENDING"): 1, (deleted.webhook_id, "CANCELLED"): 2}
    assert await counts(pool) == before

    # A retention of a day: everything is delivered or fails, nothing is young enough to go.
    first = await start_notifier("n1", retention_days=1.0, prune_every_s=0.05, retry_horizon_s=1.0)
    finished = {(delivered.webhook_id, "DELIVERED"): 12, (failed.webhook_id, "FAILED"): 2,
                (waiting.webhook_id, "PENDING"): 1, (deleted.webhook_id, "CANCELLED"): 2}
    await eventually(lambda: _equal(counts(pool), finished), what="every delivery final")
    passes = first.notifier.pruner.passes
    await eventually(lambda: first.notifier.pruner.passes >= passes + 3, what="three more passes")
    await first.stop()
    assert first.notifier.pruner.deleted == 0
    assert await counts(pool) == finished
    metrics = await s.metrics()

    # 0 keeps forever, however old.
    await eventually(lambda: _oldest_finished_over(pool, 1.0), what="finished deliveries a second old")
    keep = Pruner(pool, NotifierSettings(retention_days=0, prune_every_s=0.01, prune_batch=1))
    await asyncio.wait_for(keep.run(asyncio.Event()), 5)  # returns at once: nothing to do, ever
    assert keep.passes == 0 and await counts(pool) == finished

    # A retention of one second, three rows a batch: the finished ones go, the PENDING one stays.
    second = await start_notifier("n2", retention_days=ONE_SECOND, prune_every_s=0.05, prune_batch=3)
    left = {(waiting.webhook_id, "PENDING"): 1}
    await eventually(lambda: _equal(counts(pool), left), what="finished deliveries deleted")
    assert second.notifier.pruner.deleted == 16
    assert await endpoint_rows(pool) == {delivered.webhook_id, failed.webhook_id, waiting.webhook_id}
    # /metrics counts what retention deleted: the same outcomes and attempts as before
    assert (await s.metrics())["by_status"] == metrics["by_status"]
    async with pool.connection() as conn:
        totals = await (await conn.execute(
            "SELECT status, deliveries FROM webhook_delivery_totals ORDER BY status")).fetchall()
    assert totals == [("CANCELLED", 2), ("DELIVERED", 12), ("FAILED", 2)]
    assert (await s.deliveries(delivered.webhook_id)).deliveries == []

    # Deliveries keep flowing; their rows go in turn.
    await engine.reserve("ok", "late", 1, "late")
    await drain_until_empty(archiver)
    await eventually(lambda: any(g.json()["data"]["client_id"] == "late" for g in ok.snapshot()),
                     what="a delivery after the prune")
    await eventually(lambda: _equal(counts(pool), left), what="that one deleted too")
    assert (await s.metrics())["by_status"]["DELIVERED"][0] == 13


async def test_finished_at_follows_the_status(pool) -> None:
    """The trigger: set when a delivery leaves PENDING, cleared by a retry,
    set again when it ends; untouched by a failed attempt (PENDING again)."""
    s = store(pool)
    hook, _ = await s.create("http://127.0.0.1:9/hook", ["*"], None, None)
    assert await s.send_test(hook.webhook_id)

    async def finished_at():
        async with pool.connection() as conn:
            cur = await conn.execute("SELECT delivery_id, status, finished_at FROM webhook_deliveries")
            return await cur.fetchone()

    delivery_id, status, at = await finished_at()
    assert (status, at) == ("PENDING", None)
    async with pool.connection() as conn:
        await conn.execute("UPDATE webhook_deliveries SET status = 'PENDING', attempts = 1")
    assert (await finished_at())[2] is None
    async with pool.connection() as conn:
        await conn.execute("UPDATE webhook_deliveries SET status = 'FAILED'")
    _, status, failed_at = await finished_at()
    assert status == "FAILED" and failed_at is not None
    assert await s.retry(hook.webhook_id, delivery_id) == "queued"
    assert (await finished_at())[1:] == ("PENDING", None)
    async with pool.connection() as conn:
        await conn.execute("UPDATE webhook_deliveries SET status = 'DELIVERED', delivered_at = now()")
    _, status, delivered_at = await finished_at()
    assert status == "DELIVERED" and delivered_at > failed_at


async def test_the_migration_dates_what_finished_before_it(empty_database: str) -> None:
    """Rows finished before 0008 get a finished_at (else they would be kept
    forever): the delivery, else the last planned attempt, else creation."""
    before = [m for m in load_migrations() if m.version < 8]
    async with await psycopg.AsyncConnection.connect(empty_database, autocommit=True) as conn:
        await conn.execute("CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL, "
                           "applied_at timestamptz NOT NULL DEFAULT now())")
        for m in before:
            await conn.execute(m.sql)
            await conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (m.version, m.name))
        await conn.execute("INSERT INTO webhooks (webhook_id, url, event_types, secret) "
                           "VALUES ('wh_1', 'http://x/', '{*}', 'whsec_x')")
        await conn.execute(
            """INSERT INTO webhook_deliveries (delivery_id, webhook_id, event_type, status, created_at,
                                               next_attempt_at, delivered_at) VALUES
               ('msg_d', 'wh_1', 'webhook.test', 'DELIVERED', '2026-01-01', '2026-01-01', '2026-01-02'),
               ('msg_f', 'wh_1', 'webhook.test', 'FAILED', '2026-01-01', '2026-01-03', NULL),
               ('msg_c', 'wh_1', 'webhook.test', 'CANCELLED', '2026-01-04', '2026-01-01', NULL),
               ('msg_p', 'wh_1', 'webhook.test', 'PENDING', '2026-01-01', '2026-01-01', NULL)""")
    assert [m.version for m in await apply_migrations(empty_database)] == [8]
    async with await psycopg.AsyncConnection.connect(empty_database) as conn:
        cur = await conn.execute("SELECT delivery_id, finished_at::date::text FROM webhook_deliveries "
                                 "ORDER BY delivery_id")
        assert await cur.fetchall() == [("msg_c", "2026-01-04"), ("msg_d", "2026-01-02"),
                                        ("msg_f", "2026-01-03"), ("msg_p", None)]


async def test_notifiers_pruning_at_once_share_the_rows(pool) -> None:
    """Two passes at once over the same old rows: each row deleted once,
    counted once (SKIP LOCKED), and the passes do not wait on each other."""
    s = store(pool)
    hook, _ = await s.create("http://127.0.0.1:9/hook", ["*"], None, None)
    for _ in range(40):
        assert await s.send_test(hook.webhook_id)
    async with pool.connection() as conn:
        await conn.execute("UPDATE webhook_deliveries SET status = 'DELIVERED', attempts = 1, delivered_at = now()")
    await asyncio.sleep(0.05)
    a, b = await asyncio.gather(prune(pool, 0.01, 4), prune(pool, 0.01, 4))
    assert a.deliveries + b.deliveries == 40
    async with pool.connection() as conn:
        assert await (await conn.execute("SELECT count(*) FROM webhook_deliveries")).fetchone() == (0,)
        assert await (await conn.execute("SELECT status, deliveries, attempts FROM webhook_delivery_totals"
                                         )).fetchall() == [("DELIVERED", 40, 40)]


async def _equal(got, expected) -> bool:
    return await got == expected


async def _oldest_finished_over(pool, seconds: float) -> bool:
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT max(finished_at) < now() - make_interval(secs => %s) "
                                 "FROM webhook_deliveries WHERE status <> 'PENDING'", (seconds,))
        return bool((await cur.fetchone())[0])
