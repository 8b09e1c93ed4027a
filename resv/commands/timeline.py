"""`resv timeline RESOURCE_ID`: the resource's complete ordered history, one
line per event (or one JSON object per line with --json)."""

from __future__ import annotations

import argparse
import asyncio
import sys

import msgspec

from resv.archiver.db import open_pool
from resv.archiver.settings import ArchiverSettings
from resv.archiver.timeline import AuditUnavailable, TimelineEvent, resource_timeline
from resv.engine import open_client
from resv.engine.settings import Settings

PAGE = 1000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("resource_id")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--limit", type=int, default=None, help="print at most this many events")
    parser.add_argument("--database-url", help="PostgreSQL URL (default: $DATABASE_URL; none: the streams only)")
    parser.add_argument("--redis-url", help="Redis URL (default: $REDIS_URL)")


def run(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    redis_url = args.redis_url or settings.redis_url
    if not redis_url:
        print("resv timeline: set REDIS_URL or pass --redis-url", file=sys.stderr)
        return 2
    database_url = args.database_url or ArchiverSettings.from_env().database_url
    try:
        return asyncio.run(_print(args, redis_url, database_url, settings))
    except AuditUnavailable as exc:
        print(f"resv timeline: {exc}", file=sys.stderr)
        return 1


async def _print(args: argparse.Namespace, redis_url: str, database_url: str | None, settings: Settings) -> int:
    redis, settings = await open_client(redis_url, settings)  # a cluster's client on a cluster
    partitions = settings.partitions
    pool = await open_pool(database_url, max_size=1) if database_url else None
    out = sys.stdout
    try:
        after, printed = None, 0
        while True:
            page = await resource_timeline(redis, pool, args.resource_id, partitions, after=after, limit=PAGE)
            for event in page.events:
                if args.limit is not None and printed >= args.limit:
                    return 0
                out.write(msgspec.json.encode(event).decode() if args.json else format_line(event))
                out.write("\n")
                printed += 1
            if page.next is None:
                return 0
            after = page.next
    finally:
        if pool is not None:
            await pool.close()
        await redis.aclose()


def format_line(e: TimelineEvent) -> str:
    parts = [e.stream_id, e.server_time or "-", e.type or "-", e.decision or "-"]
    for name in ("code", "reason", "client_id", "quantity", "request_id", "reservation_id",
                 "entry_id", "version", "remaining", "actor"):
        value = getattr(e, name)
        if value not in (None, ""):
            parts.append(f"{name}={value}")
    return " ".join(parts)
