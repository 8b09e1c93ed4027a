"""`resv start-over --yes [--reason TEXT]`: after the Redis data was lost, the
explicit decision NOT to restore it (resv.archiver.restore.start_over).

The engine then starts as a new deployment with no resources: every
reservation confirmed before the loss is forgotten by the engine (the audit
keeps it, and the decision: table start_overs). Nothing ever starts over
without this command. The target Redis must hold no engine state."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import socket
import sys

from redis.asyncio import Redis

from resv.archiver.db import open_pool
from resv.archiver.restore import RestoreError, start_over
from resv.archiver.settings import ArchiverSettings
from resv.engine.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--yes", action="store_true",
                        help="confirm: forget the lost state instead of restoring it (resv restore)")
    parser.add_argument("--reason", default="operator start-over", help="recorded in the audit")
    parser.add_argument("--database-url", help="PostgreSQL URL (default: $DATABASE_URL)")
    parser.add_argument("--redis-url", help="the target Redis (default: $REDIS_URL)")


def run(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    redis_url = args.redis_url or settings.redis_url
    database_url = args.database_url or ArchiverSettings.from_env().database_url
    if not redis_url or not database_url:
        print("resv start-over: needs REDIS_URL (the target) and DATABASE_URL (the audit)", file=sys.stderr)
        return 2
    if not args.yes:
        print("resv start-over: this forgets every resource and reservation the audit holds (the engine "
              "starts empty; the audit keeps the history and this decision). To rebuild the state "
              "instead, run `resv restore`. Pass --yes to start over.", file=sys.stderr)
        return 2
    try:
        decision = asyncio.run(_run(redis_url, database_url, settings.partitions, args.reason))
    except RestoreError as exc:
        print(f"resv start-over: {exc}", file=sys.stderr)
        return 2
    print(f"start-over: deployment {decision.deployment_id} replaces "
          f"{decision.replaced or 'the earlier one'}; recorded in the audit (start_overs); "
          f"streams continue past the archived ids of {len(decision.floors)} partitions")
    return 0


async def _run(redis_url: str, database_url: str, partitions: int, reason: str):
    target = Redis.from_url(redis_url, decode_responses=True)
    pool = await open_pool(database_url, max_size=1)
    try:
        return await start_over(target, pool, partitions, reason=reason,
                                decided_by=f"{getpass.getuser()}@{socket.gethostname()}")
    finally:
        await pool.close()
        await target.aclose()
