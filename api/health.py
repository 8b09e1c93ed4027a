"""Liveness (GET /health) and readiness (GET /ready), both without a key.

/ready answers "can this process commit": 200 when Redis answers PING, the
Lua library is loaded (FCALL_RO resv_version; a missing library is loaded
again, as the engine would on its next call), the engine state is not behind
the audit and the server keeps the durability profile's settings (the
guard's last check, engine.Engine.check_guard); else 503. Without the
operator key the body is only the status (a load balancer needs no key and
learns nothing else). With it, the body names each check `up`, `down` or
`not_configured`, the archiver's lag, and in `problems` why the engine
refuses calls (never a driver's message). `audit` (PostgreSQL, only when
DATABASE_URL is set: a connection and `SELECT 1`) is reported but does not
decide readiness, since commits need Redis alone.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from litestar import Controller, Request, Response, get
from litestar.openapi import ResponseSpec

from resv.api import decisions, docs, oplog
from resv.api.auth import PUBLIC, authorization_header
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

    @get("/ready", operation_id="getReadiness", opt={PUBLIC: True}, security=[{}, *docs.SECURED],
         responses={503: ResponseSpec(
             data_container=Readiness, generate_examples=False,
             description="Cannot commit: Redis or the Lua library is down, the engine state is behind "
                         "the audit or the server lost the durability profile's settings (`UNAVAILABLE`). "
                         "With the operator key `checks` names which and `problems` says why.")})
    async def ready(self, request: Request[Any, Any, Any]) -> Response[Readiness]:
        """Readiness: 200 when the process can commit (Redis and the Lua
        library answer, the state-loss guard and the durability check pass),
        else 503. Needs no key; with the operator key the body also names
        each check (`redis`, `library`, `state`, `durability`, `audit`), the
        archiver's lag and the refusal's `problems`. The audit being down
        does not fail readiness."""
        svc = services(request)
        checks = {"redis": await _check("redis", svc.engine.ping())}
        checks["library"] = await _check("library", svc.engine.library_ready()) if checks["redis"] == "up" else "down"
        refusal = svc.engine.refusal  # the guard's last check (engine.Engine.check_guard)
        checks["state"] = "down" if refusal is not None and refusal.state else "up"
        checks["durability"] = "down" if refusal is not None and refusal.durability else "up"
        ready = all(checks[c] == "up" for c in ("redis", "library", "state", "durability"))
        status = 200 if ready else 503
        caller = svc.keyring.identify(authorization_header(request.scope))
        if caller is None or caller.role != "operator":
            if ready:
                return decisions.json(Readiness(status="ready"), status)  # type: ignore[return-value]
            return decisions.json(Readiness(status="unavailable", error="UNAVAILABLE"), status)  # type: ignore[return-value]
        url = svc.settings.database_url
        checks["audit"] = await _check("audit", postgres_up(url)) if url else "not_configured"
        lag = await _archiver_lag(svc.audit) if checks["redis"] == "up" else None
        if not ready:
            return decisions.json(Readiness(status="unavailable", checks=checks, archiver_lag=lag,  # type: ignore[return-value,arg-type]
                                            problems=list(refusal.problems) if refusal else None,
                                            error="UNAVAILABLE"), status)
        return decisions.json(Readiness(status="ready", checks=checks, archiver_lag=lag), status)  # type: ignore[return-value,arg-type]


async def _archiver_lag(audit: AuditReader) -> ArchiverLag | None:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            per_partition = await audit.lag()
    except Exception as exc:
        log.warning("archiver lag unreadable", extra={"resv": {"error": f"{type(exc).__name__}: {exc}"}})
        return None
    return ArchiverLag(entries=int(sum(v["entries"] for v in per_partition.values())),
                       seconds=round(max((v["seconds"] for v in per_partition.values()), default=0.0), 3))
