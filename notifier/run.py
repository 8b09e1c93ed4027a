"""`resv notifier`: the webhook delivery worker (needs DATABASE_URL).

Applies the migrations (like the archiver: whichever starts first), then
delivers until SIGTERM/SIGINT, which finish the attempts in flight. Several
may run against one database: they share the endpoints (worker.py).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from resv.archiver.db import open_pool
from resv.archiver.migrate import apply_migrations
from resv.notifier.settings import NotifierSettings
from resv.notifier.worker import Notifier

log = logging.getLogger("resv.notifier")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database-url", help="PostgreSQL URL (default: $DATABASE_URL)")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = NotifierSettings.from_env()
    database_url = args.database_url or settings.database_url
    if not database_url:
        print("resv notifier: set DATABASE_URL (or pass --database-url)", file=sys.stderr)
        return 2
    return asyncio.run(serve(database_url, settings))


async def serve(database_url: str, settings: NotifierSettings) -> int:
    pause = 0.5
    while True:
        try:
            for migration in await apply_migrations(database_url):
                log.info("notifier: applied migration %04d_%s", migration.version, migration.name)
            break
        except OSError as exc:  # psycopg.OperationalError is one
            log.warning("notifier: PostgreSQL unavailable (%s); retrying", type(exc).__name__)
        except Exception as exc:
            if type(exc).__module__.startswith("psycopg"):
                log.warning("notifier: PostgreSQL unavailable (%s); retrying", type(exc).__name__)
            else:
                raise
        await asyncio.sleep(pause)
        pause = min(5.0, pause * 2)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # Unchecked: every statement of the loop is retried after a failure, and
    # a check would cost a round trip per claim. Autocommit: each statement
    # of the notifier stands alone (worker.py).
    pool = await open_pool(database_url, max_size=4, timeout=5.0, check=False, autocommit=True)
    try:
        await Notifier(pool, settings, database_url=database_url).run(stop)
    finally:
        await pool.close()
    log.info("notifier: stopped")
    return 0
