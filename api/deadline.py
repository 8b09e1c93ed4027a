"""The request deadline: how long a request may wait for Redis.

The engine's calls have socket timeouts and retries, but their total (each
attempt's timeout, the backoff between attempts, a lane's calls sent again
after it failed) is not one number a client can rely on. The API bounds every
engine call at `seconds` (RESV_REQUEST_DEADLINE_S, 3 s) and answers 503 past
it.

`asyncio.timeout` would cost a timer per call (~4 us on the hot path); here
one sweeper per process, running every `resolution` seconds while calls are
in flight, cancels the calls past their deadline. All calls have the same
duration, so a FIFO queue is in deadline order. A call may overrun by up to
`resolution`.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


class Deadline:
    def __init__(self, seconds: float, resolution: float = 0.1) -> None:
        self.seconds = seconds
        self.resolution = resolution
        self._queue: deque[list] = deque()  # [deadline, task or None when done, fired]
        self._sweeper: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # while calls are watched

    def guard(self) -> Guard:
        """`with deadline.guard(): await call`: TimeoutError when the
        awaits inside take longer than the deadline. A context manager, not a
        coroutine wrapping the call: one frame less to resume per reply on the
        commit path."""
        return Guard(self)

    async def run(self, call: Awaitable[T]) -> T:
        """Awaits `call`; TimeoutError when it is not done in time. A commit
        sent meanwhile keeps its request id: a retry with the same
        Idempotency-Key gets its decision."""
        with Guard(self):
            return await call

    def _watch(self) -> list:
        loop = self._loop
        if loop is None:  # kept while the sweeper runs, i.e. while calls are in flight
            loop = self._loop = asyncio.get_running_loop()
        # current_task(loop): without the loop it asks for the running one,
        # a getpid() system call on CPython 3.11 (~1 us here)
        entry = [time.monotonic() + self.seconds, asyncio.current_task(loop), False]
        self._queue.append(entry)
        if self._sweeper is None:
            self._sweeper = loop.call_later(self.resolution, self._sweep)
        return entry

    def _sweep(self) -> None:
        now = time.monotonic()
        queue = self._queue
        while queue and (queue[0][1] is None or queue[0][0] <= now):
            entry = queue.popleft()
            task = entry[1]
            if task is not None:
                entry[2] = True
                task.cancel()
        if queue:
            self._sweeper = self._loop.call_later(self.resolution, self._sweep)  # type: ignore[union-attr]
        else:
            self._sweeper = self._loop = None


class Guard:
    """One awaited call under the deadline (see Deadline.guard)."""

    __slots__ = ("_deadline", "_entry")

    def __init__(self, deadline: Deadline) -> None:
        self._deadline = deadline

    def __enter__(self) -> None:
        self._entry = self._deadline._watch()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        entry = self._entry
        task = entry[1]
        entry[1] = None
        if kind is asyncio.CancelledError and entry[2] and task is not None and task.uncancel() == 0:
            raise TimeoutError("engine call past the request deadline") from None
