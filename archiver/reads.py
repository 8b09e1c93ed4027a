"""The audit's read side, and the only part of the archiver the API uses.

An AuditReader owns what operator reads need: a Redis client of its own for
the streams' unarchived tails (so a slow operator read never takes a
connection from the commit path; on a Redis Cluster, redis-py's cluster
client, which finds each partition's primary: engine.open_client) and, when
DATABASE_URL is set, a small PostgreSQL pool. It answers a resource's
timeline, a request's decisions and the archiver's lag; the logic lives
in timeline.py and lag.py, shared with the `resv timeline` command.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from resv.archiver import listing
from resv.archiver.lag import stream_lag
from resv.engine import AuditMark, Settings, open_client
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


Streams = Redis | RedisCluster
Connect = Callable[[], Awaitable[tuple[Streams, int]]]


class AuditReader:
    def __init__(self, redis: Streams | None, pool, partitions: int, *, connect: Connect | None = None) -> None:
        self._redis = redis
        self.pool = pool
        """psycopg_pool.AsyncConnectionPool, or None without DATABASE_URL."""
        self.partitions = partitions
        """RESV_PARTITIONS as the engine takes it (on a cluster its default
        when unset: Settings.for_cluster); known once the client is open."""
        self._connect = connect
        self._connecting = asyncio.Lock()

    @classmethod
    async def open(cls, redis_url: str, database_url: str | None, settings: Settings,
                   *, timeout_s: float = 2.0) -> AuditReader:
        """settings: the engine's (RESV_REDIS_CLUSTER, RESV_PARTITIONS). The
        Redis client is the one open_client picks: a cluster's client on a
        cluster, with the cluster's partition default. A server that does not
        answer now is asked again at the first read (the API serves 503 until
        Redis is back)."""
        async def connect() -> tuple[Streams, int]:
            redis, taken = await open_client(redis_url, settings, max_connections=8,
                                             socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
            return redis, taken.partitions

        pool = None
        if database_url:
            from resv.archiver.db import (
                open_pool,  # psycopg only when there is an audit
            )

            pool = await open_pool(database_url, max_size=4, timeout=timeout_s)
        reader = cls(None, pool, settings.partitions, connect=connect)
        try:
            await reader.streams()
        except Exception:  # noqa: BLE001 - Redis down at start: the first read tries again
            pass
        return reader

    async def streams(self) -> Streams:
        """The streams' client, opened on first use when it could not be at start."""
        if self._redis is not None:
            return self._redis
        if self._connect is None:
            raise RuntimeError("AuditReader without a Redis client")
        async with self._connecting:
            if self._redis is None:
                self._redis, self.partitions = await self._connect()
        return self._redis

    @property
    def has_audit(self) -> bool:
        return self.pool is not None

    async def timeline(self, resource_id: str, *, after: str | None = None, limit: int = 100) -> TimelinePage:
        return await resource_timeline(await self.streams(), self.pool, resource_id, self.partitions,
                                       after=after, limit=limit)

    async def request_decisions(self, request_id: str, *, resource_id: str | None = None,
                                after: str | None = None, limit: int = 100) -> RequestDecisions:
        return await request_decisions(await self.streams(), self.pool, request_id, self.partitions,
                                       resource_id=resource_id, after=after, limit=limit)

    async def marks(self) -> dict[int, AuditMark]:
        """The audit marks the engine's state-loss guard compares with
        (archiver/marks.py). Needs DATABASE_URL."""
        from resv.archiver.marks import read_marks  # psycopg only when there is an audit

        return await read_marks(self.pool)

    async def timeline_slice(self, resource_id: str, *, after: str | None = None, before: str | None = None,
                             limit: int = 100, where: TimelineFilter = TimelineFilter()) -> TimelineSlice:
        """Keyset pages both ways over stream ids, filtered (the console)."""
        return await resource_slice(await self.streams(), self.pool, resource_id, self.partitions,
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
        return await stream_lag(await self.streams(), self.partitions)

    async def aclose(self) -> None:
        try:
            if self.pool is not None:
                await self.pool.close()
        finally:
            if self._redis is not None:
                await self._redis.aclose()
