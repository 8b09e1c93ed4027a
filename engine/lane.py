"""A lane: one connection that carries many batches in flight.

The commit path's connection. redis-py's asyncio connection is written from a
task and read one reply per coroutine, each reply under its own timeout: a
batch went out a loop tick after its calls were made, and while Redis worked
through it the API had nothing to do (`make bench-api` showed the server
idle 13% of the time under full load). A lane is written synchronously, in
the tick the calls were made, so Redis works while the API goes on with the
next requests; hiredis parses the replies in the transport's callback and
they are handed back in order, with no task or coroutine per reply.

The lane opens its own connection from the URL's settings (address or unix
socket, TLS, user and password, database, client name) and signs in with
HELLO 3 (the protocol redis-py 8 speaks by default) and SELECT, through the
same reply path as every later call. A lane carries
only the Pipeliner's calls, all idempotent: when it fails (connection lost, no
reply within the timeout, a server still loading its data) it hands every
batch still in flight back, and the Pipeliner re-sends them through redis-py's
retrying path.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Callable
from typing import Any

import hiredis
import msgspec
from redis._parsers import BaseParser
from redis.connection import SSLConnection, parse_url
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


class Target(msgspec.Struct, frozen=True, kw_only=True):
    """Where and how a lane connects, read from the engine's REDIS_URL."""

    host: str = "localhost"
    port: int = 6379
    path: str | None = None
    """A unix socket (unix:// URLs) instead of host and port."""
    tls: bool = False
    ca_certs: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    verify: str = "required"
    """ssl_cert_reqs: none, optional or required."""
    check_hostname: bool = True
    username: str | None = None
    password: str | None = None
    db: int = 0
    client_name: str | None = None

    @classmethod
    def from_url(cls, url: str) -> Target:
        """Reads the URL as redis-py does (redis://, rediss://, unix://,
        query arguments such as ssl_ca_certs and client_name)."""
        kw = parse_url(url)
        cert_reqs = kw.get("ssl_cert_reqs")
        verify = {ssl.CERT_NONE: "none", ssl.CERT_OPTIONAL: "optional"}.get(cert_reqs, str(cert_reqs or "required"))
        return cls(
            host=kw.get("host") or "localhost", port=int(kw.get("port") or 6379), path=kw.get("path"),
            tls=issubclass(kw.get("connection_class", object), SSLConnection),
            ca_certs=kw.get("ssl_ca_certs"), certfile=kw.get("ssl_certfile"), keyfile=kw.get("ssl_keyfile"),
            verify=verify.lower(), check_hostname=str(kw.get("ssl_check_hostname", True)).lower() not in ("0", "false"),
            username=kw.get("username"), password=kw.get("password"), db=int(kw.get("db") or 0),
            client_name=kw.get("client_name"),
        )

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        context = ssl.create_default_context(cafile=self.ca_certs)
        if self.certfile:
            context.load_cert_chain(self.certfile, self.keyfile)
        context.check_hostname = self.check_hostname and self.verify != "none"
        context.verify_mode = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL}.get(self.verify, ssl.CERT_REQUIRED)
        return context

    def handshake(self) -> list[Command]:
        """HELLO 3 with AUTH and SETNAME, then SELECT: what redis-py sends
        when it opens a connection for the same URL."""
        hello: list[Any] = ["HELLO", 3]
        if self.password is not None:
            hello += ["AUTH", self.username or "default", self.password]
        if self.client_name:
            hello += ["SETNAME", self.client_name]
        commands = [tuple(hello)]
        if self.db:
            commands.append(("SELECT", self.db))
        return commands


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
        self._error: BaseException | None = None
        self._progress = 0.0  # loop time of the last reply (or first send)
        self._watchdog: asyncio.TimerHandle | None = None
        self.lost: asyncio.Future = self._loop.create_future()
        """Done once the connection is closed and on_lost has run."""

    @classmethod
    async def open(cls, target: Target, timeout: float, on_replies: OnReplies, on_lost: OnLost) -> Lane:
        """Connects, signs in, and returns a lane ready for calls. Raises
        (and leaves nothing open) when the server cannot be reached within
        `timeout` or refuses the sign-in. Server pushes (RESP3 maintenance
        notifications) are skipped, never taken as replies."""
        loop = asyncio.get_running_loop()
        signed_in: asyncio.Future = loop.create_future()

        def on_handshake(_batch: Batch, replies: list[Any]) -> None:
            if not signed_in.done():
                signed_in.set_result(replies)

        def on_handshake_lost(_lane: Lane, _batches: list[Batch], error: BaseException) -> None:
            if not signed_in.done():
                signed_in.set_exception(error)

        lane = cls(timeout, on_handshake, on_handshake_lost)
        try:
            async with asyncio.timeout(timeout):
                if target.path:
                    await loop.create_unix_connection(lambda: lane, target.path)
                else:
                    context = target.ssl_context()
                    await loop.create_connection(lambda: lane, target.host, target.port, ssl=context,
                                                 server_hostname=target.host if context else None)
                lane.send([(c, hiredis.pack_command(c), loop.create_future()) for c in target.handshake()])
                replies = await signed_in
        except TimeoutError:
            lane.abort()
            raise RedisTimeoutError(f"no answer from Redis within {timeout} s while connecting") from None
        except BaseException:
            lane.abort()
            raise
        refused = next((r for r in replies if isinstance(r, Exception)), None)
        if refused is not None:
            lane.abort()
            raise refused
        lane._on_replies, lane._on_lost = on_replies, on_lost
        return lane

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop the lane's connection lives on."""
        return self._loop

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
