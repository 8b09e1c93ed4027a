"""The audit's marks: per partition, the highest stream id archived and the
deployment it was archived under (table archived_marks, updated in the
archiver's transaction), and the operators' start-overs (table start_overs).

The engine compares them with Redis (engine/deployment.py); verify and
restore replay only what follows the latest start-over's floors.
"""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection
from psycopg.errors import UndefinedTable
from psycopg_pool import AsyncConnectionPool

from resv.engine import AuditMark

_UPSERT = """
INSERT INTO archived_marks AS m (partition, stream_id, ms, seq, deployment_id)
VALUES (%s, %s, %s, %s, %s)
ON CONFLICT (partition) DO UPDATE
SET stream_id = excluded.stream_id, ms = excluded.ms, seq = excluded.seq,
    deployment_id = excluded.deployment_id, updated_at = now()
WHERE (excluded.ms, excluded.seq) > (m.ms, m.seq)
"""


async def read_marks(pool: AsyncConnectionPool) -> dict[int, AuditMark]:
    """The marks; for a database not migrated to them yet, the highest
    archived ids of `events` (deployment unknown); none without `events`."""
    async with pool.connection() as conn:
        try:
            cur = await conn.execute("SELECT partition, stream_id, deployment_id FROM archived_marks")
            return {p: AuditMark(sid, dep) for p, sid, dep in await cur.fetchall()}
        except UndefinedTable:
            await conn.rollback()
        try:
            cur = await conn.execute("SELECT DISTINCT ON (partition) partition, stream_id FROM events "
                                     "ORDER BY partition, ms DESC, seq DESC")
            return {p: AuditMark(sid, None) for p, sid in await cur.fetchall()}
        except UndefinedTable:
            await conn.rollback()
            return {}


async def record_marks(conn: AsyncConnection, rows: list[tuple[Any, ...]], deployment_id: str | None) -> None:
    """Within the batch's transaction: each partition's highest stream id of
    `rows` (event rows: partition, stream_id, ms, seq first), if higher."""
    best: dict[int, tuple[int, int, str]] = {}
    for row in rows:
        p, sid, ms, seq = row[0], row[1], row[2], row[3]
        current = best.get(p)
        if current is None or (ms, seq) > current[:2]:
            best[p] = (ms, seq, sid)
    if best:
        async with conn.cursor() as cur:
            await cur.executemany(_UPSERT, [(p, sid, ms, seq, deployment_id)
                                            for p, (ms, seq, sid) in sorted(best.items())])


async def floors(pool: AsyncConnectionPool) -> dict[int, str]:
    """The latest start-over's floor per partition ({} when none): events at
    or below it belong to an earlier deployment."""
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT floors FROM start_overs ORDER BY decided_at DESC LIMIT 1")
        row = await cur.fetchone()
    return {int(p): sid for p, sid in (row[0] if row else {}).items()}
