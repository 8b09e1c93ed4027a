"""`resv archiver`: the archiver process.

Before anything is created in Redis, the engine state is compared with the
audit (engine/deployment.py): while it is behind (Redis lost archived
decisions) the archiver archives nothing, creates no stream and no group,
logs why, and checks again; `--once` exits 1 then. A RESV_PARTITIONS other
than the deployment's stops it at start (exit 2).

An APScheduler job drains every partition stream each interval (one run at a
time: max_instances=1, coalesce=True; a run drains until the streams are
empty, so an overrun just means the next run starts when it ends). Migrations
are applied before the first drain. SIGTERM/SIGINT finish the running batch,
then exit.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import sys
from datetime import UTC, datetime

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from prometheus_client import start_http_server
from redis.asyncio import Redis

from resv.archiver.db import open_pool
from resv.archiver.drain import Archiver
from resv.archiver.metrics import ArchiverMetrics
from resv.archiver.migrate import apply_migrations
from resv.archiver.settings import ArchiverSettings
from resv.archiver.sweep import Sweeper
from resv.engine import Engine, open_client
from resv.engine import PartitionsMismatch, StateError, check_partitions, read_records
from resv.engine.settings import Settings

log = logging.getLogger("resv.archiver")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database-url", help="PostgreSQL URL (default: $DATABASE_URL)")
    parser.add_argument("--redis-url", help="Redis URL (default: $REDIS_URL)")
    parser.add_argument("--once", action="store_true", help="drain until the streams are empty, then exit")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # one "Running job ... executed successfully" pair every interval is noise
    logging.getLogger("apscheduler.executors").setLevel(logging.WARNING)
    settings = ArchiverSettings.from_env()
    engine_settings = Settings.from_env()
    database_url = args.database_url or settings.database_url
    redis_url = args.redis_url or engine_settings.redis_url
    if not database_url or not redis_url:
        print("resv archiver: set DATABASE_URL and REDIS_URL (or pass --database-url/--redis-url)", file=sys.stderr)
        return 2
    return asyncio.run(serve(redis_url, database_url, engine_settings.partitions, settings, once=args.once,
                             engine_settings=engine_settings))


async def _open_redis(redis_url: str, settings: Settings, *, wait: bool = True) -> tuple[Redis, Settings]:
    """The streams' client: redis-py's cluster client on a Redis Cluster
    (RESV_REDIS_CLUSTER; auto asks the server, and waits for it to answer,
    unless `wait` is false: `--once` fails at once instead)."""
    while True:
        try:
            return await open_client(redis_url, settings, socket_timeout=10, socket_connect_timeout=2)  # type: ignore[return-value]
        except ValueError:
            raise
        except Exception as exc:
            if not wait:
                raise
            log.warning("archiver: Redis does not answer (%s: %s); asking again in 1 s", type(exc).__name__, exc)
            await asyncio.sleep(1.0)


def tune_gc() -> None:
    """A batch is some 10^5 short-lived, acyclic objects (entries, rows):
    with the default thresholds the cyclic collector runs every 700
    allocations and re-scans the batch in flight, a quarter of the archiver's
    CPU. Collect young objects every 50 000 allocations instead."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


async def serve(redis_url: str, database_url: str, partitions: int, settings: ArchiverSettings,
                *, once: bool = False, engine_settings: Settings | None = None) -> int:
    tune_gc()
    metrics = ArchiverMetrics()
    if settings.metrics_port:
        start_http_server(settings.metrics_port, registry=metrics.registry)
    engine_settings = engine_settings or Settings(partitions=partitions)
    redis, engine_settings = await _open_redis(redis_url, engine_settings, wait=not once)
    partitions = engine_settings.partitions  # a cluster's default when RESV_PARTITIONS is unset
    pool = None
    # the sweep's commits go through the engine, like every other commit
    engine = Engine(engine_settings, redis_url)
    sweeper = Sweeper(engine, partitions)

    async def prepare() -> None:
        nonlocal pool
        for migration in await apply_migrations(database_url):
            log.info("archiver: applied migration %04d_%s", migration.version, migration.name)
        if pool is None:
            pool = await open_pool(database_url, for_archiver=True, max_size=2)
            archiver.pool = pool

    archiver = Archiver(redis, None, partitions, settings, metrics, on_ready=prepare)  # type: ignore[arg-type]
    try:
        check_partitions((await read_records(redis, partitions))[0], partitions)
    except PartitionsMismatch as exc:
        print(f"resv archiver: {exc}", file=sys.stderr)
        await redis.aclose()
        return 2
    except Exception:  # Redis down: the drains retry, and check it then
        pass
    log.info("archiver %s: %d partitions, batch %d, every %.0f ms",
             settings.consumer, partitions, settings.batch, settings.interval_s * 1000)
    try:
        if once:
            try:
                n = await archiver.drain()
            except StateError as exc:
                log.error("archiver: refusing to archive (no stream or group created): %s", exc)
                return 1
            except Exception as exc:
                log.error("archiver: drain failed: %s: %s", type(exc).__name__, exc)
                return 1
            log.info("archiver: archived %d entries", n)
            if settings.sweep_interval_s > 0:
                log.info("archiver: expired %d waiting-list notifications", await sweeper.run_once())
            return 0
        await _schedule(archiver, settings, sweeper)
        return 0
    finally:
        if pool is not None:
            await pool.close()
        await engine.aclose()
        await redis.aclose()


async def _schedule(archiver: Archiver, settings: ArchiverSettings, sweeper: Sweeper) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    running = asyncio.Lock()

    async def job() -> None:
        if stop.is_set():
            return
        async with running:
            await archiver.run_once()

    logging.getLogger("apscheduler.scheduler").addFilter(_SkipOverrunWarnings())
    scheduler = AsyncIOScheduler(event_loop=loop)
    scheduler.add_job(
        job, "interval", seconds=settings.interval_s, id="archiver.drain",
        max_instances=1, coalesce=True, misfire_grace_time=None,
        next_run_time=datetime.now(UTC),
    )
    if settings.sweep_interval_s > 0:
        scheduler.add_job(
            sweeper.run_once, "interval", seconds=settings.sweep_interval_s, id="archiver.sweep",
            max_instances=1, coalesce=True, misfire_grace_time=None,
        )
    scheduler.start()
    await stop.wait()
    log.info("archiver: stopping")
    scheduler.shutdown(wait=False)
    async with running:  # the batch in flight completes (commit, ack, trim)
        pass


class _SkipOverrunWarnings(logging.Filter):
    """A drain longer than the interval is normal (it drains until empty);
    APScheduler would warn about each skipped run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "maximum number of running instances" not in record.getMessage()
