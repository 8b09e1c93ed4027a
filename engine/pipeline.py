"""Coalesces concurrent calls into pipelines.

Calls are sent in batches (non-transactional: each FCALL is atomic on its
own) on one lane (`engine.lane`), a connection that carries many batches in
flight: a batch goes out as soon as `flush_at` calls are waiting, or at the end
of the loop tick that made the first of them. Under load this amortises the
round trip and the client's per-command cost over many requests while Redis
works on one batch as the API prepares the next; a single caller waits one
loop iteration more.

Until the lane is open, when it fails, and under RESV_WAIT_REPLICAS (a WAIT
after each batch would stall every batch behind it on one connection),
batches go through redis-py's retrying path instead: one pooled connection
per batch, retried as a whole. Every call sent here is idempotent, so a batch
whose replies were lost can be sent again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from hiredis import pack_command
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from resv.engine.errors import (
    EngineUnavailable,
    NotReplicated,
    is_missing_function,
    translate,
)
from resv.engine.lane import Batch, Command, Lane, Target

# Functions that write: only they wait for replicas.
READ_FUNCTIONS = frozenset({"resv_resource", "resv_reservation", "resv_wl_position", "resv_waitlist",
                            "resv_version"})

log = logging.getLogger("resv.engine")

REOPEN_DELAY_S = 0.25
"""After a lane failed to open, batches take the retrying path this long
before another attempt (a server that is down is not hammered)."""


class Pipeliner:
    def __init__(
        self,
        redis: Redis,
        target: Target,
        on_missing_function: Callable[[], Awaitable[Any]],
        flush_at: int = 8,
        max_batch: int = 512,
        timeout: float = 1.0,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 500,
        admit: Callable[[Any], Awaitable[None]] | None = None,
    ) -> None:
        self._redis = redis
        self._admit = admit
        """Given a new lane's INFO server reply, raises unless the lane may
        carry calls (the engine's guard: Engine._admit_server)."""
        self._target = target
        """Where the lane connects: the same server and sign-in as `redis`."""
        self._wait = ("WAIT", wait_replicas, wait_timeout_ms) if wait_replicas else None
        self._reload = on_missing_function
        self._reloading = asyncio.Lock()
        self._flush_at = flush_at
        self._max_batch = max_batch
        self._timeout = timeout
        self._pending: Batch = []
        self._scheduled = False
        self._tasks: set[asyncio.Task] = set()
        self._lane: Lane | None = None
        self._lanes = not self._wait  # a WAIT would stall every batch behind it
        self._opening = False
        self._reopen_at = 0.0
        self._closed = False

    def call(self, *command: Any) -> asyncio.Future:
        """Queues the command; await the future for its reply. A plain
        function, not a coroutine: one frame less to resume per reply."""
        lane = self._lane
        # The lane's loop is the running one; asking asyncio costs a getpid()
        # system call per call on CPython 3.11 (~1 us here).
        loop = lane.loop if lane is not None and lane.ready else asyncio.get_running_loop()
        future = loop.create_future()
        if self._closed:
            future.set_exception(EngineUnavailable("the engine is closed"))
            return future
        try:
            packed = pack_command(command)  # a command that cannot be sent fails alone
        except Exception as exc:  # noqa: BLE001
            future.set_exception(translate(exc))
            return future
        self._pending.append((command, packed, future))
        if len(self._pending) >= self._flush_at and lane is not None and lane.ready:
            self._flush()  # without a lane: one batch per tick, one pooled connection
        elif not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, []
        if not pending:
            return
        batches = self._chunks(pending)
        lane = self._lane
        if lane is not None and lane.ready:
            try:
                while batches:
                    lane.send(batches[0])
                    batches.pop(0)
                return
            except Exception as exc:  # noqa: BLE001 - the transport refused: what is left goes the other way
                log.warning("Redis connection refused a write (%s); its calls are sent again", exc)
                lane.close()
        self._open_lane()
        for batch in batches:
            self._spawn(self._send(batch))

    def _chunks(self, calls: Batch) -> list[Batch]:
        return [calls[i : i + self._max_batch] for i in range(0, len(calls), self._max_batch)]

    # -- the lane

    def _open_lane(self) -> None:
        loop = asyncio.get_running_loop()
        if not self._lanes or self._opening or self._closed or loop.time() < self._reopen_at:
            return
        if self._lane is not None and self._lane.ready:
            return
        self._opening = True
        self._spawn(self._connect_lane())

    async def _connect_lane(self) -> None:
        try:
            lane = await Lane.open(self._target, self._timeout, self._settle_or_reload, self._lane_lost)
            if self._admit is not None:
                await self._admitted(lane)
        except BaseException as exc:  # the retrying path reports failures to callers
            self._reopen_at = asyncio.get_running_loop().time() + REOPEN_DELAY_S
            if not isinstance(exc, Exception):
                raise
        else:
            if self._closed or not lane.ready:  # closed meanwhile, or by the server already
                lane.close()
                self._reopen_at = asyncio.get_running_loop().time() + REOPEN_DELAY_S
            else:
                self._lane = lane
        finally:
            self._opening = False

    async def _admitted(self, lane: Lane) -> None:
        """Asks the new lane's server who it is (INFO server) and lets the
        guard decide; closes the lane and raises when refused."""
        command = ("INFO", "server")
        reply = asyncio.get_running_loop().create_future()
        try:
            lane.send([(command, pack_command(command), reply)])
            async with asyncio.timeout(self._timeout):
                info = await reply
            await self._admit(info)  # type: ignore[misc]
        except BaseException:
            lane.close()
            raise

    def _lane_lost(self, lane: Lane, batches: list[Batch], error: BaseException) -> None:
        """A lane died: what it had in flight goes the retrying way (the
        server may have run some of it: every call here is idempotent), in
        as few batches as possible: each takes a pooled connection."""
        if self._lane is lane:
            self._lane = None
        if not batches:
            return
        log.warning("Redis connection lost (%s); %d calls in flight sent again", error,
                    sum(map(len, batches)))
        for batch in self._chunks([call for batch in batches for call in batch]):
            self._spawn(self._send(batch))

    # -- replies

    def _settle_or_reload(self, batch: Batch, results: list[Any]) -> None:
        if any(is_missing_function(r) for r in results if isinstance(r, ResponseError)):
            self._spawn(self._settle_after_reload(batch, results))
        else:
            _settle(batch, results)

    async def _settle_after_reload(self, batch: Batch, results: list[Any]) -> None:
        """The library was flushed or the server replaced: load it and send
        again the calls that found no function; if that fails, only they fail."""
        missing = [i for i, r in enumerate(results) if is_missing_function(r)]
        try:
            async with self._reloading:  # one reload at a time; it is a no-op once loaded
                await self._reload()
            again = await self._execute([batch[i] for i in missing])
        except BaseException as exc:
            again = [exc] * len(missing)
            if not isinstance(exc, Exception):
                _fail(batch, exc)
                raise
        for i, result in zip(missing, again):
            results[i] = result
        _settle(batch, results)

    # -- the retrying path

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: Batch) -> None:
        try:
            results = await self._execute(batch)
        except BaseException as exc:  # the whole round trip failed
            _fail(batch, exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        self._settle_or_reload(batch, results)

    async def _execute(self, batch: Batch) -> list[Any]:
        commands = [command for command, _, _ in batch]
        packed = [p for _, p, _ in batch]
        if self._wait and any(c[1] not in READ_FUNCTIONS for c in commands):
            *results, acked = await self._round_trip([*packed, pack_command(self._wait)])
            return self._check_replicas(commands, results, acked)
        return await self._round_trip(packed)

    async def _round_trip(self, packed: list[bytes]) -> list[Any]:
        """Writes the packed commands in one send on one pooled connection
        and reads one reply per command (errors replies included, as
        exceptions). Retried as a whole by the connection's own Retry (the
        batched calls are idempotent)."""
        pool = self._redis.connection_pool
        conn = await pool.get_connection()
        try:
            return await conn.retry.call_with_retry(
                lambda: self._send_and_read(conn, packed), lambda _error: conn.disconnect()
            )
        finally:
            await pool.release(conn)

    @staticmethod
    async def _send_and_read(conn: Any, packed: list[bytes]) -> list[Any]:
        await conn.send_packed_command(b"".join(packed), check_health=False)
        results: list[Any] = []
        for _ in packed:
            try:
                results.append(await conn.read_response())
            except ResponseError as exc:
                results.append(exc)
        return results

    def _check_replicas(self, commands: list[Command], results: list[Any], acked: Any) -> list[Any]:
        """WAIT ran on the same connection right after the batch: it counts
        the replicas that acknowledged every write the batch made."""
        if isinstance(acked, int) and acked >= self._wait[1]:
            return results
        return [
            NotReplicated(result, acked, self._wait[1])
            if c[1] not in READ_FUNCTIONS and not isinstance(result, Exception) else result
            for c, result in zip(commands, results)
        ]

    async def aclose(self) -> None:
        """Sends what is queued, lets the calls in flight finish (at most the
        timeout), then closes. Calls made afterwards fail at once."""
        self._closed = True
        self._flush()
        lane, self._lane = self._lane, None
        if lane is not None:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self._timeout
            while not lane.idle and lane.ready and loop.time() < deadline:
                await asyncio.sleep(0.005)
            lane.close()
            try:  # what it still had in flight goes to the retrying path
                await asyncio.wait_for(asyncio.shield(lane.lost), self._timeout)
            except TimeoutError:  # a write buffer the server does not read
                lane.abort()
                await lane.lost
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def _settle(batch: Batch, results: list[Any]) -> None:
    for (_, _, future), result in zip(batch, results):
        if future.done():  # cancelled: its caller gave up (request deadline)
            continue
        if isinstance(result, Exception):
            future.set_exception(translate(result))
        else:
            future.set_result(result)


def _fail(batch: Batch, error: BaseException) -> None:
    for _, _, future in batch:
        if future.done():
            continue
        if isinstance(error, Exception):
            future.set_exception(translate(error))
        else:
            future.cancel()
