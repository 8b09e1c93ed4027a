"""The one mapping from failures to HTTP responses.

Every error body is `{"error": CODE}` (plus `detail` on 400, naming the
field or header). Bodies never carry an exception message from Redis, Lua or
a driver, a key name, a path or a trace: those go to the operator log only.
Decisions the engine took against a request are not errors: handlers return
them as 409 `Rejection`s (`api.decisions`).

Two places use `resolve`: Litestar's exception handler (errors raised by
handlers, and by the router: 404, 405) and `answer`, which the request middleware
(`api.middleware`) calls for errors raised by the middleware inside it (401 from
the key check, 429 from the rate limiter), so that the request log and the
request metrics see the real status.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.enums import MediaType
from litestar.exceptions import (
    HTTPException,
    TooManyRequestsException,
    ValidationException,
)
from litestar.types import Scope, Send

from resv.api import metrics, oplog
from resv.api.schemas import ErrorBody, ErrorCode
from resv.engine.errors import BadArgument, EngineRefused, EngineUnavailable

log = logging.getLogger(oplog.LOGGER)

_encode = msgspec.json.Encoder().encode

BY_STATUS: dict[int, ErrorCode] = {
    400: "BAD_REQUEST",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    409: "INVALID_STATE",
    412: "VERSION_MISMATCH",
    413: "PAYLOAD_TOO_LARGE",
    428: "PRECONDITION_REQUIRED",
    429: "RATE_LIMITED",
    503: "UNAVAILABLE",
}

RETRY_AFTER_UNAVAILABLE = "1"
"""Seconds a client should wait after a 503."""


class ApiError(Exception):
    """An expected refusal, raised by a handler, with its public code."""

    def __init__(self, status: int, error: ErrorCode, detail: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.detail = detail
        self.headers = headers


class ClientDisconnected(Exception):
    """The client went away before sending its whole body (or was cut off by
    the body timeout, api/edge.py). Logged as a client event; the 400 is for
    the request log, no one receives it."""


class Failure(msgspec.Struct, frozen=True):
    status: int
    body: ErrorBody
    headers: dict[str, str] | None = None

    def encoded(self) -> bytes:
        return _encode(self.body)


def resolve(exc: BaseException, scope: Scope | None = None) -> Failure:
    """The status, body and headers for any exception at a request's edge."""
    if isinstance(exc, ApiError):
        return Failure(exc.status, ErrorBody(error=exc.error, detail=exc.detail), exc.headers)
    if isinstance(exc, ClientDisconnected):
        metrics.CLIENT_DISCONNECTS.inc()
        log.info("client disconnected before sending the whole body", extra={"resv": {"route": _route(scope)}})
        return Failure(400, ErrorBody(error="BAD_REQUEST", detail="body: the client disconnected mid-body"))
    if isinstance(exc, ValidationException):
        return Failure(400, ErrorBody(error="BAD_REQUEST", detail=validation_detail(exc)))
    if isinstance(exc, TooManyRequestsException):
        reset = (exc.headers or {}).get("RateLimit-Reset", "1")
        retry_after = str(max(1, int(reset))) if reset.isdigit() else "1"
        return Failure(429, ErrorBody(error="RATE_LIMITED"), {"Retry-After": retry_after})
    if isinstance(exc, HTTPException):
        status = exc.status_code
        error = BY_STATUS.get(status) or ("BAD_REQUEST" if 400 <= status < 500 else None)
        if error is None:
            return _internal(exc, scope)
        detail = safe_detail(exc.detail) if status == 400 else None
        return Failure(status, ErrorBody(error=error, detail=detail), _passed_headers(exc))
    if isinstance(exc, EngineRefused):  # the guard: /ready and the operator log say why
        return Failure(503, ErrorBody(error="UNAVAILABLE"), {"Retry-After": RETRY_AFTER_UNAVAILABLE})
    if isinstance(exc, (EngineUnavailable, TimeoutError)):
        metrics.REDIS_ERRORS.inc()
        log.warning("engine unavailable", extra={"resv": {
            "route": _route(scope), "error": f"{type(exc).__name__}: {exc}"}})
        return Failure(503, ErrorBody(error="UNAVAILABLE"), {"Retry-After": RETRY_AFTER_UNAVAILABLE})
    if isinstance(exc, BadArgument):
        # The API validates what the Lua validates, with the Lua's bounds
        # (resv.engine.limits), so this is rare: a time past the Lua's MAX_TIME.
        metrics.BAD_ARGUMENTS.inc()
        log.info("engine refused a malformed call", extra={"resv": {
            "route": _route(scope), "error": str(exc)}})
        return Failure(400, ErrorBody(error="BAD_REQUEST", detail=safe_detail(str(exc)) or "invalid argument"))
    return _internal(exc, scope)


def error_response(status: int, error: ErrorCode, detail: str | None = None,
                   headers: dict[str, str] | None = None) -> Response[bytes]:
    return Response(_encode(ErrorBody(error=error, detail=detail)), status_code=status,
                    media_type=MediaType.JSON, headers=headers)


def handle_exception(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    """Litestar's exception handler, registered for every exception type."""
    failure = resolve(exc, request.scope)
    oplog.note_unrouted(request.scope, failure.status)
    return Response(failure.encoded(), status_code=failure.status, media_type=MediaType.JSON,
                    headers=failure.headers)


async def answer(exc: Exception, scope: Scope, send: Send) -> None:
    """Answers an error a middleware raised before any response started."""
    failure = resolve(exc, scope)
    body = failure.encoded()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode("latin-1")) for k, v in (failure.headers or {}).items()]
    await send({"type": "http.response.start", "status": failure.status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def validation_detail(exc: ValidationException) -> str:
    """`quantity: Expected `int` >= 1`: which field or header, and the rule."""
    parts = []
    for item in exc.extra if isinstance(exc.extra, list) else []:
        if not isinstance(item, dict):
            continue
        key, source = item.get("key"), item.get("source")
        source = getattr(source, "value", source)  # Litestar gives a ParamType for parameters
        message = rule_message(str(item.get("message", "")))
        if key == "data":  # the body as a whole
            key = "body"
            if message.startswith("'"):  # Litestar's KeyError text: no body at all
                message = "a JSON object is required"
        if key and source == "header":
            parts.append(f"header {key}: {message}")
        elif key and source in ("query", "path"):
            parts.append(f"{source} parameter {key}: {message}")
        elif key:
            parts.append(f"{key}: {message}")
        else:
            parts.append(message)
    return "; ".join(parts) or safe_detail(exc.detail) or "invalid request"


def rule_message(message: str) -> str:
    """A validation message fit for a client: msgspec's, without the regex it
    quotes, or a generic one."""
    return safe_detail(_REGEX.sub("of the allowed characters and length", message)) or "invalid value"


_REGEX = re.compile(r"matching regex '.*'")

# Details come from msgspec ("Expected `int`, got `str`") or from our own
# checks; anything that could name a key, a file or an internal is replaced
# by a generic text.
_SAFE = re.compile(r"[A-Za-z0-9 _.,:;'`$()\[\]<>=+\-/*|^?!{}\\\"#%&@~]{1,300}")
_UNSAFE = re.compile(r"resv:|KEYS\[|\{p\d|(?i:redis|\blua\b|\bscript\b|psycopg|\.py\b|/work|traceback|valkey)")


def safe_detail(text: str | None) -> str | None:
    if not text or not _SAFE.fullmatch(text) or _UNSAFE.search(text):
        return None
    return text


def _passed_headers(exc: HTTPException) -> dict[str, str] | None:
    headers = exc.headers or {}
    kept = {k: v for k, v in headers.items() if k.lower() in ("www-authenticate", "allow", "retry-after")}
    return kept or None


def _route(scope: Scope | None) -> str | None:
    return scope.get("path_template") if scope is not None else None


def _internal(exc: BaseException, scope: Scope | None) -> Failure:
    metrics.INTERNAL_ERRORS.inc()
    log.error("unhandled error", exc_info=exc, extra={"resv": {"route": _route(scope)}})
    return Failure(500, ErrorBody(error="INTERNAL"))
