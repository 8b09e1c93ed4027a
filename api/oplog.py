"""The operator log: one JSON line per request, to stderr.

Each line has method, route (the path template, so ids stay out of it; the
raw path only for requests that matched no route), status, latency_ms, the
request id, the caller's role and key id (`client#2`, never the key or the
Authorization header), and, when the engine took a decision, its type,
outcome, public code, exact reason and server time (`ts`). Handlers add the
request id and the decision through `note(scope)`; the app's middleware
(`api.middleware`) writes the line when the response is sent. Other records
(warnings, errors) go through `logging` and `JsonFormatter`, to the same
stream in the same order. Every route logs
every request: measured, a line costs a few microseconds (its facts queued
by the request, encoded by msgspec and written in batches by
`BackgroundStreamHandler`'s thread), not worth sampling away on the read
routes.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import deque
from typing import IO, Any

import msgspec
from litestar.types import Scope

from resv.api.ids import new_line_id
from resv.api.times import iso_from_us
from resv.engine.types import Decision, ReservationReply

LOGGER = "resv.api"
log = logging.getLogger(LOGGER)

NOTE = "resv.note"
"""Scope key of the request's `Note`."""


class Note:
    """What a handler adds to its request's log line."""

    __slots__ = ("decision", "request_id")

    def __init__(self) -> None:
        self.request_id: str | None = None
        self.decision: Decision | None = None


def note(scope: Scope) -> Note:
    found = scope.get(NOTE)
    if found is None:  # a handler called outside the middleware (tests)
        found = scope[NOTE] = Note()  # type: ignore[literal-required]
    return found


class RequestLine(msgspec.Struct, omit_defaults=True):
    """One request's line, in this field order. The decision fields, `replayed`
    and `path` are left out when unset."""

    time: str
    level: str
    logger: str
    msg: str
    method: str | None
    route: str | None
    status: int
    latency_ms: float | None
    request_id: str
    role: str | None
    key_id: str | None = None
    decision_type: str | None = None
    decision: str | None = None
    code: str | None = None
    reason: str | None = None
    ts: str | None = None
    replayed: bool = False
    path: str | None = None


def log_request(scope: Scope, status: int, seconds: float, entry: Note) -> None:
    """Writes the request's line (called by the request middleware, `api.middleware`).

    In a server process the event loop only queues the request's facts; the
    log's writer thread builds and encodes the lines of a batch together
    (`BackgroundStreamHandler`). On the loop that leaves ~0.5 us per request
    (a tuple and a deque append); building and encoding a line, ~2.5 us,
    happens on the writer thread, between batches rather than between
    requests (measured with timeit; the process's CPU is about the same,
    the event loop's share of it is what shrinks)."""
    if not log.isEnabledFor(logging.INFO):
        return
    facts = (time.time_ns(), scope["method"], scope.get("path_template"), status, seconds, entry.request_id,
             scope.get("auth"), entry.decision)
    handler = _direct
    if handler is not None:
        handler.write_request(facts)
    else:
        log.info("request", extra={_LINE: _encode(request_line(facts))})


def request_line(facts: tuple[Any, ...]) -> RequestLine:
    """The line of `log_request`'s facts."""
    time_ns, method, route, status, seconds, request_id, principal, decision = facts
    line = RequestLine(
        time=iso_from_us(time_ns // 1000),
        level="info",
        logger=LOGGER,
        msg="request",
        method=method,
        route=route,
        status=status,
        latency_ms=int(seconds * 1_000_000) / 1000,
        request_id=request_id or new_line_id(),
        role=principal.role if principal is not None else None,
        key_id=principal.key_id if principal is not None else None,
    )
    if decision is not None:
        line.decision_type = decision.type
        line.decision = decision.decision
        line.code = decision.code
        line.reason = decision.reason
        line.ts = iso_from_us(decision.ts)
        line.replayed = isinstance(decision, ReservationReply) and decision.replayed
    return line


def note_unrouted(scope: Scope, status: int) -> None:
    """Logs a request that never reached the request middleware (no route, wrong
    method): Litestar answers those before any route middleware runs."""
    if NOTE in scope or scope.get("type") != "http" or not log.isEnabledFor(logging.INFO):
        return
    _emit(_encode(RequestLine(
        time=iso_from_us(time.time_ns() // 1000),
        level="info",
        logger=LOGGER,
        msg="request",
        method=scope.get("method"),
        route=None,
        path=str(scope.get("path", ""))[:200],
        status=status,
        latency_ms=None,
        request_id=new_line_id(),
        role=None,
    )))


_direct: BackgroundStreamHandler | None = None
"""The server process's handler, when it takes request lines directly."""


def _emit(line: bytes) -> None:
    """An encoded request line (of a request no route took) in a server
    process goes straight to the handler's batch (no LogRecord, no
    formatting). Elsewhere (tests, an app embedded in another program) it
    goes through `logging` as one record carrying the encoded line, which
    `JsonFormatter` writes as it is."""
    handler = _direct
    if handler is not None:
        handler.write_line(line)
    else:
        log.info("request", extra={_LINE: line})


_LINE = "resv_line"


# ------------------------------------------------------------------ format

_encoder = msgspec.json.Encoder()
_encode = _encoder.encode
_encode_lines = _encoder.encode_lines


class JsonFormatter(logging.Formatter):
    """Every record as one JSON object: time, level, logger, msg, the
    record's `resv` fields, and the traceback (`exc`) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        line = getattr(record, _LINE, None)
        if line is not None:  # a request line, encoded when it was made
            return line.decode()
        out: dict[str, Any] = {
            "time": iso_from_us(int(record.created * 1_000_000)),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "resv", None)
        if fields:
            out.update(fields)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return _encode(out).decode()


class BackgroundStreamHandler(logging.Handler):
    """Formats each record on the caller's thread (request lines: on its
    own), writes on its own thread, in batches.

    A write to stderr can block (a full pipe, a file on a busy disk), and on
    the event loop that blocks every request in flight. Here the loop only
    appends the encoded line to a deque; one writer thread wakes when the
    first line of a batch arrives, lets the batch gather for FLUSH_S, and
    writes it with one write call. Under load that is one wake-up and one
    write per ~FLUSH_S instead of a queue hand-off (and a GIL switch) per
    line. With `request_lines=True` (server processes, `log_config`) request
    lines skip `logging` and come straight here (`_emit`); other records
    keep their place among them, since both go through the one deque. Lines
    still waiting when the process ends are written by `close()`
    (logging.shutdown at exit); a SIGKILL loses the last FLUSH_S of them.
    Request lines arrive as `log_request`'s facts and are encoded with the
    rest of their batch (`encode_lines`: one call for the batch's lines)."""

    FLUSH_S = 0.02

    def __init__(self, stream: IO[str] | None = None, request_lines: bool = False) -> None:
        global _direct
        super().__init__()
        self.stream = stream if stream is not None else sys.stderr
        self._lines: deque[bytes | tuple[Any, ...]] = deque()
        self._wake = threading.Event()
        self._idle = True
        self._closing = False
        self._drain = threading.Lock()
        self._writer = threading.Thread(target=self._write_lines, name="resv-log-writer", daemon=True)
        self._writer.start()
        if request_lines:
            _direct = self

    def write_line(self, line: bytes) -> None:
        """One encoded line, without its newline. Any thread."""
        self._lines.append(line)
        if self._idle:
            self._idle = False
            self._wake.set()

    def write_request(self, facts: tuple[Any, ...]) -> None:
        """A request's facts (`log_request`), encoded by the writer. Any thread."""
        self._lines.append(facts)
        if self._idle:
            self._idle = False
            self._wake.set()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.write_line(self.format(record).encode())
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            self.handleError(record)

    def _write_lines(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if not self._closing:
                time.sleep(self.FLUSH_S)
            # From here a new line wakes the next round; every line appended
            # before this is drained below, every one after it by that round.
            self._idle = True
            self.flush()
            if self._closing and not self._lines:
                return

    def flush(self) -> None:
        """Writes what is waiting, on the calling thread (the writer's, or
        a server's shutdown hook: some servers end their workers without
        running `logging.shutdown`)."""
        with self._drain:  # one drainer at a time, so batches go out in order
            lines = self._lines
            batch = [lines.popleft() for _ in range(len(lines))]
            if batch:
                try:
                    data = _encode_batch(batch)
                except Exception:  # noqa: BLE001 - one bad line must not cost the batch, nor the writer
                    data = b"".join(_encode_batch([item]) for item in batch if _encodes(item))
                self._write(data)

    def _write(self, data: bytes) -> None:
        try:
            binary = getattr(self.stream, "buffer", None)
            if binary is not None:
                self.stream.flush()  # text someone else wrote to the stream goes first
                binary.write(data)
                binary.flush()
            else:
                self.stream.write(data.decode())
                self.stream.flush()
        except Exception:  # noqa: BLE001 - a broken stderr must not kill the writer
            pass

    def close(self) -> None:
        global _direct
        if _direct is self:
            _direct = None
        if self._writer.is_alive():
            self._closing = True
            self._wake.set()
            self._writer.join(timeout=5)
        super().close()


def _encode_batch(batch: list[bytes | tuple[Any, ...]]) -> bytes:
    """Newline-terminated lines; runs of request facts are encoded in one call."""
    out: list[bytes] = []
    run: list[RequestLine] = []
    for item in batch:
        if type(item) is tuple:
            run.append(request_line(item))
            continue
        if run:
            out.append(_encode_lines(run))
            run = []
        out.append(item + b"\n")  # type: ignore[operator]
    if run:
        out.append(_encode_lines(run))
    return b"".join(out)


def _encodes(item: bytes | tuple[Any, ...]) -> bool:
    try:
        _encode_batch([item])
    except Exception:  # noqa: BLE001
        return False
    return True


def flush() -> None:
    """Writes the server process's waiting lines now (`api.app` calls it
    when the app stops)."""
    if _direct is not None:
        _direct.flush()


def log_config(level: str = "INFO") -> dict[str, Any]:
    """`logging.config.dictConfig` settings for a server process (uvicorn
    applies them in every worker): JSON lines on stderr, written off the
    event loop, uvicorn's access log off (this log replaces it)."""
    handler = {"()": f"{__name__}.BackgroundStreamHandler", "formatter": "json", "stream": "ext://sys.stderr",
               "request_lines": True}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": f"{__name__}.JsonFormatter"}},
        "handlers": {"stderr": handler},
        "root": {"handlers": ["stderr"], "level": "WARNING"},
        "loggers": {
            "resv": {"level": level.upper()},
            "uvicorn": {"level": "INFO"},
            "uvicorn.error": {"level": "INFO"},
            "uvicorn.access": {"level": "WARNING", "propagate": False, "handlers": []},
        },
    }


def configure(level: str = "INFO") -> None:
    import logging.config

    logging.config.dictConfig(log_config(level))

