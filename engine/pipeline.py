"""Coalesces concurrent calls into pipelines.

Calls made in the same event-loop tick are sent together in one round trip
(non-transactional pipeline: each FCALL is atomic on its own). Under load this
amortises the round trip and the per-command overhead of the client across
many requests; with a single caller it adds only one loop iteration.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from hiredis import pack_command
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from engine.errors import NotReplicated, is_missing_function

Command = tuple[Any, ...]

# Functions that write: only they wait for replicas.
READ_FUNCTIONS = frozenset({"resv_resource", "resv_reservation", "resv_wl_position", "resv_version"})


class Pipeliner:
    def __init__(
        self,
        redis: Redis,
        on_missing_function: Callable[[], Awaitable[Any]],
        max_batch: int = 512,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 500,
    ) -> None:
        self._redis = redis
        self._wait = ("WAIT", wait_replicas, wait_timeout_ms) if wait_replicas else None
        self._reload = on_missing_function
        self._max_batch = max_batch
        self._pending: list[tuple[Command, asyncio.Future]] = []
        self._scheduled = False
        self._tasks: set[asyncio.Task] = set()

    async def call(self, *command: Any) -> Any:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((command, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, []
        for start in range(0, len(pending), self._max_batch):
            task = asyncio.create_task(self._send(pending[start : start + self._max_batch]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[tuple[Command, asyncio.Future]]) -> None:
        try:
            results = await self._execute([c for c, _ in batch])
            missing = [i for i, r in enumerate(results) if is_missing_function(r)]
            if missing:
                # The library was flushed or the server replaced: load, resend.
                await self._reload()
                again = await self._execute([batch[i][0] for i in missing])
                for i, result in zip(missing, again):
                    results[i] = result
        except BaseException as exc:  # the whole round trip failed
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        for (_, future), result in zip(batch, results):
            if future.done():
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def _execute(self, commands: list[Command]) -> list[Any]:
        if self._wait and any(c[1] not in READ_FUNCTIONS for c in commands):
            commands = [*commands, self._wait]
            *results, acked = await self._round_trip(commands)
            return self._check_replicas(commands, results, acked)
        return await self._round_trip(commands)

    async def _round_trip(self, commands: list[Command]) -> list[Any]:
        """Writes the batch packed in one send on one pooled connection and
        reads one reply per command (errors replies included, as exceptions).
        Cheaper than a redis-py Pipeline object per batch; retried as a whole
        by the connection's own Retry (the batched calls are idempotent)."""
        pool = self._redis.connection_pool
        conn = await pool.get_connection()
        try:
            return await conn.retry.call_with_retry(
                lambda: self._send_and_read(conn, commands), lambda _error: conn.disconnect()
            )
        finally:
            await pool.release(conn)

    @staticmethod
    async def _send_and_read(conn: Any, commands: list[Command]) -> list[Any]:
        # hiredis packs in C; redis-py's packer was a third of the engine's CPU
        await conn.send_packed_command(b"".join(map(pack_command, commands)), check_health=False)
        results: list[Any] = []
        for _ in commands:
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
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

