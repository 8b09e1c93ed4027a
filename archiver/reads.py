"""The audit's read side, and the only part of the archiver the API uses.

An AuditReader owns what operator reads need: a Redis client of its own for
the streams' unarchived tails (so a slow operator read never takes a
connection from the commit path) and, when DATABASE_URL is set, a small
PostgreSQL pool. It answers a resource's timeline, a request's decisions and
the archiver's lag; the logic lives in timeline.py and lag.py, shared with
the `resv timeline` command.
"""

from __future__ import annotations

from redis.asyncio import Redis

from resv.archiver import listing
from resv.archiver.lag import stream_lag
from resv.engine import AuditMark
from resv.archiver.listing import NotifiedEntry, ResourceList, ResourceRow
from resv.archiver.streams import parse_id
from resv.archiver.timeline import (
    MAX_LIMIT,
    MAX_SLICE,
    OUTCOMES,
    AuditUnavailable,
    InvalidCursor,
    RequestDecisions,
    TimelineEvent,
    TimelineFilter,
    TimelinePage,
    TimelineSlice,
    request_decisions,
    resource_slice,
    resource_timeline,
)

__all__ = [
    "MAX_LIMIT",
    "MAX_SLICE",
    "OUTCOMES",
    "NotifiedEntry",
    "ResourceList",
    "ResourceRow",
    "TimelineFilter",
    "TimelineSlice",
    "parse_id",
    "AuditReader",
    "AuditUnavailable",
    "InvalidCursor",
    "RequestDecisions",
    "TimelineEvent",
    "TimelinePage",
]


class AuditReader:
    def __init__(self, redis: Redis, pool, partitions: int) -> None:
        self.redis = redis
        self.pool = pool
        """psycopg_pool.AsyncConnectionPool, or None without DATABASE_URL."""
        self.partitions = partitions

    @classmethod
    async def open(cls, redis_url: str, database_url: str | None, partitions: int,
                   *, timeout_s: float = 2.0) -> AuditReader:
        redis = Redis.from_url(redis_url, decode_responses=True, max_connections=8,
                               socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        pool = None
        if database_url:
            from resv.archiver.db import (
                open_pool,  # psycopg only when there is an audit
            )

            pool = await open_pool(database_url, max_size=4, timeout=timeout_s)
        return cls(redis, pool, partitions)

    @property
    def has_audit(self) -> bool:
        return self.pool is not None

    async def timeline(self, resource_id: str, *, after: str | None = None, limit: int = 100) -> TimelinePage:
        return await resource_timeline(self.redis, self.pool, resource_id, self.partitions,
                                       after=after, limit=limit)

    async def request_decisions(self, request_id: str, *, resource_id: str | None = None,
                                after: str | None = None, limit: int = 100) -> RequestDecisions:
        return await request_decisions(self.redis, self.pool, request_id, self.partitions,
                                       resource_id=resource_id, after=after, limit=limit)

    async def marks(self) -> dict[int, AuditMark]:
        """The audit marks the engine's state-loss guard compares with
        (archiver/marks.py). Needs DATABASE_URL."""
        from resv.archiver.marks import read_marks  # psycopg only when there is an audit

        return await read_marks(self.pool)

    async def timeline_slice(self, resource_id: str, *, after: str | None = None, before: str | None = None,
                             limit: int = 100, where: TimelineFilter = TimelineFilter()) -> TimelineSlice:
        """Keyset pages both ways over stream ids, filtered (the console)."""
        return await resource_slice(self.redis, self.pool, resource_id, self.partitions,
                                    after=after, before=before, limit=limit, where=where)

    async def resources(self, *, search: str | None = None, type_: str | None = None,
                        after: str | None = None, limit: int = 50) -> ResourceList | None:
        """The audit's resources projection; None without DATABASE_URL."""
        if self.pool is None:
            return None
        return await listing.resources(self.pool, search=search, type_=type_, after=after, limit=limit)

    async def notified_entries(self, resource_id: str, *, limit: int = 100) -> list[NotifiedEntry] | None:
        """Waiting-list entries NOTIFIED and not settled; None without DATABASE_URL."""
        if self.pool is None:
            return None
        return await listing.notified_entries(self.pool, resource_id, limit=limit)

    async def lag(self) -> dict[int, dict[str, float]]:
        """Per partition: entries not yet archived, and the age of the oldest."""
        return await stream_lag(self.redis, self.partitions)

    async def aclose(self) -> None:
        try:
            if self.pool is not None:
                await self.pool.close()
        finally:
            await self.redis.aclose()
