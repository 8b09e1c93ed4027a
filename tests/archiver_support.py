"""Fixtures and helpers of the archiver, timeline and verify tests.

Each test gets a fresh PostgreSQL database (CREATE DATABASE with a unique
name on the session server, migrated, dropped after) and the session's
Redis-compatible server, flushed (the `redis_url` fixture).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis

from resv.archiver.db import open_pool
from resv.archiver.drain import Archiver
from resv.archiver.metrics import ArchiverMetrics
from resv.archiver.migrate import apply_migrations
from resv.archiver.settings import ArchiverSettings
from resv.embedded_pg import EmbeddedPostgres
from resv.engine import Engine, ResourceSpec, Settings
from resv.engine.keys import stream_key

PARTITIONS = 16


def database_url_of(server_url: str, name: str) -> str:
    params = conninfo_to_dict(server_url)
    params["dbname"] = name
    return make_conninfo(**params)


@pytest.fixture
def empty_database(pg_server: Any) -> Iterator[str]:
    """A new, empty database on the session server; dropped after the test."""
    name = f"resv_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server.url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield database_url_of(pg_server.url, name)
    finally:
        with psycopg.connect(pg_server.url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def database_url(empty_database: str) -> str:
    """A fresh database with the schema applied."""
    await apply_migrations(empty_database)
    return empty_database


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[AsyncConnectionPool]:
    """A pool for the test's own queries (and the timeline)."""
    p = await open_pool(database_url, max_size=4)
    try:
        yield p
    finally:
        await p.close()


@pytest.fixture
async def engine(redis_url: str) -> AsyncIterator[Engine]:
    async with Engine(Settings(redis_url=redis_url, partitions=PARTITIONS)) as e:
        yield e


@pytest.fixture
async def make_archiver(database_url: str, engine: Engine) -> AsyncIterator[Any]:
    """Builds in-process archivers (each its own consumer, pool and metrics)."""
    made: list[tuple[Redis, AsyncConnectionPool]] = []

    async def make(consumer: str = "test-1", **settings: Any) -> Archiver:
        redis = Redis.from_url(engine.settings.redis_url, decode_responses=True)
        p = await open_pool(database_url, for_archiver=True, max_size=2, timeout=2.0)
        made.append((redis, p))
        config = ArchiverSettings(consumer=consumer, **settings)
        return Archiver(redis, p, PARTITIONS, config, ArchiverMetrics())

    yield make
    for redis, p in made:
        await p.close()
        await redis.aclose()


@pytest.fixture
async def own_postgres() -> AsyncIterator[EmbeddedPostgres]:
    """A PostgreSQL of this test's own, to stop and start again."""
    server = await asyncio.to_thread(EmbeddedPostgres)
    await asyncio.to_thread(server.start)
    try:
        await apply_migrations(server.url)
        yield server
    finally:
        await asyncio.to_thread(server.close)


# ------------------------------------------------------------------ helpers


async def create(engine: Engine, rid: str, capacity: int = 100, **rules: Any) -> None:
    d = await engine.create_resource(ResourceSpec(resource_id=rid, type="meetup", capacity=capacity, **rules))
    assert d.decision == "CONFIRMED", d


async def reserve_many(engine: Engine, resources: list[str], n: int, *, batch: int = 1000,
                       prefix: str = "c") -> list[Any]:
    """n reservations of 1 spread over the resources, `batch` at a time concurrently."""
    out = []
    for start in range(0, n, batch):
        out += await asyncio.gather(*[
            engine.reserve(resources[i % len(resources)], f"{prefix}{i}", 1, f"{prefix}-req-{i}")
            for i in range(start, min(n, start + batch))
        ])
    return out


async def stream_entries(redis: Redis, partitions: int = PARTITIONS) -> dict[tuple[int, str], dict[str, str]]:
    """Every entry now in the streams, by (partition, stream id)."""
    out = {}
    for p in range(partitions):
        for sid, fields in await redis.xrange(stream_key(p)):
            out[(p, sid)] = fields
    return out


async def entries_added(redis: Redis, partitions: int = PARTITIONS) -> dict[int, int]:
    """How many entries each stream ever received (XINFO STREAM entries-added)."""
    out = {}
    for p in range(partitions):
        try:
            out[p] = int((await redis.xinfo_stream(stream_key(p)))["entries-added"])
        except Exception:
            out[p] = 0
    return out


async def archived_rows(pool: AsyncConnectionPool) -> dict[tuple[int, str], dict[str, str]]:
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT partition, stream_id, fields FROM events")
        return {(p, sid): fields for p, sid, fields in await cur.fetchall()}


async def row_counts(pool: AsyncConnectionPool) -> dict[int, int]:
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT partition, count(*) FROM events GROUP BY partition")
        return dict(await cur.fetchall())


async def assert_archive_complete(redis: Redis, pool: AsyncConnectionPool,
                                  seen: dict[tuple[int, str], dict[str, str]]) -> None:
    """Every entry ever appended is one row: per partition the row count equals
    entries-added (the primary key rules out duplicates), and every entry seen
    in a stream along the way is there, verbatim."""
    rows = await archived_rows(pool)
    added = await entries_added(redis)
    counts = await row_counts(pool)
    missing = [k for k in seen if k not in rows]
    assert not missing, f"{len(missing)} entries missing, e.g. {missing[:3]}"
    assert {p: n for p, n in added.items() if n} == counts
    wrong = [k for k, fields in seen.items() if rows[k] != fields]
    assert not wrong, f"{len(wrong)} rows differ from their entry, e.g. {wrong[:3]}"
