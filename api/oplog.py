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
import time
from typing import Any

import msgspec
from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from api.ids import new_request_id
from api.times import iso_from_us
from engine.types import Decision

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
        if decision.replayed:
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


def log_config(level: str = "INFO") -> dict[str, Any]:
    """`logging.config.dictConfig` settings for a server process (uvicorn
    applies them in every worker): JSON lines on stderr, uvicorn's access log
    off (this log replaces it)."""
    handler = {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
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

