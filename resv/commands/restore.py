"""`resv restore`: the command over resv.archiver.restore (how and its limit
are in that module); the replay runs on a private scratch server."""

from __future__ import annotations

import argparse
import asyncio
import sys


from resv.archiver.db import open_pool
from resv.archiver.restore import RestoreError, RestoreReport, restore
from resv.archiver.settings import ArchiverSettings
from resv.engine import LibraryVersionError
from resv.engine import open_client
from resv.engine.settings import Settings
from resv.scratch import scratch_server


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database-url", help="PostgreSQL URL (default: $DATABASE_URL)")
    parser.add_argument("--redis-url", help="the empty target Redis (default: $REDIS_URL)")


def run(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    redis_url = args.redis_url or settings.redis_url
    database_url = args.database_url or ArchiverSettings.from_env().database_url
    if not redis_url or not database_url:
        print("resv restore: needs REDIS_URL (the empty target) and DATABASE_URL (the audit)", file=sys.stderr)
        return 2
    try:
        report = asyncio.run(_run(redis_url, database_url, settings))
    except (RestoreError, LibraryVersionError) as exc:
        print(f"resv restore: {exc}", file=sys.stderr)
        return 2
    for m in report.mismatches[:50]:
        print(f"MISMATCH {m}")
    if report.mismatches:
        print(f"restore: the audit does not replay cleanly ({len(report.mismatches)} mismatches); nothing written")
        return 1
    print(f"restore: {report.events} archived events replayed, {report.keys} keys written "
          f"({report.expired_requests} expired idempotency records left out), deployment "
          f"{report.deployment_id} recorded. Now run: resv verify")
    return 0


async def _run(redis_url: str, database_url: str, settings: Settings) -> RestoreReport:
    target, settings = await open_client(redis_url, settings)  # a cluster's client on a cluster
    pool = await open_pool(database_url, max_size=1)
    try:
        return await restore(target, pool, settings.partitions, scratch_server=scratch_server,
                            idempotency_ttl_ms=settings.idempotency_ttl_ms)
    finally:
        await pool.close()
        await target.aclose()
