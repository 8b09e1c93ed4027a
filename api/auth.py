"""Who is calling: bearer API keys with a role, checked on every request.

`KeyRing.check` runs on every route except those marked `opt={"public":
True}` (/health and the OpenAPI document under /schema), called by the
app's one middleware (`api.middleware`; a middleware of its own was one
more frame per request): a missing or unknown key is 401. It leaves a `Principal` in
`scope["auth"]` (Litestar's `request.auth`); guards then check the role
(403). Operator keys may call every client route.

Keys are compared in constant time: the presented token is hashed once and
its digest compared with `hmac.compare_digest` against the digest of every
configured key, without stopping at the first match, so neither the key's
length nor its place in the list shows in the timing. The keys themselves are
not kept after start-up, and never logged: principals carry only a key id
such as `client#2` (the role and the key's place in RESV_API_KEYS).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from typing import Any

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.types import Scope
from msgspec import Struct

from resv.api.settings import ApiKey

PUBLIC = "public"
"""Handler opt key: the route needs no key."""


class Principal(Struct, frozen=True):
    role: str
    """client or operator."""
    key_id: str
    """Which configured key: `<role>#<n>`. Safe to log and to rate-limit on."""


ANONYMOUS_OPERATOR = Principal(role="operator", key_id="insecure-no-auth")


class KeyRing:
    def __init__(self, keys: Sequence[ApiKey], *, insecure_no_auth: bool = False) -> None:
        self._keys = tuple(
            (_digest(key.secret.encode()), Principal(role=key.role, key_id=f"{key.role}#{n}"))
            for n, key in enumerate(keys, start=1)
        )
        self._open = insecure_no_auth and not self._keys

    def check(self, scope: Scope) -> None:
        """The request's principal into `scope["auth"]`; 401 without a known
        key, unless the route is public."""
        if scope["route_handler"].opt.get(PUBLIC):
            return
        principal = self.identify(authorization_header(scope))
        if principal is None:
            raise NotAuthorizedException(headers={"WWW-Authenticate": "Bearer"})
        scope["auth"] = principal

    @property
    def operator_digests(self) -> dict[str, bytes]:
        """key id -> SHA-256 of the key, for the operator keys (the console
        binds a session to the key it was opened with)."""
        return {p.key_id: digest for digest, p in self._keys if p.role == "operator"}

    def identify(self, authorization: bytes | None) -> Principal | None:
        """The principal of an `Authorization: Bearer <key>` header value."""
        if self._open:
            return ANONYMOUS_OPERATOR
        if not authorization:
            return None
        scheme, _, token = authorization.strip().partition(b" ")
        if scheme.lower() != b"bearer" or not token:
            return None
        digest = _digest(token.strip())
        found = None
        for known, principal in self._keys:
            if hmac.compare_digest(known, digest):
                found = principal
        return found


def _digest(secret: bytes) -> bytes:
    return hashlib.sha256(secret).digest()


def authorization_header(scope: Scope) -> bytes | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            return value
    return None


def operator_only(connection: ASGIConnection[Any, Any, Any, Any], _: Any) -> None:
    """Guard: operator keys only (403 for a client key)."""
    principal = connection.scope.get("auth")
    if principal is None or principal.role != "operator":
        raise PermissionDeniedException()


def principal_of(scope: Scope) -> Principal | None:
    return scope.get("auth")


def actor_of(scope: Scope) -> str | None:
    """Who asks, as the Lua records it in every event (`actor`): the key id,
    never the key. Never part of an answer to a client."""
    principal = scope.get("auth")
    return principal.key_id if principal is not None else None
