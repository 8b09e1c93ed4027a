"""The console's sign-in: a signed session cookie opened with an operator key.

The cookie is Litestar's client-side session (AES-GCM: signed and
encrypted), HttpOnly, SameSite=Strict, scoped to /console, and Secure when
the request came over https. It holds the key id (`operator#1`) and a
fingerprint of the key (an HMAC of its digest), never the key: a session
ends as soon as its key leaves RESV_API_KEYS. Every state-changing form
carries Litestar's CSRF token (a double-submit cookie, HMAC-signed). The
sign-in POST is rate-limited per client address (RESV_CONSOLE_SIGN_IN_LIMIT).

The secret: RESV_CONSOLE_SECRET when set (all workers and hosts must share
it); otherwise it is derived from the operator keys, which every worker
already shares, so sessions work across workers without more configuration
and a key rotation ends every session. With no operator key there is no
console.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from litestar.config.csrf import CSRFConfig
from litestar.connection import ASGIConnection
from litestar.connection import Request
from litestar.exceptions import PermissionDeniedException, TooManyRequestsException
from litestar.middleware.csrf import CSRFMiddleware
from litestar.middleware.rate_limit import RateLimitConfig, RateLimitMiddleware
from litestar.middleware.session.base import SessionMiddleware
from litestar.middleware.session.client_side import ClientSideSessionBackend, CookieBackendConfig
from litestar.types import ASGIApp, Receive, Scope, Send

from resv.api.auth import KeyRing, Principal
from resv.api.settings import ApiSettings

PATH = "/console"
SESSION_COOKIE = "resv_console"
CSRF_COOKIE = "resv_console_csrf"
SESSION_MAX_AGE_S = 8 * 3600
"""A working day; signing in again costs one paste."""


def console_secret(settings: ApiSettings) -> bytes | None:
    """32 bytes for the session cipher and the CSRF HMAC, or None (no console)."""
    if settings.console_secret:
        return hashlib.sha256(b"resv-console\0" + settings.console_secret.value.encode()).digest()
    operators = sorted(k.secret for k in settings.api_keys if k.role == "operator")
    if not operators:
        return None
    return hashlib.sha256(b"resv-console-derived\0" + "\0".join(operators).encode()).digest()


class NotSignedIn(Exception):
    """No valid console session: the handler answers with the sign-in page."""


class ConsoleSessions:
    """Opens and checks console sessions against the configured operator keys."""

    def __init__(self, keyring: KeyRing, secret: bytes) -> None:
        self.keyring = keyring
        self.secret = secret

    def fingerprint(self, key_id: str) -> str | None:
        digest = self.keyring.operator_digests.get(key_id)
        if digest is None:
            return None
        return hmac.new(self.secret, digest, hashlib.sha256).hexdigest()[:32]

    def sign_in(self, key: str) -> dict[str, str] | None:
        """The session for an operator key; None for anything else (a client
        key included: the caller says the same for both)."""
        if not key or any(c.isspace() or not c.isprintable() for c in key):
            return None
        principal = self.keyring.identify(b"Bearer " + key.encode())
        if principal is None or principal.role != "operator":
            return None
        fingerprint = self.fingerprint(principal.key_id)
        return {"key_id": principal.key_id, "fp": fingerprint} if fingerprint else None

    def principal(self, session: dict[str, Any] | None) -> Principal | None:
        if not session:
            return None
        key_id, fp = session.get("key_id"), session.get("fp")
        if not isinstance(key_id, str) or not isinstance(fp, str):
            return None
        expected = self.fingerprint(key_id)
        if expected is None or not hmac.compare_digest(expected, fp):
            return None
        return Principal(role="operator", key_id=key_id)


def signed_in(connection: ASGIConnection[Any, Any, Any, Any], _: Any) -> None:
    """Guard for every console page but the sign-in form."""
    sessions: ConsoleSessions = connection.app.state.console_sessions
    principal = sessions.principal(connection.scope.get("session"))
    if principal is None:
        raise NotSignedIn()
    connection.scope["console_principal"] = principal  # type: ignore[typeddict-unknown-key]


class ConsoleCookies:
    """The session and CSRF middleware, with cookies marked Secure when the
    request came over https (uvicorn sets the scheme, from the proxy's
    headers when it trusts them). Mounted on the console's router only."""

    def __init__(self, app: ASGIApp, secret: bytes) -> None:
        self._by_scheme = {secure: self._stack(app, secret, secure) for secure in (False, True)}

    @staticmethod
    def _stack(app: ASGIApp, secret: bytes, secure: bool) -> ASGIApp:
        csrf = CSRFConfig(secret=secret.hex(), cookie_name=CSRF_COOKIE, cookie_path=PATH,
                          cookie_secure=secure, cookie_httponly=True, cookie_samesite="strict",
                          header_name="x-csrf-token")
        session = CookieBackendConfig(secret=secret, key=SESSION_COOKIE, path=PATH, max_age=SESSION_MAX_AGE_S,
                                      secure=secure, httponly=True, samesite="strict")
        return SessionMiddleware(app=CSRFMiddleware(app=app, config=csrf),
                                 backend=ClientSideSessionBackend(config=session))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._by_scheme[scope.get("scheme") == "https"](scope, receive, _expire_at_once(send))
        except PermissionDeniedException:
            # Raised by the CSRF check before any handler ran (the handlers'
            # own refusals are answered by their exception handlers).
            await refuse_form(scope, send)


_CLEARED = f"{SESSION_COOKIE}=null;".encode()


def _expire_at_once(send: Send) -> Send:
    """Litestar clears a session cookie with `expires=<now>`, to the second,
    so a browser may send it once more within that second (seen in
    Chromium: signed out, then signed in again by the next click). Max-Age=0
    deletes it at once."""

    async def sending(message: Any) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [
                (name, value + b"; Max-Age=0") if name.lower() == b"set-cookie" and value.startswith(_CLEARED)
                else (name, value)
                for name, value in message.get("headers", [])
            ]
        await send(message)

    return sending


CSRF_REFUSED = ("This form was not accepted: it did not carry this console's token (it may be old, or come "
                "from another site). Reload the page and try again.")
SIGN_IN_LIMITED = ("Too many sign-in attempts from your address in the last minute. Wait a minute, then "
                   "sign in again.")


async def refuse_form(scope: Scope, send: Send) -> None:
    await plain_page(scope, send, 403, "Form not accepted", CSRF_REFUSED)


async def plain_page(scope: Scope, send: Send, status: int, title: str, message: str,
                     headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    """The error page, sent by a middleware (before any handler ran)."""
    template = scope["litestar_app"].template_engine.get_template("error.html")
    body = template.render(base=PATH, me=None, title=title, message=message, csrf_input="").encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"text/html; charset=utf-8"), (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body, "more_body": False})


# ------------------------------------------------------------ sign-in limit

SIGN_IN_WINDOW = "minute"
SIGN_IN_STORE = "console_sign_in"
"""Its own store: the API's RESV_RATE_LIMIT counts in "rate_limit"."""


def sign_in_limit(per_minute: int) -> RateLimitConfig:
    """Litestar's fixed-window limiter on POST /console/sign-in alone (it is
    mounted on the sign-in controller, and counts POSTs only), keyed on the
    client's address as the server reports it, in each process's memory.
    Every attempt counts, a right key included: a key guessed on attempt
    N+1 is refused all the same."""
    return RateLimitConfig(rate_limit=(SIGN_IN_WINDOW, per_minute), middleware_class=SignInLimiter,
                           check_throttle_handler=_is_post, set_rate_limit_headers=False,
                           store=SIGN_IN_STORE)


def _is_post(request: Request[Any, Any, Any]) -> bool:
    return request.method == "POST"


class SignInLimiter(RateLimitMiddleware):
    """Answers a plain page (429, Retry-After) instead of Litestar's JSON error."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except TooManyRequestsException:
            await plain_page(scope, send, 429, "Too many sign-ins", SIGN_IN_LIMITED,
                             ((b"retry-after", b"60"),))
