"""The app's one middleware, outermost on every route.

It times the request, checks its key (`auth.KeyRing.check`), answers what
failed before a response started (401 from the key check, 429 from the rate
limiter inside it) through the one error mapping (`errors.answer`), then
counts the request (`metrics.route`) and writes its operator log line
(`oplog.log_request`), both with the status the client got. One middleware
instead of four (log, Litestar's Prometheus middleware, error boundary, key
check): each layer was a frame to resume, and most a send wrapper per
message; Litestar's Prometheus middleware alone built a Request and four
label lookups per request (`make bench-api`, docs/performance.md). A plain
ASGI class rather than Litestar's `ASGIMiddleware`, whose wrapper checks
its exclusion options on every request: ~1-2 us of a ~60 us bare request.
"""

from __future__ import annotations

import time

from litestar.types import ASGIApp, Message, Receive, Scope, Send

from resv.api import errors, metrics, oplog
from resv.api.auth import KeyRing


class RequestMiddleware:
    """Given to Litestar as `DefineMiddleware(RequestMiddleware, keyring=...)`."""

    def __init__(self, app: ASGIApp, keyring: KeyRing) -> None:
        self.app = app
        self.keyring = keyring

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        next_app = self.app
        started = time.perf_counter()
        entry = scope[oplog.NOTE] = oplog.Note()  # type: ignore[literal-required]
        counted = metrics.route(scope["method"], scope["path_template"])
        if counted is not None:
            counted.in_progress += 1
        status = 0

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            self.keyring.check(scope)
            await next_app(scope, receive, send_status)
        except Exception as exc:
            if status:  # the response had started: nothing to answer with
                raise
            await errors.answer(exc, scope, send_status)
        finally:
            seconds = time.perf_counter() - started
            if not status:
                status = 500
            if counted is not None:
                counted.in_progress -= 1
                counted.done(status, seconds)
            oplog.log_request(scope, status, seconds, entry)
