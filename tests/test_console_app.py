"""The console's wiring, without a browser: its middleware runs on its own
routes only, its secret, and sessions bound to the key they were opened with."""

from __future__ import annotations

import pytest
from litestar import Litestar

from resv.api.app import create_app
from resv.api.auth import KeyRing
from resv.api.console.session import ConsoleCookies, ConsoleSessions, SignInLimiter, console_secret
from resv.api.settings import ApiSettings
from resv.engine import Engine, Settings

KEYS = "operator:op-key-1,client:cl-key-1"


def app_with(env: dict[str, str]) -> Litestar:
    settings = ApiSettings.from_env({"RESV_API_KEYS": KEYS, **env})
    return create_app(settings, engine=Engine(Settings(redis_url="redis://127.0.0.1:1")))


def middleware_of(app: Litestar, path: str, method: str = "GET") -> list[type]:
    for route in app.routes:
        if route.path == path:
            for handler in route.route_handlers:
                if method in handler.http_methods:
                    return [getattr(m, "middleware", m) for m in handler.resolve_middleware()]
    raise AssertionError(f"no route {method} {path}")


def test_console_middleware_runs_on_console_routes_only():
    app = app_with({})
    assert ConsoleCookies in middleware_of(app, "/console/resources/{resource_id:str}")
    assert ConsoleCookies in middleware_of(app, "/console/sign-in", "POST")
    for path, method in (("/reservations", "POST"), ("/availability", "GET"), ("/resources", "POST")):
        assert ConsoleCookies not in middleware_of(app, path, method)
    assert app.csrf_config is None  # no app-wide CSRF check on the API's routes


def test_the_sign_in_limit_runs_on_the_sign_in_controller_only():
    app = app_with({})
    assert SignInLimiter in middleware_of(app, "/console/sign-in", "POST")
    assert SignInLimiter in middleware_of(app, "/console/sign-in", "GET")  # mounted there, counts POSTs only
    for path, method in (("/reservations", "POST"), ("/availability", "GET"), ("/console/sign-out", "POST"),
                         ("/console/resources/{resource_id:str}", "GET"), ("/console/webhooks", "GET")):
        assert SignInLimiter not in middleware_of(app, path, method)
    assert SignInLimiter not in middleware_of(app_with({"RESV_CONSOLE_SIGN_IN_LIMIT": "0"}), "/console/sign-in", "POST")
    assert ApiSettings.from_env({"RESV_API_KEYS": KEYS}).console_sign_in_limit == 10
    with pytest.raises(ValueError, match="RESV_CONSOLE_SIGN_IN_LIMIT"):
        ApiSettings.from_env({"RESV_API_KEYS": KEYS, "RESV_CONSOLE_SIGN_IN_LIMIT": "-1"})


def test_no_operator_key_no_console():
    settings = ApiSettings.from_env({"RESV_API_KEYS": "client:cl-key-1"})
    app = create_app(settings, engine=Engine(Settings(redis_url="redis://127.0.0.1:1")))
    assert not [r for r in app.routes if r.path.startswith("/console")]


def test_the_secret_is_shared_by_workers_and_follows_the_operator_keys():
    one = ApiSettings.from_env({"RESV_API_KEYS": KEYS})
    assert console_secret(one) == console_secret(ApiSettings.from_env({"RESV_API_KEYS": KEYS}))
    rotated = ApiSettings.from_env({"RESV_API_KEYS": "operator:op-key-2,client:cl-key-1"})
    assert console_secret(rotated) != console_secret(one)
    assert len(console_secret(one)) == 32
    chosen = ApiSettings.from_env({"RESV_API_KEYS": KEYS, "RESV_CONSOLE_SECRET": "s" * 32})
    assert console_secret(chosen) not in (console_secret(one), None)
    assert "s" * 32 not in repr(chosen)
    with pytest.raises(ValueError, match="RESV_CONSOLE_SECRET"):
        ApiSettings.from_env({"RESV_API_KEYS": KEYS, "RESV_CONSOLE_SECRET": "short"}).check()


def test_a_session_holds_no_key_and_ends_with_its_key():
    settings = ApiSettings.from_env({"RESV_API_KEYS": KEYS})
    sessions = ConsoleSessions(KeyRing(settings.api_keys), console_secret(settings))
    assert sessions.sign_in("cl-key-1") is None and sessions.sign_in("nope") is None
    assert sessions.sign_in("op key") is None
    session = sessions.sign_in("op-key-1")
    assert session["key_id"] == "operator#1" and "op-key-1" not in repr(session)
    assert sessions.principal(session).key_id == "operator#1"
    assert sessions.principal({**session, "fp": "0" * 32}) is None
    assert sessions.principal({"key_id": "client#2", "fp": session["fp"]}) is None
    other = ApiSettings.from_env({"RESV_API_KEYS": "operator:op-key-9"})
    assert ConsoleSessions(KeyRing(other.api_keys), console_secret(other)).principal(session) is None
