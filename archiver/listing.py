"""Lists over the audit's projections (migrations/0002_projections.sql), for
the operator console: resources, and the waiting-list entries notified but
not settled yet. PostgreSQL only; each row is as fresh as the archiver."""

from __future__ import annotations

from typing import Any

import msgspec
from psycopg_pool import AsyncConnectionPool

from resv.archiver.timeline import _fetch

MAX_RESOURCES = 200


class ResourceRow(msgspec.Struct, kw_only=True):
    resource_id: str
    resource_type: str | None
    state: str | None
    capacity: int | None
    reserved: int | None
    remaining: int | None
    version: int | None
    waiting: int
    """WAITING entries in the projection."""


class ResourceList(msgspec.Struct, kw_only=True):
    resources: list[ResourceRow]
    next: str | None
    """The last resource id of this page when there are more (pass as `after`)."""


def _like(text: str) -> str:
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


async def resources(pool: AsyncConnectionPool, *, search: str | None = None, type_: str | None = None,
                    after: str | None = None, limit: int = 50) -> ResourceList:
    """Resources by id, `limit` a page (keyset on the primary key); search
    matches part of the id, type_ the whole type."""
    limit = max(1, min(limit, MAX_RESOURCES))
    sql = ("SELECT r.resource_id, r.resource_type, r.state, r.capacity, r.reserved, r.remaining, r.version, "
           "(SELECT count(*) FROM waitlist_entries w WHERE w.resource_id = r.resource_id AND w.status = 'WAITING') "
           "FROM resources r WHERE true")
    args: list[Any] = []
    if search:
        sql += " AND r.resource_id ILIKE %s"
        args.append(_like(search))
    if type_:
        sql += " AND r.resource_type = %s"
        args.append(type_)
    if after:
        sql += " AND r.resource_id > %s"
        args.append(after)
    sql += " ORDER BY r.resource_id LIMIT %s"
    args.append(limit + 1)
    rows = await _fetch(pool, sql, tuple(args))
    found = [ResourceRow(resource_id=r[0], resource_type=r[1], state=r[2], capacity=r[3], reserved=r[4],
                         remaining=r[5], version=r[6], waiting=r[7]) for r in rows[:limit]]
    return ResourceList(resources=found, next=found[-1].resource_id if len(rows) > limit else None)


class NotifiedEntry(msgspec.Struct, kw_only=True):
    entry_id: str
    client_id: str | None
    quantity: int | None
    notified_at: str | None
    """ISO-8601 UTC."""


async def notified_entries(pool: AsyncConnectionPool, resource_id: str, *, limit: int = 100) -> list[NotifiedEntry]:
    """Entries told that capacity freed, who have neither reserved nor left,
    in the order they were told."""
    rows = await _fetch(
        pool,
        "SELECT entry_id, client_id, quantity, "
        "to_char(notified_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') "
        "FROM waitlist_entries WHERE resource_id = %s AND status = 'NOTIFIED' "
        "ORDER BY notified_at, entry_id LIMIT %s",
        (resource_id, limit),
    )
    return [NotifiedEntry(entry_id=r[0], client_id=r[1], quantity=r[2], notified_at=r[3]) for r in rows]
