"""Liveness (GET /health, no key) and readiness (GET /ready, operator key).

Readiness checks, each within a short timeout: Redis answers PING; the Lua
library is loaded (FCALL_RO resv_version; a missing library is loaded again,
as the engine would on its next call); the engine state is not behind the
audit and the server keeps the durability profile's settings (the guard's
last check, engine.Engine.check_guard); PostgreSQL, only when DATABASE_URL is
set, accepts a connection and `SELECT 1`. The body names each check `up`,
`down` or `not_configured`; `problems` says, for operators (the route needs
an operator key), why the engine refuses calls, never a driver's message.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from litestar import Controller, Request, Response, get
from litestar.openapi import ResponseSpec

from resv.api import decisions, docs, oplog
from resv.api.auth import PUBLIC, operator_only
from resv.api.schemas import ArchiverLag, Health, Readiness
from resv.api.services import services
from resv.archiver.reads import AuditReader

log = logging.getLogger(oplog.LOGGER)

CHECK_TIMEOUT_S = 2.0


async def postgres_up(url: str) -> bool:
    import psycopg  # only when DATABASE_URL is set: the API runs without it

    async with await psycopg.AsyncConnection.connect(url, connect_timeout=int(CHECK_TIMEOUT_S)) as conn:
        await conn.execute("SELECT 1")
    return True


async def _check(name: str, probe: Any) -> str:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            return "up" if await probe else "down"
    except Exception as exc:
        log.warning("readiness check failed", extra={"resv": {"check": name, "error": f"{type(exc).__name__}: {exc}"}})
        return "down"


class HealthController(Controller):
    tags = ["operations"]

    @get("/health", operation_id="getHealth", opt={PUBLIC: True})
    async def health(self) -> Health:
        """Liveness: the process serves requests. Needs no key."""
        return Health()

    @get("/ready", operation_id="getReadiness", guards=[operator_only], security=docs.SECURED,
         responses={**docs.errors(403), 503: ResponseSpec(
             data_container=Readiness, generate_examples=False,
             description="A dependency is down: `checks` names it (`UNAVAILABLE`).")})
    async def ready(self, request: Request[Any, Any, Any]) -> Response[Readiness]:
        """Readiness: 200 when every dependency answers, else 503 naming the
        ones that do not."""
        svc = services(request)
        checks = {"redis": await _check("redis", svc.engine.ping())}
        checks["library"] = await _check("library", svc.engine.library_ready()) if checks["redis"] == "up" else "down"
        refusal = svc.engine.refusal  # the guard's last check (engine.Engine.check_guard)
        checks["state"] = "down" if refusal is not None and refusal.state else "up"
        checks["durability"] = "down" if refusal is not None and refusal.durability else "up"
        url = svc.settings.database_url
        checks["postgres"] = await _check("postgres", postgres_up(url)) if url else "not_configured"
        lag = await _archiver_lag(svc.audit) if checks["redis"] == "up" else None
        if "down" in checks.values():
            return decisions.json(Readiness(status="unavailable", checks=checks, archiver_lag=lag,  # type: ignore[return-value,arg-type]
                                            problems=list(refusal.problems) if refusal else None,
                                            error="UNAVAILABLE"), 503)
        return decisions.json(Readiness(status="ready", checks=checks, archiver_lag=lag), 200)  # type: ignore[return-value,arg-type]


async def _archiver_lag(audit: AuditReader) -> ArchiverLag | None:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            per_partition = await audit.lag()
    except Exception as exc:
        log.warning("archiver lag unreadable", extra={"resv": {"error": f"{type(exc).__name__}: {exc}"}})
        return None
    return ArchiverLag(entries=int(sum(v["entries"] for v in per_partition.values())),
                       seconds=round(max((v["seconds"] for v in per_partition.values()), default=0.0), 3))
