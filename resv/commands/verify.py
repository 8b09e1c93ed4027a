"""`resv verify [--resource ID]`: the command over resv.archiver.verify (what
it compares is in that module); the replay runs on a private scratch server.
Exit status: 0 when nothing differs, 1 otherwise, 2 when the log cannot be
read (or on a usage error)."""

from __future__ import annotations

import argparse
import asyncio
import sys

import psycopg
from psycopg_pool import PoolTimeout
from redis.exceptions import RedisError

from resv.archiver.db import open_pool
from resv.archiver.settings import ArchiverSettings
from resv.archiver.verify import VerifyReport, verify
from resv.engine import BEHIND, PartitionsMismatch
from resv.engine import open_client
from resv.engine.settings import Settings
from resv.scratch import scratch_server

MAX_PRINTED = 200


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--resource", metavar="ID", help="verify this resource only")
    parser.add_argument("--database-url", help="PostgreSQL URL (default: $DATABASE_URL; none: the streams only)")
    parser.add_argument("--redis-url", help="live Redis URL (default: $REDIS_URL; none: PostgreSQL only, no state check)")


def run(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    redis_url = args.redis_url or settings.redis_url
    database_url = args.database_url or ArchiverSettings.from_env().database_url
    if not redis_url and not database_url:
        print("resv verify: set REDIS_URL and/or DATABASE_URL", file=sys.stderr)
        return 2
    try:
        report = asyncio.run(_run(redis_url, database_url, settings, args.resource))
    except PartitionsMismatch as exc:
        print(f"resv verify: {exc}", file=sys.stderr)
        return 2
    except (OSError, RedisError, psycopg.Error, PoolTimeout) as exc:
        print(f"resv verify: cannot read the log: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    for m in report.mismatches[:MAX_PRINTED]:
        print(f"MISMATCH {m}")
    if len(report.mismatches) > MAX_PRINTED:
        print(f"... and {len(report.mismatches) - MAX_PRINTED} more")
    scope = f"resource {args.resource}" if args.resource else f"{settings.partitions} partitions"
    print(f"verify: {report.events} events ({scope}), {report.calls} calls re-issued"
          + (f" ({report.inferred} with inputs inferred from their outcome)" if report.inferred else "")
          + (f", final state of {report.resources} resources compared" if redis_url else ", no live state compared")
          + (f", {len(report.skipped)} changed during verify (not compared)" if report.skipped else ""))
    if report.behind:
        print(f"{BEHIND} (partitions {', '.join(map(str, report.behind))})")
    print(f"{len(report.mismatches)} mismatches")
    return 0 if report.ok else 1


async def _run(redis_url: str | None, database_url: str | None, settings: Settings,
               resource_id: str | None) -> VerifyReport:
    live = None
    if redis_url:  # a cluster's client on a cluster
        live, settings = await open_client(redis_url, settings)
    pool = await open_pool(database_url, max_size=1) if database_url else None
    try:
        return await verify(live, pool, settings.partitions, resource_id=resource_id,
                            scratch_server=scratch_server,
                            idempotency_ttl_ms=settings.idempotency_ttl_ms)
    finally:
        if pool is not None:
            await pool.close()
        if live is not None:
            await live.aclose()
