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

from resv.archiver.lag import stream_lag
from resv.archiver.timeline import (
    MAX_LIMIT,
    AuditUnavailable,
    InvalidCursor,
    RequestDecisions,
    TimelineEvent,
    TimelinePage,
    request_decisions,
    resource_timeline,
)

__all__ = [
    "MAX_LIMIT",
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

    async def lag(self) -> dict[int, dict[str, float]]:
        """Per partition: entries not yet archived, and the age of the oldest."""
        return await stream_lag(self.redis, self.partitions)

    async def aclose(self) -> None:
        try:
            if self.pool is not None:
                await self.pool.close()
        finally:
            await self.redis.aclose()
