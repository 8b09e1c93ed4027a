"""The connection's edge, before any key is checked: bounded request heads
and read deadlines, in uvicorn's httptools protocol.

uvicorn's httptools parser has no limit on the request line and headers (a
50 MB header stalled every other client ~2 s and grew the process by ~200 MB)
and no timer while a request is being read (partial heads, partial bodies and
silent connections stayed open indefinitely). Its h11 parser bounds the head
(`h11_max_incomplete_event_size`) but has no read timer either, and costs
more per request (docs/operations.md has the side-by-side figures), so the
API keeps httptools and adds both here:

- head: the request line and headers of one request may take at most
  `max_header_bytes` (RESV_MAX_HEADER_BYTES, 16 KiB); past it the client gets
  431 and the connection is closed, before the parser buffers more.
- read deadlines: a connection must deliver a complete head within
  `header_timeout_s` (RESV_HEADER_TIMEOUT_S) of opening, or of the first byte
  of a following request; a request's body must be complete within
  `body_timeout_s` (RESV_BODY_TIMEOUT_S) of its head. Past either, the
  connection is closed (a handler waiting for the body sees a disconnect).
  Idle keep-alive connections are uvicorn's `timeout_keep_alive` (5 s).

Bodies stay limited by Litestar (`request_max_body_size`, RESV_MAX_BODY_BYTES).

One write per response: uvicorn writes a response's head and its body with
a write (a send system call) each. Here the head is held until the first
body write and both go out together (`_OneWrite`); interim answers (100
Continue) go at once. In a py-spy profile of `resv serve` under wrk, each of
uvicorn's two sends was ~10% of a cached GET's samples; strace: 2.01 writes
per cached GET before, 1.01 after (docs/performance.md).
HEAD responses, which have no body write, are written as uvicorn writes them.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from resv.api.settings import ApiSettings

_HEAD_END = b"\r\n\r\n"

TOO_LARGE_BODY = b'{"error":"HEADERS_TOO_LARGE"}'
TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-type: application/json\r\n"
    b"content-length: " + str(len(TOO_LARGE_BODY)).encode() + b"\r\n"
    b"connection: close\r\n\r\n" + TOO_LARGE_BODY
)


LINGER_S = 1.0
"""How long a refused connection's remaining input is read and dropped."""


class EdgeLimits:
    __slots__ = ("max_header_bytes", "header_timeout_s", "body_timeout_s")

    def __init__(self, max_header_bytes: int, header_timeout_s: float, body_timeout_s: float) -> None:
        self.max_header_bytes = max_header_bytes
        self.header_timeout_s = header_timeout_s
        self.body_timeout_s = body_timeout_s

    @classmethod
    def from_settings(cls, settings: ApiSettings) -> EdgeLimits:
        return cls(settings.max_header_bytes, settings.header_timeout_s, settings.body_timeout_s)


_limits: EdgeLimits | None = None


def limits() -> EdgeLimits:
    """Read once per process from the environment (`resv serve` checked it
    before starting the workers, which build everything from it too)."""
    global _limits
    if _limits is None:
        _limits = EdgeLimits.from_settings(ApiSettings.from_env(os.environ))
    return _limits


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a bounded head and read deadlines.
    Given to uvicorn as `http="resv.api.edge:BoundedHttpToolsProtocol"`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._limits = limits()
        self._in_head = True      # between a request's first byte (or the connection) and its complete head
        self._head_bytes = 0      # bytes of the current head received so far
        self._tail = b""          # last bytes of the previous chunk: a head end may span two chunks
        self._refused = False
        # One timer per connection, checked when it fires, rather than one
        # armed and cancelled per request: a request only sets a number.
        self._read_by: float | None = None  # when the current head or body must be complete (loop time)
        self._read_timer: asyncio.TimerHandle | None = None

    # -- the asyncio protocol

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._read_by = self.loop.time() + self._limits.header_timeout_s
        self._read_timer = self.loop.call_later(self._limits.header_timeout_s, self._check_read)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # the rest of a refused head, read and dropped until the linger ends
        if self._in_head:
            room = self._limits.max_header_bytes - self._head_bytes
            if len(data) > room and (self._tail + data).find(_HEAD_END, 0, len(self._tail) + room + 4) < 0:
                self._refuse_head()
                return
        super().data_received(data)
        if self._in_head:  # still incomplete after this chunk
            self._head_bytes += len(data)
            self._tail = data[-3:]

    # -- parser callbacks (httptools calls them from feed_data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._head_bytes, self._tail = True, 0, b""
        if self._read_by is None:  # a following request on a kept-alive connection
            self._read_by = self.loop.time() + self._limits.header_timeout_s

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._read_by = self.loop.time() + self._limits.body_timeout_s
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and self.scope["method"] != "HEAD":
            cycle.transport = _OneWrite(self.transport)  # type: ignore[assignment]

    def on_message_complete(self) -> None:
        self._read_by = None
        super().on_message_complete()

    # -- helpers

    def _check_read(self) -> None:
        self._read_timer = None
        if self.transport.is_closing():
            return
        now = self.loop.time()
        if self._read_by is not None and now >= self._read_by:
            self.transport.close()  # a handler waiting for the body sees a disconnect
            return
        wait = self._read_by - now if self._read_by is not None else self._limits.header_timeout_s
        self._read_timer = self.loop.call_later(wait, self._check_read)

    def _refuse_head(self) -> None:
        """431, then our side of the connection is shut, and what the client
        still sends is read and dropped for LINGER_S before closing: closing
        with unread data makes the kernel send a reset, which can destroy the
        431 before the client reads it (nginx's lingering close)."""
        self._refused, self._in_head = True, False
        self.logger.info("request head over %d bytes: 431, connection closed", self._limits.max_header_bytes)
        self.transport.write(TOO_LARGE)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._read_by = self.loop.time() + LINGER_S
        if self._read_timer is not None:
            self._read_timer.cancel()
        self._read_timer = self.loop.call_later(LINGER_S, self._check_read)


class _OneWrite:
    """One response's transport, as its request cycle sees it: the head (the
    cycle's first write that is not an interim 1xx answer) is held and
    written with the first body write, in one call. Everything else is the
    connection's transport."""

    __slots__ = ("_head", "_started", "_transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._head: bytes | None = None
        self._started = False

    def write(self, data: bytes) -> None:
        head = self._head
        if head is not None:
            self._head = None
            self._transport.write(head + data)
        elif self._started or data.startswith(b"HTTP/1.1 1"):
            self._transport.write(data)
        else:
            self._started = True
            self._head = data

    def close(self) -> None:
        head, self._head = self._head, None
        if head is not None:
            self._transport.write(head)
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)
