"""The app factory: `create_app(settings=..., engine=...)`.

Each concern is wired by its own small function: routes, middleware,
exception handling, lifespan (which owns the Engine). Nothing here is
global: tests build apps with their own settings and engine.

Middleware, outermost first: the request middleware (times the request, checks
its key, answers what failed before a response started, counts it and
writes its operator log line: `api.middleware`), then the rate limiter when
RESV_RATE_LIMIT is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from litestar import Litestar, Request, Router
from litestar.datastructures import State
from litestar.middleware import DefineMiddleware
from litestar.middleware.rate_limit import RateLimitConfig
from litestar.types import ControllerRouterHandler, Middleware

from resv.api import bodies, docs, errors, metrics, oplog
from resv.api.auth import KeyRing, operator_only
from resv.api.availability import AvailabilityController
from resv.api.console import console, template_config
from resv.api.health import HealthController
from resv.api.middleware import RequestMiddleware
from resv.api.ops import OpsController
from resv.api.reservations import ReservationController
from resv.api.resources import ResourceController
from resv.api.services import Services
from resv.api.settings import ApiSettings
from resv.api.waitlist import WaitlistController
from resv.api.webhooks import WebhookController
from resv.archiver.reads import AuditReader
from resv.engine import AuditMarks, DurabilityError, Engine, EngineError, EngineUnavailable
from resv.notifier.manage import WebhookStore

log = logging.getLogger(oplog.LOGGER)


def create_app(settings: ApiSettings | None = None, engine: Engine | None = None) -> Litestar:
    """The API. `settings` default to the environment's; `engine` defaults to
    one built from `settings.engine` when the app starts. The app starts the
    engine (loads the Lua library) and closes it when it stops."""
    settings = settings if settings is not None else ApiSettings.from_env()
    settings.check(needs_redis_url=engine is None)
    # The operator console (/console): its own routers, session and CSRF
    # middleware; absent when no operator key could sign in.
    operator_console = console(settings, KeyRing(settings.api_keys))
    return Litestar(
        route_handlers=routes(settings) + (operator_console[0] if operator_console else []),
        template_config=template_config() if operator_console else None,
        state=State({"console_sessions": operator_console[1] if operator_console else None}),
        middleware=middleware(settings),
        exception_handlers={Exception: errors.handle_exception},
        lifespan=[lifespan(settings, engine)],
        on_startup=[docs.finish_document],
        openapi_config=docs.openapi_config(_version()),
        request_max_body_size=settings.max_body_bytes,
        request_class=bodies.request_class(settings.max_json_depth),
        debug=False,
        logging_config=None,
    )


def app_from_env() -> Litestar:
    """The factory `resv serve` gives uvicorn (`api.app:app_from_env`)."""
    app = create_app(ApiSettings.from_env())
    app.on_startup.append(_tune_process)
    app.on_shutdown.append(oplog.flush)  # before a server ends the process its own way
    return app


GC_YOUNG_THRESHOLD = 20_000
"""Net allocations between young collections (CPython's default: 700).
Each request awaiting Redis holds ~60 tracked objects, so 64 of them in
flight kept crossing 700: ~470 collections/s that found no garbage (requests
make no cycles) and took ~5% of the server's time under `make bench-api`."""


def _tune_process() -> None:
    """Server processes only. What start-up built lives as long as the
    process, so it leaves the cyclic GC's view (full collections then cost
    well under a millisecond instead of ~10 ms, a visible p99 stall), and
    young collections wait for GC_YOUNG_THRESHOLD allocations. Log records
    skip what the operator log does not use (the logging HOWTO's
    "Optimization" list): the caller's frame, thread and process names."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


def routes(settings: ApiSettings) -> list[ControllerRouterHandler]:
    handlers: list[ControllerRouterHandler] = [
        AvailabilityController,
        ReservationController,
        WaitlistController,
        ResourceController,
        HealthController,
        metrics.MetricsController,
        docs.assets_router(),
    ]
    # The archiver's audit routes (/ops/...): operator keys only, whatever
    # the controller itself declares.
    handlers.append(Router(path="/", route_handlers=[OpsController, WebhookController], guards=[operator_only]))
    if settings.bench_echo:
        from resv.api.bench import BenchEchoController

        handlers.append(BenchEchoController)
    return handlers


def middleware(settings: ApiSettings) -> list[Middleware]:
    stack: list[Middleware] = [
        DefineMiddleware(RequestMiddleware,
                         keyring=KeyRing(settings.api_keys, insecure_no_auth=settings.insecure_no_auth)),
    ]
    if settings.rate_limit:
        stack.append(rate_limit(settings.rate_limit).middleware)
    return stack


def rate_limit(per_second: int) -> RateLimitConfig:
    """Litestar's fixed-window limiter, keyed on the API key's id (never the
    key), in each process's memory: with N worker processes a key may get up
    to N times the limit. A shared (Redis) store would cost two round trips
    per request under the limiter's lock."""
    return RateLimitConfig(
        rate_limit=("second", per_second),
        identifier_for_request=_key_id,
        check_throttle_handler=_has_key,
        set_rate_limit_headers=False,
    )


def _key_id(request: Request[Any, Any, Any]) -> str:
    return request.scope["auth"].key_id


def _has_key(request: Request[Any, Any, Any]) -> bool:
    return request.scope.get("auth") is not None


def lifespan(settings: ApiSettings, engine: Engine | None) -> Callable[[Litestar], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def run(app: Litestar) -> AsyncIterator[None]:
        owned = engine if engine is not None else Engine(settings.engine)
        audit = None
        guard = None
        flusher = asyncio.create_task(metrics.flush_forever())
        try:
            # The audit's read side (/ops, /ready's lag, the guard's audit
            # marks): its own Redis client (a cluster's client on a cluster)
            # and, with DATABASE_URL, a pool opened without waiting (the API
            # commits without PostgreSQL).
            audit = await AuditReader.open(owned.url, settings.database_url, owned.settings)
            marks = audit.marks if audit.has_audit else None
            try:
                await prepare(owned, marks)  # DurabilityError, PartitionsMismatch stop the start-up
            except EngineUnavailable as exc:
                # `resv serve` checked Redis before starting; if it went away
                # since, serve anyway: requests answer 503 until it is back
                # and checked, and the engine loads the library then.
                log.warning("Redis unavailable at start-up", extra={"resv": {"error": str(exc)}})
                owned.refuse_until_checked()
            metrics.guard_checked(owned)
            guard = asyncio.create_task(owned.guard_forever(marks, on_check=metrics.guard_checked))
            webhooks = WebhookStore(audit.pool) if audit.pool is not None else None
            app.state.services = Services(settings, owned, audit, webhooks)
            yield
        finally:
            flusher.cancel()
            metrics.flush()
            if guard is not None:
                guard.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await guard
            if audit is not None:
                await audit.aclose()
            await owned.aclose()

    return run


async def prepare(engine: Engine, audit: AuditMarks | None, *, guard: bool = True) -> None:
    """Checks the durability profile (RESV_DURABILITY, docs/guarantees.md)
    before anything is written to the server, then loads the Lua library and
    checks the engine state against the audit (the state-loss guard; audit:
    None without DATABASE_URL). Raises DurabilityError when the strict
    profile cannot be kept (or the server's persistence settings cannot be
    read, e.g. CONFIG disabled), PartitionsMismatch when RESV_PARTITIONS is
    not the deployment's, EngineUnavailable when Redis cannot be reached.
    guard=False: the partition count only (nothing written but the library)."""
    try:
        await engine.check_durability()
    except (DurabilityError, EngineUnavailable):
        raise
    except EngineError as exc:
        if engine.settings.durability == "strict":
            raise DurabilityError(
                f"RESV_DURABILITY=strict: cannot read the server's persistence settings ({exc}); "
                "start with RESV_DURABILITY=relaxed to accept the loss window (docs/guarantees.md)."
            ) from exc
        log.warning("cannot read the server's persistence settings", extra={"resv": {"error": str(exc)}})
    await engine.check_partitions()
    await engine.start()
    if guard:
        await engine.check_guard(audit)


def _version() -> str:
    try:
        return version("resv")
    except PackageNotFoundError:
        return "0.0.0"
