"""What a console page answers when something goes wrong: a page in words.

Refusals the console makes itself (bad input, unknown resource) say what to
do. Everything else is one of three plain pages: not reachable right now
(503), this form was not accepted (403: the CSRF check), or something went
wrong (500, the details in the operator log only). No page carries an
exception's text: it could name a key, a script or a query.
"""

from __future__ import annotations

import logging
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, NotFoundException, PermissionDeniedException
from litestar.response import Redirect, Template
from redis.exceptions import RedisError

from resv.api import oplog
from resv.api.console.session import CSRF_REFUSED, PATH, NotSignedIn
from resv.archiver.reads import AuditUnavailable
from resv.engine.errors import BadArgument, EngineUnavailable

log = logging.getLogger(oplog.LOGGER)


class Refused(Exception):
    """A console refusal with its status and its sentence."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _page(request: Request[Any, Any, Any], status: int, title: str, message: str) -> Template:
    me = request.scope.get("console_principal")
    return Template(template_name="error.html", status_code=status,
                    context={"base": PATH, "me": me.key_id if me else None, "title": title, "message": message})


def not_signed_in(request: Request[Any, Any, Any], _: Exception) -> Response[Any]:
    if request.url.path.endswith("/tail") or request.method != "GET":
        return _page(request, 401, "Signed out", "Your console session has ended. Sign in again.")
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    from urllib.parse import quote

    return Redirect(f"{PATH}/sign-in?next={quote(target, safe='')}", status_code=303)


def refused(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    assert isinstance(exc, Refused)
    return _page(request, exc.status, "Not done", exc.message)


def forbidden(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    return _page(request, 403, "Form not accepted", CSRF_REFUSED)


def not_found(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    return _page(request, 404, "Not found", "There is no such page in the console.")


def unavailable(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.warning("console: a backend is unavailable", extra={"resv": {
        "route": request.scope.get("path_template"), "error": f"{type(exc).__name__}: {exc}"}})
    return _page(request, 503, "Not reachable",
                 "The engine or the audit cannot be reached right now. Nothing was changed. Try again in a moment.")


def malformed(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.info("console: the engine refused a malformed call", extra={"resv": {"error": str(exc)}})
    return _page(request, 400, "Not done", "The engine refused these values as malformed. Nothing was changed.")


def http_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    assert isinstance(exc, HTTPException)
    if exc.status_code >= 500:
        return internal(request, exc)
    return _page(request, exc.status_code, "Not done", "The request was not understood.")


def internal(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.error("console: unhandled error", exc_info=exc,
              extra={"resv": {"route": request.scope.get("path_template")}})
    return _page(request, 500, "Something went wrong",
                 "The console could not show this page. The operator log has the details.")


HANDLERS = {
    NotSignedIn: not_signed_in,
    Refused: refused,
    PermissionDeniedException: forbidden,
    NotFoundException: not_found,
    BadArgument: malformed,
    EngineUnavailable: unavailable,
    TimeoutError: unavailable,
    AuditUnavailable: unavailable,
    RedisError: unavailable,
    OSError: unavailable,
    HTTPException: http_error,
    Exception: internal,
}
