"""One endpoint's deliveries, as the notifier that holds it sends them.

Claiming is decoupled from sending: a queue of claimed deliveries, in
stream order, is topped up in batches (up to AHEAD x RESV_WEBHOOK_CONCURRENCY,
claimed again once it falls below half) by a claim that runs beside the
attempts, while `concurrency` attempts stay in flight from its head. The
claim of each batch is what renews the hold on the endpoint.

Measured with `python -m benchmarks.notifier_costs`: claiming only when half
the slots were free cost a claim statement per two deliveries at the default
4 in flight, and the pipe waited on it; claiming ahead, one per ~10, took a
notifier from 955 to 1,296 deliveries/s and its CPU per delivery from 0.68
to 0.45 ms (docs/performance.md).

A claimed delivery carries its lease (`lease_until`, set by the claim, on
the database's clock) while it waits in the queue, so it must start early
enough to end inside it: an attempt ends within RESV_WEBHOOK_TIMEOUT_S, and
the second before the lease passes is left for writing its result. A queued
delivery past that point is not sent: the whole queue is given back (its
rows' claims undone, fenced by the attempt number) and claimed again, so the
stream order holds. That happens only when the receiver answers slowly
(the queue drains slower than half the timeout).

What an attempt count means for a delivery claimed ahead: a claim counts one
attempt. Claims given back unsent (the notifier stopping, a queue past its
leases, the endpoint lost) are undone, so a clean stop leaves the count at
the attempts made. A notifier killed with deliveries queued leaves their
claims: once their leases pass they are claimed again, so each such
delivery's count is one more than the requests the receiver saw (its retry
schedule, if it then fails, starts one step later).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import datetime

import msgspec
import psycopg
from psycopg_pool import AsyncConnectionPool

from resv.notifier import events
from resv.notifier.settings import NotifierSettings

log = logging.getLogger("resv.notifier")

AHEAD = 4
"""Deliveries claimed ahead per attempt in flight: at 4 in flight, a claim of
8 to 16 rows instead of one of 2 per two deliveries."""

WRITE_MARGIN_S = 1.0
"""The end of a lease left for writing the attempt's result."""

# Renews the hold on the endpoint and claims up to n due attempts in stream
# order, with what signing and the body need. No row at all: the endpoint is
# no longer ours (disabled, deleted, or taken over after our hold lapsed).
_CLAIM = """
WITH endpoint AS (
    UPDATE webhooks SET owner_until = now() + make_interval(secs => %(lease)s)
    WHERE webhook_id = %(wh)s AND owner = %(me)s AND enabled AND deleted_at IS NULL
    RETURNING webhook_id, url, secret,
              CASE WHEN previous_secret_until > now() THEN previous_secret END AS previous_secret
), picked AS (
    SELECT d.delivery_id FROM webhook_deliveries d
    WHERE d.webhook_id = (SELECT webhook_id FROM endpoint) AND d.status = 'PENDING'
      AND d.next_attempt_at <= now() AND (d.lease_until IS NULL OR d.lease_until <= now())
    ORDER BY d.ms, d.seq
    LIMIT %(n)s
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE webhook_deliveries d SET attempts = d.attempts + 1,
                                    lease_until = now() + make_interval(secs => %(lease)s)
    FROM picked p WHERE d.delivery_id = p.delivery_id
    RETURNING d.delivery_id, d.attempts, d.event_type, d.partition, d.stream_id, d.ms, d.seq,
              d.payload, d.created_at
)
SELECT e.url, e.secret, e.previous_secret, c.delivery_id, c.attempts, c.event_type, c.partition,
       c.stream_id, c.payload, c.created_at, ev.fields, ev.ts_us
FROM endpoint e
LEFT JOIN claimed c ON true
LEFT JOIN events ev ON ev.partition = c.partition AND ev.stream_id = c.stream_id
ORDER BY c.ms, c.seq
"""

# Undoes claims that were never sent: only where the claim is still the one
# we made (same attempt number, still PENDING), so a row someone else took
# after its lease passed is left alone.
_GIVE_BACK = """
UPDATE webhook_deliveries d SET attempts = d.attempts - 1, lease_until = NULL
FROM unnest(%s::text[], %s::int[]) AS v(delivery_id, attempt)
WHERE d.delivery_id = v.delivery_id AND d.attempts = v.attempt AND d.status = 'PENDING'
"""

_RELEASE = "UPDATE webhooks SET owner = NULL, owner_until = NULL WHERE webhook_id = %s AND owner = %s"


class Claimed(msgspec.Struct, frozen=True):
    delivery_id: str
    attempt: int
    event_type: str
    created_at: datetime
    body: bytes
    url: str
    secrets: list[str]
    """The endpoint's secret, and the previous one during a rotation's overlap."""
    start_by: float
    """time.monotonic() past which its attempt could outlive its lease."""


Attempt = Callable[[Claimed], Awaitable[bool]]
"""Makes one attempt and hands its result on; True: the endpoint answered
410 Gone (its result not written yet), send it nothing more."""

Gone = Callable[[Claimed], Awaitable[None]]
"""Writes a 410: the endpoint disabled, what is pending there cancelled."""


class Endpoint:
    def __init__(self, pool: AsyncConnectionPool, settings: NotifierSettings, webhook_id: str,
                 attempt: Attempt, gone: Gone, stopping: asyncio.Event) -> None:
        self.pool = pool
        self.settings = settings
        self.webhook_id = webhook_id
        self.attempt = attempt
        self.gone = gone
        self.stopping = stopping
        self.concurrency = settings.concurrency
        self.ahead = AHEAD * settings.concurrency
        self.queue: deque[Claimed] = deque()
        self.inflight: set[asyncio.Task[None]] = set()
        self.lost = False  # disabled, deleted, taken over or gone: claim and send nothing more

    async def deliver(self) -> None:
        """Delivers until nothing is due, the endpoint is lost or the notifier
        stops; then gives back what it claimed and did not send, waits for
        the attempts in flight and releases the endpoint."""
        claim: asyncio.Task[list[Claimed] | None] | None = None
        asked = 0
        more = True  # the last claim may have left something due
        try:
            while True:
                if self.stopping.is_set() or self.lost:
                    await self._give_back_queue()
                elif await self._start_attempts():
                    more = True  # given back: claim it again, in order
                if claim is None and more and not self.stopping.is_set() and not self.lost \
                        and len(self.queue) < self.ahead // 2:
                    asked = self.ahead - len(self.queue)
                    claim = asyncio.create_task(self._claim(asked))
                waits: set[asyncio.Task] = set(self.inflight)
                if claim is not None:
                    waits.add(claim)
                if not waits:
                    break
                done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                if claim in done:
                    got = _claimed(claim)
                    claim = None
                    if got is None:
                        self.lost = True
                    else:
                        self.queue.extend(got)
                        more = len(got) == asked
                if done & self.inflight:
                    self.inflight -= done
                    more = True  # a retry may have come due, or new events meanwhile
        finally:
            if claim is not None:  # its rows may be claimed even if we stop waiting for it
                with contextlib.suppress(Exception):
                    self.queue.extend(await claim or [])
            await self._give_back_queue()
            if self.inflight:
                await asyncio.gather(*self.inflight, return_exceptions=True)
            with contextlib.suppress(psycopg.Error, OSError):
                async with self.pool.connection() as conn:
                    await conn.execute(_RELEASE, (self.webhook_id, self.settings.name))

    async def _start_attempts(self) -> bool:
        """Starts attempts from the queue's head while slots are free; True if
        the head was past its lease and the queue was given back."""
        while len(self.inflight) < self.concurrency and self.queue:
            if self.queue[0].start_by <= time.monotonic():
                log.info("notifier: %d queued deliveries to %s would outlive their leases; claiming them again",
                         len(self.queue), self.webhook_id)
                await self._give_back_queue()
                return True
            self.inflight.add(asyncio.create_task(self._attempt(self.queue.popleft())))
        return False

    async def _attempt(self, d: Claimed) -> None:
        if await self.attempt(d):
            # Unsent claims undone before the 410 cancels them: their
            # attempt counts stay the requests made.
            self.lost = True
            await self._give_back_queue()
            await self.gone(d)

    async def _claim(self, n: int) -> list[Claimed] | None:
        s = self.settings
        start_by = time.monotonic() + s.lease_s - s.timeout_s - WRITE_MARGIN_S  # before the lease starts: earlier
        async with self.pool.connection() as conn:
            cur = await conn.execute(_CLAIM, {"me": s.name, "wh": self.webhook_id, "n": n, "lease": s.lease_s})
            rows = await cur.fetchall()
        if not rows:
            return None
        out = []
        for url, secret, previous, delivery_id, attempt, event_type, partition, stream_id, payload, \
                created_at, fields, ts_us in rows:
            if delivery_id is None:
                continue
            if payload is not None:
                body = events.body(payload["type"], payload["timestamp"], payload["data"])
            else:
                body = events.body(event_type, events.iso_from_us(ts_us or 0),
                                   events.event_data(partition, stream_id, fields or {}))
            secrets_ = [secret] + ([previous] if previous else [])
            out.append(Claimed(delivery_id, attempt, event_type, created_at, body, url, secrets_, start_by))
        return out

    async def _give_back_queue(self) -> None:
        if not self.queue:
            return
        unsent, self.queue = list(self.queue), deque()
        try:
            async with self.pool.connection() as conn:
                await conn.execute(_GIVE_BACK, ([d.delivery_id for d in unsent], [d.attempt for d in unsent]))
        except (psycopg.Error, OSError) as exc:  # their leases pass; claimed again, counted once more
            log.warning("notifier: giving back %d unsent claims failed (%s)", len(unsent), type(exc).__name__)


def _claimed(claim: asyncio.Task[list[Claimed] | None]) -> list[Claimed] | None:
    """A finished claim's rows; a failed claim is an empty one (logged)."""
    exc = claim.exception()
    if exc is None:
        return claim.result()
    if isinstance(exc, (psycopg.Error, OSError)):
        log.warning("notifier: claim failed (%s)", type(exc).__name__)
        return []
    raise exc
