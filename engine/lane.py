"""A lane: one connection that carries many batches in flight.

The commit path's connection. redis-py's asyncio connection is written from a
task and read one reply per coroutine, each reply under its own timeout: a
batch went out a loop tick after its calls were made, and while Redis worked
through it the API had nothing to do (`make bench-api` showed the server
idle 13% of the time under full load). A lane is written synchronously, in
the tick the calls were made, so Redis works while the API goes on with the
next requests; hiredis parses the replies in the transport's callback and
they are handed back in order, with no task or coroutine per reply.

redis-py still opens the connection (address, TLS, AUTH, SELECT, client name:
whatever the URL says), then the lane takes its transport over. A lane carries
only the Pipeliner's calls, all idempotent: when it fails (connection lost, no
reply within the timeout, a server still loading its data) it hands every
batch still in flight back, and the Pipeliner re-sends them through redis-py's
retrying path.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

import hiredis
from redis._parsers import BaseParser
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse
from redis.exceptions import TimeoutError as RedisTimeoutError

Command = tuple[Any, ...]
Call = tuple[Command, bytes, asyncio.Future]
"""A command, its RESP encoding (packed once, when the call is made) and the
future its caller awaits."""
Batch = list[Call]
OnReplies = Callable[[Batch, list[Any]], None]
OnLost = Callable[["Lane", list[Batch], BaseException], None]


class Lane(asyncio.Protocol):
    """Batches are answered in the order they were sent (one connection,
    one server thread). `on_replies(batch, replies)` gets each batch's
    replies, error replies as redis-py exceptions; `on_lost(lane, batches,
    error)` gets, once, the batches sent but not fully answered when the lane
    died."""

    def __init__(self, timeout: float, on_replies: OnReplies, on_lost: OnLost) -> None:
        self._timeout = timeout
        self._on_replies = on_replies
        self._on_lost: OnLost | None = on_lost
        # Same reply types as redis-py with decode_responses=True (the engine's).
        self._reader = hiredis.Reader(
            protocolError=InvalidResponse, replyError=BaseParser.parse_error, encoding="utf-8"
        )
        self._in_flight: deque[Batch] = deque()
        self._replies: list[Any] = []
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._error: BaseException | None = None
        self._progress = 0.0  # loop time of the last reply (or first send)
        self._watchdog: asyncio.TimerHandle | None = None
        self.lost: asyncio.Future = self._loop.create_future()
        """Done once the connection is closed and on_lost has run."""

    @classmethod
    async def open(cls, conn: AbstractConnection, timeout: float, on_replies: OnReplies, on_lost: OnLost) -> Lane:
        """Connects `conn` (a fresh redis-py connection) and takes its socket.
        Either protocol: redis-py 8 speaks RESP3 by default, whose server
        pushes (maintenance notifications) are skipped, not taken as replies."""
        await conn.connect()
        lane = cls(timeout, on_replies, on_lost)
        # redis-py keeps no public handle on its transport. The lane takes
        # the stream pair from the connection object (which would close the
        # socket when collected) and keeps the writer alive (a collected
        # StreamWriter closes its transport too), then swaps the protocol.
        writer = conn._writer  # noqa: SLF001
        conn._reader = conn._writer = None  # noqa: SLF001
        if writer is None:
            raise RedisConnectionError("connection closed while opening")
        lane._writer = writer
        transport = writer.transport
        transport.set_protocol(lane)
        lane._transport = transport  # type: ignore[assignment]
        return lane

    @property
    def ready(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    @property
    def idle(self) -> bool:
        return not self._in_flight

    def send(self, batch: Batch) -> None:
        """Writes the batch now (the transport buffers what the socket does
        not take at once). If the write raises, nothing of it was sent."""
        self._transport.write(b"".join([packed for _, packed, _ in batch]))  # type: ignore[union-attr]
        if not self._in_flight:
            self._progress = self._loop.time()
        self._in_flight.append(batch)
        if self._watchdog is None:
            self._watchdog = self._loop.call_later(self._timeout, self._check_progress)

    def close(self) -> None:
        """Closes once what is written has gone out; `lost` follows."""
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        """Drops the connection now; `lost` follows."""
        self._fail(RedisConnectionError("connection dropped by the engine"))

    # -- asyncio.Protocol

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        self._progress = self._loop.time()
        while True:
            try:
                reply = self._reader.gets()
            except InvalidResponse as exc:
                return self._fail(exc)
            if reply is False:  # incomplete
                return
            if isinstance(reply, hiredis.PushNotification):  # RESP3: not a reply to anyone
                continue
            if isinstance(reply, RedisConnectionError) or not self._in_flight:
                # LOADING and the like (the command did not run), or a reply
                # nobody asked for: the connection cannot be trusted.
                return self._fail(reply if isinstance(reply, Exception) else InvalidResponse("unexpected reply"))
            self._replies.append(reply)
            if len(self._replies) == len(self._in_flight[0]):
                batch = self._in_flight.popleft()
                replies, self._replies = self._replies, []
                self._on_replies(batch, replies)

    def eof_received(self) -> bool:
        self._error = self._error or RedisConnectionError("connection closed by the server")
        return False  # close the transport: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        error = self._error or (RedisConnectionError(f"connection lost: {exc}") if exc else
                                RedisConnectionError("connection closed"))
        batches, self._in_flight, self._replies = list(self._in_flight), deque(), []
        on_lost, self._on_lost = self._on_lost, None
        if on_lost is not None:
            on_lost(self, batches, error)
        if not self.lost.done():
            self.lost.set_result(None)

    # -- failure

    def _fail(self, error: BaseException) -> None:
        self._error = self._error or error
        if self._transport is not None:
            self._transport.abort()  # connection_lost follows, on the next tick

    def _check_progress(self) -> None:
        self._watchdog = None
        if not self._in_flight or self._transport is None:
            return
        waited = self._loop.time() - self._progress
        if waited >= self._timeout:
            self._fail(RedisTimeoutError(f"no reply from Redis within {self._timeout} s"))
        else:
            self._watchdog = self._loop.call_later(self._timeout - waited, self._check_progress)
