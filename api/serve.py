"""`resv serve --host H --port P [--workers N]`: the HTTP API under uvicorn.

Settings come from the environment (`api.settings.ApiSettings`); they are
checked here, before any worker starts, so a missing key or Redis URL stops
the command with a message instead of a crash loop. With N > 1 uvicorn runs
N worker processes on one socket, each building its app from the environment
(`api.app:app_from_env`); all state lives in Redis, and the request metrics
are shared through prometheus_client's multiprocess mode.

`serve` is the one way a server is started: `make bench-api` runs its bare
baseline app through it too, so both get exactly the same server settings.
(granian was measured beside uvicorn and not kept: docs/performance.md.)
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import sys
import tempfile

from resv.api import oplog
from resv.api.settings import ApiSettings
from resv.engine import DurabilityError, Engine, EngineUnavailable, LibraryVersionError, PartitionsMismatch

APP_FACTORY = "resv.api.app:app_from_env"
EDGE_PROTOCOL = "resv.api.edge:BoundedHttpToolsProtocol"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    parser.add_argument("--workers", type=int, default=1, help="server processes (default 1)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                        help="level of the operator log (default info: one line per request)")
    parser.add_argument("--insecure-no-auth", action="store_true",
                        help="serve without API keys, every caller an operator (local experiments only)")


def run(args: argparse.Namespace) -> int:
    if args.workers < 1:
        print("resv serve: --workers must be at least 1", file=sys.stderr)
        return 2
    if args.insecure_no_auth:
        os.environ["RESV_INSECURE_NO_AUTH"] = "1"  # the workers read the environment
    try:
        settings = ApiSettings.from_env()
        settings.check()
    except ValueError as exc:
        print(f"resv serve: {exc}", file=sys.stderr)
        return 2
    problem = asyncio.run(check_redis(settings))
    if problem:
        print(f"resv serve: {problem}", file=sys.stderr)
        return 2

    metrics_dir = None
    if args.workers > 1 and not os.environ.get(MULTIPROC_ENV):
        # Set before the workers start (and import prometheus_client): each
        # writes its samples there and /metrics sums them.
        metrics_dir = tempfile.mkdtemp(prefix="resv-metrics-")
        os.environ[MULTIPROC_ENV] = metrics_dir
    try:
        serve(APP_FACTORY, factory=True, host=args.host, port=args.port, workers=args.workers,
              log_level=args.log_level)
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


def serve(target: str, *, factory: bool, host: str, port: int, workers: int, log_level: str = "info",
          http: str = EDGE_PROTOCOL) -> None:
    """Runs the ASGI app `target` ("module:attribute") under uvicorn until
    it stops. `http` is the connection protocol: the bounded edge by default
    (api/edge.py), plain httptools for the benchmarks' bare app."""
    import uvicorn

    uvicorn.run(
        target,
        factory=factory,
        host=host,
        port=port,
        workers=workers,
        loop=_loop(),
        http=http,  # bounded heads, read deadlines (api/edge.py)
        log_config=oplog.log_config(log_level),
        access_log=False,  # the operator log has one line per request
        server_header=False,
        timeout_graceful_shutdown=10,
        # uvicorn kills a worker that does not answer its supervisor's ping
        # within 5 s (its default); a worker still starting on a loaded
        # machine (imports, templates, the engine's start) was killed and
        # restarted in a loop (seen at load 11 on 2 cores).
        timeout_worker_healthcheck=30,
    )


async def check_redis(settings: ApiSettings) -> str | None:
    """Before any worker starts: the server keeps the durability profile's
    promise (RESV_DURABILITY, docs/guarantees.md), RESV_PARTITIONS is the
    deployment's, and the library loads. Under the strict profile an
    unreachable server is refused too, since its settings cannot be checked.
    Each worker then checks the engine state against the audit."""
    from resv.api.app import prepare

    engine = Engine(settings.engine)
    try:
        await prepare(engine, None, guard=False)
    except (DurabilityError, LibraryVersionError, PartitionsMismatch) as exc:
        return str(exc)
    except EngineUnavailable as exc:
        if settings.engine.durability == "strict":
            return f"cannot reach Redis to check its durability settings ({exc})"
        logging.getLogger(oplog.LOGGER).warning("Redis unreachable at start-up; serving anyway")
    finally:
        await engine.aclose()
    return None


def _loop() -> str:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"

