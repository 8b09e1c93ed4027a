"""The archiver: drains every partition stream into PostgreSQL.

One round reads up to `batch` entries of each partition (XREADGROUP, group
`archiver`), writes them in one PostgreSQL transaction (store.py), then
acknowledges them (XACK) and trims each stream below its archived mark. The
order is what makes it safe:

  XREADGROUP -> rows + projections -> COMMIT -> XACK -> XTRIM MINID <archived mark>

A crash before the commit leaves the entries pending: this archiver re-reads
them when it comes back (same consumer name) or another takes them over
after `claim_idle_ms` (XAUTOCLAIM). A crash after the commit re-delivers
entries that are already rows: they stay one row (store.py). Nothing is
acknowledged, so nothing is trimmed, while PostgreSQL is unreachable; drains
are retried with a doubling pause.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable

from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis

from resv.archiver import streams
from resv.archiver.lag import stream_lag
from resv.archiver.marks import read_marks
from resv.archiver.metrics import ArchiverMetrics
from resv.archiver.settings import ArchiverSettings
from resv.archiver.store import Row, count_entries, event_rows, store_rows
from resv.archiver.streams import Entry
from resv.engine import StateError, check_state

log = logging.getLogger("resv.archiver")

FORGET_CONSUMERS_EVERY_S = 60.0
FORGET_CONSUMERS_IDLE_MS = 3_600_000  # an archiver polls every interval; an hour idle is gone


class Archiver:
    def __init__(
        self,
        redis: Redis,
        pool: AsyncConnectionPool | None,
        partitions: int,
        settings: ArchiverSettings,
        metrics: ArchiverMetrics | None = None,
        on_ready: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """redis: a client with decode_responses=True. pool: made by
        archiver.db.open_pool(for_archiver=True); may be set by on_ready.
        on_ready: awaited before the first drain (e.g. migrations), again on
        the next drain until it succeeds."""
        self.redis = redis
        self.pool = pool
        self.partitions = list(range(partitions))
        self.settings = settings
        self.consumer = settings.consumer
        self.metrics = metrics or ArchiverMetrics()
        self._on_ready = on_ready
        self._ready = False
        self._recovering = True  # own pending entries first (a restart keeping its name)
        self._backoff = 0.0
        self._resume_at = 0.0
        self._next_forget = 0.0
        self._crash = _CrashPoint(settings.crash_at)
        self.deployment_id: str | None = None
        """The deployment the archived marks are recorded under (set by the state check)."""
        self.refusing: str | None = None
        """Why the archiver archives nothing now (the engine state is behind the audit)."""
        self._next_check = 0.0

    # ---------------------------------------------------------------- loop

    async def run_once(self) -> int:
        """One scheduled run: drain unless backing off; never raises. Returns
        the number of entries archived."""
        now = time.monotonic()
        if now < self._resume_at:
            return 0
        try:
            archived = await self.drain()
        except StateError as exc:
            self._resume_at = time.monotonic() + self.settings.max_backoff_s
            if str(exc) != self.refusing:
                log.error("archiver: refusing to archive (no stream or group is created until this is "
                          "fixed): %s", exc)
            self.refusing = str(exc)
            return 0
        except Exception as exc:
            self._backoff = min(self.settings.max_backoff_s, max(self.settings.interval_s, self._backoff * 2))
            self._resume_at = time.monotonic() + self._backoff
            self.metrics.errors.labels(stage=_stage(exc)).inc()
            log.warning("archiver: drain failed (%s: %s); retrying in %.1fs",
                        type(exc).__name__, exc, self._backoff, exc_info=self._backoff <= self.settings.interval_s)
            archived = 0
        else:
            if self._backoff:
                log.info("archiver: drain succeeded again")
            self._backoff = 0.0
        await self.update_lag()
        return archived

    async def update_lag(self) -> None:
        try:
            lag = await stream_lag(self.redis, self.partitions)
        except Exception:
            return  # Redis is down: the drain's failure is already logged
        for p, value in lag.items():
            self.metrics.lag_entries.labels(partition=str(p)).set(value["entries"])
            self.metrics.lag_seconds.labels(partition=str(p)).set(value["seconds"])

    async def drain(self) -> int:
        """Archives until every stream is empty for this archiver. Raises on
        any failure, leaving what it read pending (re-read on the next drain).

        Three batches are in flight: while PostgreSQL writes batch N, batch
        N+1 is read and parsed, and batch N-1 (committed) is acknowledged and
        trimmed. Read entries stay pending in the group until acknowledged,
        so the archived mark stays below them."""
        if not self._ready:
            if self._on_ready is not None:
                await self._on_ready()
            await self.check_state()
            await streams.ensure_groups(self.redis, self.partitions)
            self._ready = True
        elif time.monotonic() >= self._next_check:
            await self.check_state()
        await self._forget_idle_consumers()
        total = 0
        fetching: asyncio.Future | None = asyncio.ensure_future(self._fetch(reclaim=True))
        acking: asyncio.Future | None = None
        try:
            while True:
                batch, rows, fresh = await fetching
                fetching = None
                if not batch:
                    if acking is not None:
                        await acking
                        acking = None
                    # Also trims what others acknowledged and did not trim
                    # (an archiver that died between its XACK and its XTRIM).
                    await self._trim(self.partitions)
                    return total
                # Re-reading own pending entries would return this batch
                # again until it is acknowledged: no overlap then.
                overlap = not self._recovering
                if overlap:
                    fetching = asyncio.ensure_future(self._fetch(reclaim=False))
                started = time.perf_counter()
                inserted = await self._store(rows, fresh)
                total += inserted
                if acking is not None:
                    await acking  # one acknowledgement at a time, in order
                acking = asyncio.ensure_future(self._acknowledge(batch, rows, inserted, started))
                if not overlap:
                    await acking
                    acking = None
                    fetching = asyncio.ensure_future(self._fetch(reclaim=False))
        except BaseException as exc:
            self._recovering = True  # re-read what we hold before anything new
            if isinstance(exc, streams.GroupsLost):
                self._ready = False  # the state check decides whether groups come back
            raise
        finally:
            for task in (acking, fetching):  # after a failure: what they hold stays pending
                if task is not None:
                    with contextlib.suppress(Exception):
                        await task

    async def check_state(self) -> None:
        """Compares the engine state with the audit (engine/deployment.py)
        before anything is created in Redis, and every
        RESV_DURABILITY_CHECK_S: raises StateError (PartitionsMismatch too)
        while the state is behind; writes the deployment records of a fresh
        deployment."""
        assert self.pool is not None, "no PostgreSQL pool"
        state = await check_state(self.redis, len(self.partitions), await read_marks(self.pool))
        self.metrics.state_behind.set(1 if state.problem else 0)
        if state.problem:
            self._ready = False
            raise StateError(state.problem + ": " + "; ".join(
                f"partition {p}: {why}" for p, why in sorted(state.behind.items())))
        if self.refusing:
            log.warning("archiver: the engine state is no longer behind the audit; archiving again")
            self.refusing = None
        self.deployment_id = state.deployment_id
        self._next_check = time.monotonic() + self.settings.check_interval_s

    async def _fetch(self, reclaim: bool) -> tuple[dict[int, list[Entry]], list[Row], bool]:
        batch, fresh = await self._next_batch(reclaim)
        return batch, event_rows(batch), fresh

    async def _next_batch(self, reclaim: bool) -> tuple[dict[int, list[Entry]], bool]:
        """The next entries to archive, and whether they are fresh (delivered
        for the first time: none can be in PostgreSQL yet)."""
        r, n = self.redis, self.settings.batch
        if self._recovering:
            batch = await streams.read(r, self.consumer, self.partitions, n, own_pending=True)
            if batch:
                return batch, False
            self._recovering = False
        if reclaim:
            batch = await streams.reclaim(r, self.consumer, self.partitions, self.settings.claim_idle_ms, n)
            if batch:
                # Now ours: what the claim did not return yet comes with the
                # next reads of our own pending entries.
                self._recovering = True
                return batch, False
        return await streams.read(r, self.consumer, self.partitions, n, own_pending=False), True

    async def _store(self, rows: list[Row], fresh: bool) -> int:
        """One PostgreSQL transaction; returns the rows inserted."""
        if not rows:
            return 0
        assert self.pool is not None, "no PostgreSQL pool"
        async with self.pool.connection() as conn:
            return await store_rows(conn, rows, self._crash.check, fresh=fresh, deployment_id=self.deployment_id)

    async def _acknowledge(self, batch: dict[int, list[Entry]], rows: list[Row], inserted: int,
                           started: float) -> None:
        """After the commit: XACK, then trim below the new archived marks."""
        self._crash.check("after_commit_before_ack")
        await streams.ack(self.redis, {p: [sid for sid, _ in entries] for p, entries in batch.items()})
        self._crash.check("after_ack_before_trim")
        await self._trim(list(batch))
        m = self.metrics
        n = count_entries(batch)
        m.entries_read.inc(n)
        m.rows_written.inc(inserted)
        m.duplicates.inc(len(rows) - inserted)
        m.batch_entries.observe(n)
        m.batch_seconds.observe(time.perf_counter() - started)

    async def _trim(self, partitions: list[int]) -> None:
        marks = await streams.archived_marks(self.redis, partitions)
        self.metrics.trimmed.inc(await streams.trim(self.redis, {p: mark for p, (mark, _) in marks.items()}))

    async def _forget_idle_consumers(self) -> None:
        now = time.monotonic()
        if now < self._next_forget:
            return
        self._next_forget = now + FORGET_CONSUMERS_EVERY_S
        forgotten = await streams.forget_idle_consumers(self.redis, self.partitions, FORGET_CONSUMERS_IDLE_MS)
        if forgotten:
            log.info("archiver: forgot %d idle consumers with nothing pending", forgotten)


def _stage(exc: BaseException) -> str:
    module = type(exc).__module__
    if module.startswith(("psycopg", "psycopg_pool")):
        return "postgres"
    if module.startswith("redis"):
        return "redis"
    return "other"


class _CrashPoint:
    """RESV_ARCHIVER_CRASH_AT=<point>:<n>: os._exit(99) the n-th time <point>
    is reached (tests of crash safety; a real crash has no cleanup either)."""

    def __init__(self, spec: str | None) -> None:
        self.point, self.remaining = None, 0
        if spec:
            point, _, n = spec.partition(":")
            self.point, self.remaining = point, int(n or 1)

    def check(self, point: str) -> None:
        if point != self.point:
            return
        self.remaining -= 1
        if self.remaining <= 0:
            log.warning("archiver: crashing at %s (RESV_ARCHIVER_CRASH_AT)", point)
            logging.shutdown()
            os._exit(99)


async def drain_until_empty(archiver: Archiver, timeout: float = 30.0) -> int:
    """Drains, retrying failures, until nothing is left (tests, benchmarks)."""
    deadline = time.monotonic() + timeout
    total = 0
    while True:
        try:
            n = await archiver.drain()
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)
            continue
        total += n
        lag = await stream_lag(archiver.redis, archiver.partitions)
        if not any(v["entries"] for v in lag.values()):
            return total
        if time.monotonic() > deadline:
            raise TimeoutError(f"archiver still behind after {timeout}s: {lag}")
        await asyncio.sleep(0.01)
