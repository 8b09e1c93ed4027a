"""Retention of the delivery log (RESV_WEBHOOK_RETENTION_DAYS).

Every notifier, every `prune_every_s`, deletes the deliveries that finished
(DELIVERED, FAILED, CANCELLED: `finished_at`, migration 0008) longer ago than
the retention, in batches of `prune_batch` rows, one short transaction each;
PENDING deliveries are never deleted, however old. Rows are taken with FOR
UPDATE SKIP LOCKED, so notifiers pruning at once share the work and never
wait on each other or on a delivery being written. What is deleted is added
to `webhook_delivery_totals`, in the same statement, so /metrics still counts
it. Endpoints deleted longer ago than the retention go too, once none of
their deliveries is left.

A backlog (the first run after an upgrade, a retention shortened) is deleted
at most half the time: after each full batch the pruner waits as long as the
batch took, so it never holds a connection the deliveries need for long.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import msgspec
import psycopg
from psycopg_pool import AsyncConnectionPool

from resv.notifier.settings import NotifierSettings

log = logging.getLogger("resv.notifier")

_PRUNE_DELIVERIES = """
WITH gone AS (
    DELETE FROM webhook_deliveries
    WHERE delivery_id IN (
        SELECT delivery_id FROM webhook_deliveries
        WHERE status <> 'PENDING' AND finished_at < now() - make_interval(secs => %(keep_s)s)
        LIMIT %(n)s
        FOR UPDATE SKIP LOCKED)
      AND status <> 'PENDING'
    RETURNING status, attempts
), counted AS (
    INSERT INTO webhook_delivery_totals AS t (status, deliveries, attempts)
    SELECT status, count(*), sum(attempts) FROM gone GROUP BY status
    ON CONFLICT (status) DO UPDATE SET deliveries = t.deliveries + excluded.deliveries,
                                       attempts = t.attempts + excluded.attempts
)
SELECT count(*) FROM gone
"""

_PRUNE_ENDPOINTS = """
DELETE FROM webhooks w
WHERE w.deleted_at < now() - make_interval(secs => %(keep_s)s)
  AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.webhook_id = w.webhook_id)
"""


class Pruned(msgspec.Struct, frozen=True):
    deliveries: int
    batches: int
    endpoints: int


async def prune(pool: AsyncConnectionPool, retention_s: float, batch: int,
                stop: asyncio.Event | None = None) -> Pruned:
    """One pass: deletes what finished more than `retention_s` ago, `batch`
    rows a transaction, until a batch comes back short (or `stop` is set)."""
    params = {"keep_s": retention_s, "n": batch}
    deliveries = batches = 0
    while stop is None or not stop.is_set():
        started = time.monotonic()
        async with pool.connection() as conn:
            cur = await conn.execute(_PRUNE_DELIVERIES, params)
            row = await cur.fetchone()
        n = row[0] if row else 0
        deliveries += n
        batches += 1
        if n < batch:
            break
        await asyncio.sleep(time.monotonic() - started)
    async with pool.connection() as conn:
        cur = await conn.execute(_PRUNE_ENDPOINTS, params)
        endpoints = cur.rowcount
    return Pruned(deliveries, batches, endpoints)


class Pruner:
    """The notifier's retention task; `passes` and `deleted` are for tests
    and logs."""

    def __init__(self, pool: AsyncConnectionPool, settings: NotifierSettings) -> None:
        self.pool = pool
        self.settings = settings
        self.passes = 0
        self.deleted = 0

    async def run(self, stop: asyncio.Event) -> None:
        s = self.settings
        if s.retention_days <= 0:
            return  # kept forever
        while not stop.is_set():
            try:
                done = await prune(self.pool, s.retention_days * 86_400, s.prune_batch, stop)
            except (psycopg.Error, OSError) as exc:
                log.warning("notifier: deleting old deliveries failed (%s); next try in %.0f s",
                            type(exc).__name__, s.prune_every_s)
            else:
                self.passes += 1
                self.deleted += done.deliveries
                if done.deliveries or done.endpoints:
                    log.info("notifier: deleted %d deliveries finished over %g days ago (%d batches), "
                             "%d deleted endpoints", done.deliveries, s.retention_days, done.batches,
                             done.endpoints)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), s.prune_every_s)
