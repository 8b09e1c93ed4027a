"""API settings, read once from the environment.

The engine's own settings (REDIS_URL, RESV_PARTITIONS, Redis timeouts) are
read by `engine.Settings.from_env()` and carried here as `engine`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import msgspec

from resv.engine.settings import Settings as EngineSettings

ROLES = ("client", "operator")


class ApiKey(msgspec.Struct, frozen=True):
    role: str
    """client or operator."""
    secret: str
    """The bearer token. Never logged; see `api.auth.KeyRing`."""

    def __repr__(self) -> str:  # settings may be printed; the secret never is
        return f"ApiKey(role={self.role!r}, secret=<hidden>)"


class Secret(msgspec.Struct, frozen=True):
    value: str

    def __repr__(self) -> str:
        return "Secret(<hidden>)"


class ApiSettings(msgspec.Struct, frozen=True, kw_only=True):
    engine: EngineSettings = EngineSettings()
    """The engine's settings (REDIS_URL, RESV_PARTITIONS, RESV_REDIS_*)."""
    api_keys: tuple[ApiKey, ...] = ()
    """RESV_API_KEYS: comma-separated `role:key` pairs, e.g.
    `operator:op-secret,client:web-secret`. Operator keys may call every
    client route too."""
    insecure_no_auth: bool = False
    """RESV_INSECURE_NO_AUTH=1: serve without keys; every caller is an
    operator. Only for local experiments: the API refuses to start without a
    key unless this is set."""
    availability_ttl_ms: int = 500
    """RESV_AVAILABILITY_TTL_MS: how long GET /availability answers (found or
    not) are served from the per-process cache. 0 disables the cache."""
    rate_limit: int | None = None
    """RESV_RATE_LIMIT: requests per second per API key, per server process.
    Unset: no limit."""
    database_url: str | None = None
    """DATABASE_URL: the archive (PostgreSQL). Optional for the API: when set,
    GET /ready checks it."""
    max_body_bytes: int = 16 * 1024
    """RESV_MAX_BODY_BYTES: larger request bodies get 413."""
    max_header_bytes: int = 16 * 1024
    """RESV_MAX_HEADER_BYTES: the request line and headers of one request, in
    all; larger heads get 431 and a closed connection (api/edge.py)."""
    header_timeout_s: float = 5.0
    """RESV_HEADER_TIMEOUT_S: a connection's request head must be complete
    this long after it opened (or after a following request's first byte);
    else the connection is closed."""
    body_timeout_s: float = 10.0
    """RESV_BODY_TIMEOUT_S: a request's body must be complete this long after
    its head; else the connection is closed."""
    max_json_depth: int = 32
    """RESV_MAX_JSON_DEPTH: arrays and objects nested deeper in a JSON body
    get 400 (no body the API takes nests more than 2)."""
    request_deadline_s: float = 3.0
    """RESV_REQUEST_DEADLINE_S: longest time one request waits for Redis
    (retries included) before answering 503."""
    console_secret: Secret | None = None
    """RESV_CONSOLE_SECRET: signs and encrypts the console's session cookies
    (and its CSRF tokens); every worker and host must share it. Unset: derived
    from the operator keys (api/console/session.py)."""
    console_sign_in_limit: int = 10
    """RESV_CONSOLE_SIGN_IN_LIMIT: console sign-in attempts (POST
    /console/sign-in) per minute per client address, per server process;
    more get a 429 page. 0: no limit. The address is the one uvicorn reports
    (behind a proxy, from X-Forwarded-For only when the proxy is in
    FORWARDED_ALLOW_IPS)."""
    bench_echo: bool = False
    """RESV_BENCH_ECHO=1: adds /bench/echo routes (GET and POST) that go
    through the same middleware but do no engine work (`make bench-api`'s
    in-app echo rows). Off in production."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ApiSettings:
        env = os.environ if env is None else env
        return cls(
            engine=EngineSettings.from_env(dict(env)),
            api_keys=parse_api_keys(env.get("RESV_API_KEYS", "")),
            insecure_no_auth=_flag(env, "RESV_INSECURE_NO_AUTH"),
            availability_ttl_ms=_int(env, "RESV_AVAILABILITY_TTL_MS", 500, low=0),
            rate_limit=_int(env, "RESV_RATE_LIMIT", None, low=1),
            database_url=env.get("DATABASE_URL") or None,
            max_body_bytes=_int(env, "RESV_MAX_BODY_BYTES", 16 * 1024, low=256),
            max_header_bytes=_int(env, "RESV_MAX_HEADER_BYTES", 16 * 1024, low=1024),
            header_timeout_s=_float(env, "RESV_HEADER_TIMEOUT_S", 5.0, low=0.1),
            body_timeout_s=_float(env, "RESV_BODY_TIMEOUT_S", 10.0, low=0.1),
            max_json_depth=_int(env, "RESV_MAX_JSON_DEPTH", 32, low=2),
            request_deadline_s=_float(env, "RESV_REQUEST_DEADLINE_S", 3.0, low=0.1),
            console_sign_in_limit=_int(env, "RESV_CONSOLE_SIGN_IN_LIMIT", 10, low=0),
            bench_echo=_flag(env, "RESV_BENCH_ECHO"),
            console_secret=Secret(env["RESV_CONSOLE_SECRET"]) if env.get("RESV_CONSOLE_SECRET") else None,
        )

    def check(self, *, needs_redis_url: bool = True) -> None:
        """Raises ValueError when the API must not start with these settings."""
        if not self.api_keys and not self.insecure_no_auth:
            raise ValueError(
                "no API key: set RESV_API_KEYS (e.g. operator:op-secret,client:web-secret), "
                "or RESV_INSECURE_NO_AUTH=1 to serve without authentication"
            )
        if self.console_secret is not None and len(self.console_secret.value) < 32:
            raise ValueError("RESV_CONSOLE_SECRET must be at least 32 characters")
        if needs_redis_url and not self.engine.redis_url:
            raise ValueError("no Redis: set REDIS_URL")


def parse_api_keys(raw: str) -> tuple[ApiKey, ...]:
    """`role:key[,role:key...]` -> keys. The error never repeats a key."""
    keys: list[ApiKey] = []
    for n, item in enumerate((part.strip() for part in raw.split(",")), start=1):
        if not item:
            continue
        role, sep, secret = item.partition(":")
        role = role.strip()
        if not sep or role not in ROLES:
            raise ValueError(f"RESV_API_KEYS item {n}: expected role:key with role one of {', '.join(ROLES)}")
        if not secret or any(c.isspace() or not c.isprintable() for c in secret):
            raise ValueError(f"RESV_API_KEYS item {n}: the key must be non-empty printable text without spaces")
        keys.append(ApiKey(role=role, secret=secret))
    return tuple(keys)


def _flag(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _int(env: Mapping[str, str], name: str, default: int | None, *, low: int) -> int | None:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None
    if value < low:
        raise ValueError(f"{name} must be at least {low}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, *, low: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None
    if value < low:
        raise ValueError(f"{name} must be at least {low}")
    return value
