"""PostgreSQL connection pools (psycopg_pool), opened without waiting: a
PostgreSQL that is down when the process starts only delays the audit."""

from __future__ import annotations

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from resv.archiver.store import CREATE_STAGING


async def open_pool(database_url: str, *, for_archiver: bool = False, max_size: int = 4,
                    timeout: float = 5.0, check: bool = True, autocommit: bool = False) -> AsyncConnectionPool:
    """A pool whose connections are checked before each use, so a PostgreSQL
    restart costs no failed request. for_archiver: each connection gets the
    archiver's staging tables (the schema must be migrated first).
    timeout: how long a caller waits for a connection before PoolTimeout.
    check=False: no check (one round trip less per use) for callers that
    retry a failed statement anyway (the notifier).
    autocommit=True: each statement its own transaction, one round trip
    instead of three (BEGIN, the statement, COMMIT), for callers whose every
    statement stands alone (the notifier)."""
    pool = AsyncConnectionPool(
        database_url,
        min_size=1,
        max_size=max_size,
        open=False,
        timeout=timeout,
        check=AsyncConnectionPool.check_connection if check else None,
        configure=_prepare_archiver_connection if for_archiver else None,
        name="resv-archiver" if for_archiver else "resv-audit",
        kwargs={"autocommit": True} if autocommit else None,
    )
    await pool.open(wait=False)
    return pool


async def _prepare_archiver_connection(conn: AsyncConnection) -> None:
    # A batch (up to partitions x RESV_ARCHIVER_BATCH rows) stays in memory:
    # temp_buffers must be set before the session's first temporary table.
    await conn.execute("SET temp_buffers = '256MB'")
    await conn.execute("SET work_mem = '64MB'")
    await conn.execute(CREATE_STAGING)
    await conn.commit()
