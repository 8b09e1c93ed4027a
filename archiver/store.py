"""The PostgreSQL side of archiving: one batch of stream entries, one
transaction, rows keyed by (partition, stream id).

Two ways in, same result:
- a fresh batch (entries read with XREADGROUP `>`, delivered for the first
  time, so not in PostgreSQL yet) is COPied straight into `events` and its
  confirmations into `reservations`, inside a savepoint;
- anything else (entries re-read after a failure, or taken over from a dead
  archiver, which may have committed them before dying), or a fresh batch
  whose COPY met an existing key, goes through a staging table: COPY has no
  ON CONFLICT, so `INSERT ... SELECT ... ON CONFLICT DO NOTHING` moves it.
Either way an entry is one row, however often it is delivered.

The projections are updated in the same transaction. Every projection
statement is idempotent (a row remembers the newest event applied; facts
merge), so applying a re-delivered entry again changes nothing.

Columns are parsed here, in Python, while PostgreSQL is busy with the
previous batch (see drain.py); `fields` keeps the entry verbatim.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import msgspec
from msgspec.structs import astuple
from psycopg import AsyncConnection, AsyncCursor, postgres
from psycopg.adapt import Dumper
from psycopg.errors import UniqueViolation
from psycopg.pq import Format

from resv.archiver.marks import record_marks
from resv.archiver.streams import Entry
from resv.engine.codes import EventType as E

Checkpoint = Callable[[str], None]

EVENTS_CHANNEL = "resv_events"
"""NOTIFYed in each transaction that archives new events: PostgreSQL
delivers it at commit, so a listener (the notifier) hears of a batch once it
is visible, never before."""
Row = tuple[Any, ...]

EVENT_COLUMNS = (
    "partition", "stream_id", "ms", "seq", "ts_us", "type", "decision", "code", "reason",
    "resource_id", "client_id", "quantity", "request_id", "reservation_id", "entry_id",
    "version", "remaining", "fields",
)
_P, _SID, _MS, _SEQ, _TS, _TYPE = 0, 1, 2, 3, 4, 5
_RESOURCE, _CLIENT, _QTY, _REQUEST, _RESERVATION, _VERSION, _REMAINING = 9, 10, 11, 12, 13, 15, 16

# Per connection (the pool's configure hook); emptied by every commit/rollback.
CREATE_STAGING = """
CREATE TEMP TABLE IF NOT EXISTS archiver_staging (
    partition integer, stream_id text, ms bigint, seq bigint, ts_us bigint, type text,
    decision text, code text, reason text, resource_id text, client_id text, quantity bigint,
    request_id text, reservation_id text, entry_id text, version bigint, remaining bigint,
    fields jsonb
) ON COMMIT DELETE ROWS
"""

# Binary COPY: no text escaping, integers sent as integers.
EVENT_TYPES = ("int4", "text", "int8", "int8", "int8", "text", "text", "text", "text", "text", "text",
               "int8", "text", "text", "text", "int8", "int8", "jsonb")
_COPY_STAGING = "COPY archiver_staging FROM STDIN (FORMAT BINARY)"
_COPY_EVENTS = f"COPY events ({', '.join(EVENT_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
_COPY_CONFIRMED = """COPY reservations (reservation_id, resource_id, partition, client_id, quantity,
                                        request_id, status, version, confirmed_us)
                     FROM STDIN (FORMAT BINARY)"""
_CONFIRMED_TYPES = ("text", "text", "int4", "text", "int8", "text", "text", "int8", "int8")

def sql(*types: E) -> str:
    """Event types as SQL literals, for `type = ...` and `type IN (...)`."""
    return ", ".join(f"'{t.value}'" for t in types)


_INSERT_EVENTS = f"""
INSERT INTO events ({', '.join(EVENT_COLUMNS)})
SELECT {', '.join(EVENT_COLUMNS)} FROM archiver_staging
ON CONFLICT (partition, stream_id) DO NOTHING
"""

# Rules: the newest RESOURCE_CREATED / RULES_CHANGED of each resource. A new
# row also takes that event's version and remaining (the next statement moves
# them on to the newest event).
_PROJECT_RULES = f"""
INSERT INTO resources AS r (resource_id, partition, resource_type, capacity, state, opens_at,
                            closes_at, waitlist_enabled, max_per_request, max_per_client,
                            notify_window_ms, rules_version, rules_ms, rules_seq, version, remaining,
                            created_at, updated_at, last_ms, last_seq)
SELECT DISTINCT ON (resource_id)
       resource_id, partition, fields->>'resource_type', resv_int(fields->>'capacity'),
       fields->>'state', resv_int(fields->>'opens_at'), resv_int(fields->>'closes_at'),
       fields->>'waitlist_enabled' = '1', resv_int(fields->>'max_per_request'),
       resv_int(fields->>'max_per_client'), resv_int(fields->>'notify_window_ms'),
       version, ms, seq, version, remaining,
       resv_time(min(ts_us) FILTER (WHERE type = {sql(E.RESOURCE_CREATED)}) OVER (PARTITION BY resource_id)),
       resv_time(ts_us), ms, seq
FROM archiver_staging
WHERE type IN ({sql(E.RESOURCE_CREATED, E.RULES_CHANGED)}) AND resource_id IS NOT NULL
ORDER BY resource_id, ms DESC, seq DESC
ON CONFLICT (resource_id) DO UPDATE SET
    resource_type = excluded.resource_type, capacity = excluded.capacity,
    state = excluded.state, opens_at = excluded.opens_at, closes_at = excluded.closes_at,
    waitlist_enabled = excluded.waitlist_enabled, max_per_request = excluded.max_per_request,
    max_per_client = excluded.max_per_client, notify_window_ms = excluded.notify_window_ms,
    rules_version = excluded.rules_version,
    rules_ms = excluded.rules_ms, rules_seq = excluded.rules_seq,
    created_at = coalesce(r.created_at, excluded.created_at), updated_at = excluded.updated_at
WHERE r.rules_ms IS NULL OR (r.rules_ms, r.rules_seq) < (excluded.rules_ms, excluded.rules_seq)
"""

# Version and remaining (so reserved): from the newest event carrying them.
_PROJECT_COUNTERS = """
INSERT INTO resources AS r (resource_id, partition, version, remaining, last_ms, last_seq)
SELECT DISTINCT ON (resource_id) resource_id, partition, version, remaining, ms, seq
FROM archiver_staging
WHERE resource_id IS NOT NULL AND version IS NOT NULL AND remaining IS NOT NULL
ORDER BY resource_id, ms DESC, seq DESC
ON CONFLICT (resource_id) DO UPDATE SET
    version = excluded.version, remaining = excluded.remaining,
    last_ms = excluded.last_ms, last_seq = excluded.last_seq
WHERE (r.last_ms, r.last_seq) < (excluded.last_ms, excluded.last_seq)
"""

# A reservation is confirmed once and cancelled at most once: the two facts
# merge in either order (a cancellation carries the reservation's fields).
_PROJECT_CONFIRMED = f"""
INSERT INTO reservations AS b (reservation_id, resource_id, partition, client_id, quantity,
                               request_id, status, version, confirmed_us)
SELECT DISTINCT ON (reservation_id) reservation_id, resource_id, partition, client_id, quantity,
       request_id, 'CONFIRMED', version, ts_us
FROM archiver_staging
WHERE type = {sql(E.RESERVATION_CONFIRMED)} AND reservation_id IS NOT NULL AND resource_id IS NOT NULL
ORDER BY reservation_id, ms, seq
ON CONFLICT (reservation_id) DO UPDATE SET version = excluded.version
WHERE b.version IS NULL
"""

_PROJECT_CANCELLED = f"""
INSERT INTO reservations AS b (reservation_id, resource_id, partition, client_id, quantity,
                               request_id, status, confirmed_us, cancelled_us)
SELECT DISTINCT ON (reservation_id) reservation_id, resource_id, partition, client_id, quantity,
       request_id, 'CANCELLED', resv_int(fields->>'confirmed_at'), ts_us
FROM archiver_staging
WHERE type = {sql(E.RESERVATION_CANCELLED)} AND reservation_id IS NOT NULL AND resource_id IS NOT NULL
ORDER BY reservation_id, ms, seq
ON CONFLICT (reservation_id) DO UPDATE SET status = 'CANCELLED', cancelled_us = excluded.cancelled_us
WHERE b.status <> 'CANCELLED'
"""

# Waiting-list entries: status from the newest event; each time from the
# event that sets it (or from the entry fields a WAITLIST_LEFT carries).
_PROJECT_WAITLIST = f"""
INSERT INTO waitlist_entries AS w (entry_id, resource_id, partition, client_id, quantity, status,
                                   reservation_id, joined_at, notified_at, fulfilled_at,
                                   left_at, expires_at, expired_at, last_ms, last_seq)
SELECT DISTINCT ON (entry_id)
       entry_id, resource_id, partition, client_id, quantity,
       CASE type WHEN {sql(E.WAITLIST_JOINED)} THEN 'WAITING' WHEN {sql(E.WAITLIST_NOTIFIED)} THEN 'NOTIFIED'
                 WHEN {sql(E.WAITLIST_FULFILLED)} THEN 'FULFILLED' WHEN {sql(E.WAITLIST_EXPIRED)} THEN 'EXPIRED'
                 ELSE 'LEFT' END,
       max(reservation_id) OVER e,
       resv_time(min(resv_int(fields->>'joined_at')) OVER e),
       resv_time(min(coalesce(resv_int(fields->>'notified_at'),
                              CASE WHEN type = {sql(E.WAITLIST_NOTIFIED)} THEN ts_us END)) OVER e),
       resv_time(min(ts_us) FILTER (WHERE type = {sql(E.WAITLIST_FULFILLED)}) OVER e),
       resv_time(min(ts_us) FILTER (WHERE type = {sql(E.WAITLIST_LEFT)}) OVER e),
       resv_time(max(resv_int(fields->>'expires_at')) FILTER (WHERE type = {sql(E.WAITLIST_NOTIFIED)}) OVER e),
       resv_time(min(ts_us) FILTER (WHERE type = {sql(E.WAITLIST_EXPIRED)}) OVER e),
       ms, seq
FROM archiver_staging
WHERE type IN ({sql(E.WAITLIST_JOINED, E.WAITLIST_NOTIFIED, E.WAITLIST_FULFILLED, E.WAITLIST_LEFT,
                    E.WAITLIST_EXPIRED)})
  AND entry_id IS NOT NULL AND resource_id IS NOT NULL
WINDOW e AS (PARTITION BY entry_id)
ORDER BY entry_id, ms DESC, seq DESC
ON CONFLICT (entry_id) DO UPDATE SET
    status = CASE WHEN (excluded.last_ms, excluded.last_seq) > (w.last_ms, w.last_seq)
                  THEN excluded.status ELSE w.status END,
    last_seq = CASE WHEN (excluded.last_ms, excluded.last_seq) > (w.last_ms, w.last_seq)
                    THEN excluded.last_seq ELSE w.last_seq END,
    last_ms = greatest(w.last_ms, excluded.last_ms),
    reservation_id = coalesce(w.reservation_id, excluded.reservation_id),
    joined_at = coalesce(w.joined_at, excluded.joined_at),
    notified_at = coalesce(w.notified_at, excluded.notified_at),
    fulfilled_at = coalesce(w.fulfilled_at, excluded.fulfilled_at),
    left_at = coalesce(w.left_at, excluded.left_at),
    expires_at = coalesce(w.expires_at, excluded.expires_at),
    expired_at = coalesce(w.expired_at, excluded.expired_at)
"""

_PROJECTIONS = (_PROJECT_RULES, _PROJECT_COUNTERS, _PROJECT_CANCELLED, _PROJECT_WAITLIST)
_PROJECTED_TYPES = frozenset({
    E.RESOURCE_CREATED, E.RULES_CHANGED, E.RESERVATION_CANCELLED,
    E.WAITLIST_JOINED, E.WAITLIST_NOTIFIED, E.WAITLIST_FULFILLED, E.WAITLIST_LEFT, E.WAITLIST_EXPIRED,
})

_encode = msgspec.json.Encoder().encode
BigInt = Annotated[int, msgspec.Meta(ge=-(2**63) + 1, le=2**63 - 1)]


class Columns(msgspec.Struct):
    """The columns parsed from an entry's fields, in EVENT_COLUMNS order
    (from ts to remaining). Numbers are decimal strings in the stream."""

    ts: BigInt | None = None
    type: str | None = None
    decision: str | None = None
    code: str | None = None
    reason: str | None = None
    resource_id: str | None = None
    client_id: str | None = None
    quantity: BigInt | None = None
    request_id: str | None = None
    reservation_id: str | None = None
    entry_id: str | None = None
    version: BigInt | None = None
    remaining: BigInt | None = None


_NUMBERS = frozenset({"ts", "quantity", "version", "remaining"})


def columns(fields: dict[str, str]) -> tuple[Any, ...]:
    """The Columns of an entry, as a tuple; a number that is not one (an odd manual entry)
    becomes NULL, its field is kept verbatim anyway."""
    try:
        return astuple(msgspec.convert(fields, Columns, strict=False))
    except msgspec.ValidationError:
        return tuple(parse_int(fields.get(name)) if name in _NUMBERS else fields.get(name)
                     for name in Columns.__struct_fields__)


def parse_int(value: str | None) -> int | None:
    """A numeric field's value, None when absent or not an integer in the
    range of bigint."""
    try:
        return msgspec.convert(value, BigInt | None, strict=False)
    except msgspec.ValidationError:
        return None


def event_rows(batch: dict[int, list[Entry]]) -> list[Row]:
    """The rows of a batch (EVENT_COLUMNS), one per distinct (partition,
    stream id), in stream order per partition. Entries without fields
    (deleted since delivery) have nothing to keep.

    PostgreSQL text and jsonb refuse NUL, which no Lua-written field holds;
    a manual entry with one gets U+FFFD instead of failing its batch forever."""
    rows: list[Row] = []
    append, encode, parse = rows.append, _encode, columns
    for partition, entries in batch.items():
        seen: set[str] = set()
        for stream_id, f in entries:
            if not f or stream_id in seen:
                continue
            seen.add(stream_id)
            js = encode(f)
            if b"\\u0000" in js:
                f = {k.replace("\x00", "\ufffd"): v.replace("\x00", "\ufffd") for k, v in f.items()}
                js = encode(f)
            ms, _, seq = stream_id.partition("-")
            append((partition, stream_id, int(ms), int(seq or 0)) + parse(f) + (js,))
    return rows


def _confirmed_rows(rows: list[Row]) -> list[Row]:
    return [
        (r[_RESERVATION], r[_RESOURCE], r[_P], r[_CLIENT], r[_QTY], r[_REQUEST], "CONFIRMED",
         r[_VERSION], r[_TS])
        for r in rows
        if r[_TYPE] == E.RESERVATION_CONFIRMED and r[_RESERVATION] and r[_RESOURCE]
    ]


def _projection_rows(rows: list[Row]) -> list[Row]:
    """What the projections other than confirmations need: the events that
    change rules, cancellations and waiting-list entries, plus each
    resource's newest event carrying version and remaining."""
    picked: dict[tuple[int, str], Row] = {}
    newest: dict[str, Row] = {}
    for r in rows:
        if r[_TYPE] in _PROJECTED_TYPES:
            picked[(r[_P], r[_SID])] = r
        if r[_RESOURCE] and r[_VERSION] is not None and r[_REMAINING] is not None:
            last = newest.get(r[_RESOURCE])
            if last is None or (r[_MS], r[_SEQ]) > (last[_MS], last[_SEQ]):
                newest[r[_RESOURCE]] = r
    for r in newest.values():
        picked[(r[_P], r[_SID])] = r
    return list(picked.values())


class _JsonTextDumper(Dumper):
    """`fields` arrive already encoded (msgspec, in event_rows): binary jsonb
    is a version byte and the JSON text."""

    format = Format.BINARY
    oid = postgres.types["jsonb"].oid

    def dump(self, obj: bytes) -> bytes:
        return b"\x01" + obj


async def _copy(cur: AsyncCursor, statement: str, types: tuple[str, ...], rows: list[Row]) -> None:
    async with cur.copy(statement) as copy:
        copy.set_types(list(types))
        for row in rows:
            await copy.write_row(row)


async def store_rows(conn: AsyncConnection, rows: list[Row], checkpoint: Checkpoint, *, fresh: bool,
                     deployment_id: str | None = None) -> int:
    """Writes the rows and their projections in one transaction; returns how
    many rows were new. Committed when it returns; rolled back if it raises.
    fresh: no entry of the batch was ever delivered before (see above).
    The partitions' archived marks (archiver/marks.py) move in the same
    transaction, under `deployment_id`."""
    async with conn.transaction(), conn.cursor() as cur:
        cur.adapters.register_dumper(None, _JsonTextDumper)
        inserted = await _copy_fresh(conn, cur, rows) if fresh else None
        if inserted is None:
            await _copy(cur, _COPY_STAGING, EVENT_TYPES, rows)
            checkpoint("before_insert")
            await cur.execute(_INSERT_EVENTS)
            inserted = cur.rowcount
            if inserted:
                await cur.execute(_PROJECT_CONFIRMED)
        else:
            checkpoint("before_insert")
            await _copy(cur, _COPY_STAGING, EVENT_TYPES, _projection_rows(rows))
        if inserted:  # else every entry was archived before, projections included
            for statement in _PROJECTIONS:
                await cur.execute(statement)
            await cur.execute(f"NOTIFY {EVENTS_CHANNEL}")
        await record_marks(conn, rows, deployment_id)
        checkpoint("before_commit")
    return inserted


async def _copy_fresh(conn: AsyncConnection, cur: AsyncCursor, rows: list[Row]) -> int | None:
    """The fast way in; None (and nothing written) if a key already exists."""
    try:
        async with conn.transaction():  # a savepoint
            await _copy(cur, _COPY_EVENTS, EVENT_TYPES, rows)
            await _copy(cur, _COPY_CONFIRMED, _CONFIRMED_TYPES, _confirmed_rows(rows))
    except UniqueViolation:
        return None
    return len(rows)


def count_entries(batch: dict[int, list[Entry]]) -> int:
    return sum(len(entries) for entries in batch.values())
