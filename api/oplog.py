"""The operator log: one JSON line per request, to stderr, via `logging`.

Each line has method, route (the path template, so ids stay out of it; the
raw path only for requests that matched no route), status, latency_ms, the
request id, the caller's role and key id (`client#2`, never the key or the
Authorization header), and, when the engine took a decision, its type,
outcome, public code, exact reason and server time (`ts`). Handlers add the
request id and the decision through `note(scope)`.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
import time
from typing import IO, Any

import msgspec
from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from resv.api.ids import new_request_id
from resv.api.times import iso_from_us
from resv.engine.types import Decision, ReservationReply

LOGGER = "resv.api"
log = logging.getLogger(LOGGER)

_NOTE = "resv.note"


class Note:
    """What a handler adds to its request's log line."""

    __slots__ = ("decision", "request_id")

    def __init__(self) -> None:
        self.request_id: str | None = None
        self.decision: Decision | None = None


def note(scope: Scope) -> Note:
    found = scope.get(_NOTE)
    if found is None:  # a handler called outside the middleware (tests)
        found = scope[_NOTE] = Note()  # type: ignore[literal-required]
    return found


class RequestLog(ASGIMiddleware):
    scopes = (ScopeType.HTTP,)

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        started = time.perf_counter()
        entry = scope[_NOTE] = Note()  # type: ignore[literal-required]
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await next_app(scope, receive, send_status)
        finally:
            if log.isEnabledFor(logging.INFO):
                fields = _line(scope, status, started, entry)
                log.info("request", extra={"resv": fields})


def _line(scope: Scope, status: int, started: float, entry: Note) -> dict[str, Any]:
    principal = scope.get("auth")
    fields: dict[str, Any] = {
        "method": scope["method"],
        "route": scope.get("path_template"),
        "status": status,
        "latency_ms": round((time.perf_counter() - started) * 1000, 3),
        "request_id": entry.request_id or new_request_id(),
        "role": principal.role if principal is not None else None,
        "key_id": principal.key_id if principal is not None else None,
    }
    decision = entry.decision
    if decision is not None:
        fields["decision_type"] = decision.type
        fields["decision"] = decision.decision
        fields["code"] = decision.code
        fields["reason"] = decision.reason
        fields["ts"] = iso_from_us(decision.ts)
        if isinstance(decision, ReservationReply) and decision.replayed:
            fields["replayed"] = True
    return fields


def note_unrouted(scope: Scope, status: int) -> None:
    """Logs a request that never reached the middleware (no route, wrong
    method): Litestar answers those before any route middleware runs."""
    if _NOTE in scope or scope.get("type") != "http":
        return
    log.info("request", extra={"resv": {
        "method": scope.get("method"),
        "route": None,
        "path": str(scope.get("path", ""))[:200],
        "status": status,
        "latency_ms": None,
        "request_id": new_request_id(),
        "role": None,
    }})


# ------------------------------------------------------------------ format

_encode = msgspec.json.Encoder().encode


class JsonFormatter(logging.Formatter):
    """Every record as one JSON object: time, level, logger, msg, the
    record's `resv` fields, and the traceback (`exc`) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
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
    """Formats each record on the caller's thread, writes on its own thread.

    A write to stderr can block (a full pipe, a file on a busy disk), and on
    the event loop that blocks every request in flight. Here the loop only
    queues the line; one writer thread drains the queue, several lines per
    write (one write syscall per batch instead of per request: ~10% more
    requests/s in `make bench-api`). Lines still queued when the process ends
    are written by `close()` (logging.shutdown at exit); a SIGKILL loses the
    last few milliseconds of them."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        super().__init__()
        self.stream = stream if stream is not None else sys.stderr
        self._lines: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._writer = threading.Thread(target=self._write_lines, name="resv-log-writer", daemon=True)
        self._writer.start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._lines.put(self.format(record) + "\n")
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            self.handleError(record)

    def _write_lines(self) -> None:
        while True:
            first = self._lines.get()
            batch = [first] if first is not None else []
            done = first is None
            while not done:
                try:
                    line = self._lines.get_nowait()
                except queue.Empty:
                    break
                if line is None:
                    done = True
                else:
                    batch.append(line)
            if batch:
                try:
                    self.stream.write("".join(batch))
                    self.stream.flush()
                except Exception:  # noqa: BLE001 - a broken stderr must not kill the writer
                    pass
            if done:
                return

    def close(self) -> None:
        if self._writer.is_alive():
            self._lines.put(None)
            self._writer.join(timeout=5)
        super().close()


def log_config(level: str = "INFO") -> dict[str, Any]:
    """`logging.config.dictConfig` settings for a server process (uvicorn
    applies them in every worker): JSON lines on stderr, written off the
    event loop, uvicorn's access log off (this log replaces it)."""
    handler = {"()": f"{__name__}.BackgroundStreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
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

