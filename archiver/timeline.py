"""A resource's complete, ordered history, and a request's place in it.

The history is PostgreSQL (what the archiver holds) merged with the stream
entries not archived yet, de-duplicated by stream id and ordered by it, so it
is complete however far the archiver lags; without PostgreSQL (pool None) it
is the stream alone, complete as long as no archiver trims it.

Consistency: per partition, first the archived mark M and the stream's last
id E are read (one MULTI), then the stream from max(cursor, M) to E, then
PostgreSQL up to E. Every entry below M was in PostgreSQL before M was read;
an entry at or above M is still in the stream, unless trimmed since, in which
case it was committed to PostgreSQL before it was trimmed, so before
PostgreSQL is read. Capping both at E keeps a later page from skipping an
entry archived out of order.

Used by the operator API (api/ops.py) and `resv timeline`.
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis

from resv.archiver.store import columns
from resv.archiver.streams import archived_marks, next_id, parse_id
from resv.engine.keys import partition_of, stream_key

MAX_LIMIT = 1000
_SCAN_CHUNK = 1000  # stream entries read per XRANGE while looking for a resource's
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class InvalidCursor(ValueError):
    """The `after` cursor is not one this module made."""


class AuditUnavailable(RuntimeError):
    """PostgreSQL could not be read: the history would not be complete."""


class TimelineEvent(msgspec.Struct, kw_only=True, omit_defaults=False):
    """One decision (or consequence) as logged. server_time is ISO-8601 UTC
    with microseconds; ts the same instant in microseconds since the epoch;
    actor who asked (an API key id such as `client#1`, an ops script's
    name; null when none was given); fields every field of the stream
    entry, verbatim (`lib`: the library release that decided it)."""

    stream_id: str
    partition: int
    server_time: str | None
    ts: int | None
    type: str | None
    decision: str | None
    code: str | None
    reason: str | None
    resource_id: str | None
    client_id: str | None
    quantity: int | None
    request_id: str | None
    reservation_id: str | None
    entry_id: str | None
    version: int | None
    remaining: int | None
    actor: str | None = None
    fields: dict[str, str]

    @property
    def order(self) -> tuple[int, int]:
        return parse_id(self.stream_id)


class TimelinePage(msgspec.Struct, kw_only=True):
    resource_id: str
    events: list[TimelineEvent]
    next: str | None
    """Cursor of the following page (pass as `after`); null at the end."""


class RequestDecision(msgspec.Struct, kw_only=True):
    partition: int
    stream_id: str
    position: int
    """1-based rank among the resource's decisions (consequence events such
    as WAITLIST_NOTIFIED, which decide nothing, are not counted)."""
    event: TimelineEvent


class RequestDecisions(msgspec.Struct, kw_only=True):
    request_id: str
    decisions: list[RequestDecision]
    next: str | None = None
    """Cursor of the following page (pass as `after`); null at the end."""


# ------------------------------------------------------------------ cursors


def encode_cursor(stream_id: str) -> str:
    return base64.urlsafe_b64encode(stream_id.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        ms, seq = parse_id(raw)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidCursor(f"invalid cursor {cursor!r}") from None
    if ms < 0 or seq < 0 or raw != f"{ms}-{seq}":
        raise InvalidCursor(f"invalid cursor {cursor!r}")
    return raw


# ------------------------------------------------------------- conversions


def iso_time(ts_us: int | None) -> str | None:
    if ts_us is None:
        return None
    return (_EPOCH + timedelta(microseconds=ts_us)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def event_from_entry(partition: int, stream_id: str, fields: dict[str, str]) -> TimelineEvent:
    """A stream entry, parsed as the archiver parses it into columns."""
    (ts, type_, decision, code, reason, resource_id, client_id, quantity, request_id,
     reservation_id, entry_id, version, remaining) = columns(fields)
    return TimelineEvent(
        stream_id=stream_id, partition=partition, server_time=iso_time(ts), ts=ts, type=type_,
        decision=decision, code=code, reason=reason, resource_id=resource_id,
        client_id=client_id, quantity=quantity, request_id=request_id,
        reservation_id=reservation_id, entry_id=entry_id, version=version,
        remaining=remaining, actor=fields.get("actor") or None, fields=dict(fields),
    )


EVENT_SELECT = """
SELECT partition, stream_id, ts_us, type, decision, code, reason, resource_id, client_id,
       quantity, request_id, reservation_id, entry_id, version, remaining, actor, fields
FROM events
"""
"""What event_from_row reads."""
_SELECT = EVENT_SELECT


def event_from_row(row: tuple[Any, ...]) -> TimelineEvent:
    (partition, stream_id, ts, type_, decision, code, reason, resource_id, client_id,
     quantity, request_id, reservation_id, entry_id, version, remaining, actor, fields) = row
    return TimelineEvent(
        stream_id=stream_id, partition=partition, server_time=iso_time(ts), ts=ts, type=type_,
        decision=decision, code=code, reason=reason, resource_id=resource_id,
        client_id=client_id, quantity=quantity, request_id=request_id,
        reservation_id=reservation_id, entry_id=entry_id, version=version,
        remaining=remaining, actor=actor, fields=fields,
    )


# ----------------------------------------------------------------- queries


async def resource_timeline(
    redis: Redis,
    pool: AsyncConnectionPool | None,
    resource_id: str,
    partitions: int,
    *,
    after: str | None = None,
    limit: int = 100,
) -> TimelinePage:
    """One page of the resource's history, oldest first. `after` is the
    `next` cursor of the previous page (None: from the start)."""
    limit = max(1, min(limit, MAX_LIMIT))
    after_id = decode_cursor(after) if after else "0-0"
    p = partition_of(resource_id, partitions)
    mark, end = (await archived_marks(redis, [p]))[p]
    if pool is None:
        mark = "0-0"  # no audit to read: the stream is all there is
    start = max(parse_id(next_id(after_id)), parse_id(mark))
    stream_events = await scan_stream(redis, p, f"{start[0]}-{start[1]}", end, limit + 1,
                                lambda f: f.get("resource_id") == resource_id)
    archived: list[TimelineEvent] = []
    if pool is not None and parse_id(after_id) < parse_id(end):
        archived = await _query(
            pool,
            _SELECT + "WHERE resource_id = %s AND (ms, seq) > (%s, %s) AND (ms, seq) <= (%s, %s) "
            "ORDER BY ms, seq LIMIT %s",
            (resource_id, *parse_id(after_id), *parse_id(end), limit + 1),
        )
    events = merge_events(archived, stream_events)
    more = len(events) > limit
    events = events[:limit]
    return TimelinePage(
        resource_id=resource_id,
        events=events,
        next=encode_cursor(events[-1].stream_id) if more else None,
    )


async def request_decisions(
    redis: Redis,
    pool: AsyncConnectionPool | None,
    request_id: str,
    partitions: int,
    *,
    resource_id: str | None = None,
    after: str | None = None,
    limit: int = 100,
) -> RequestDecisions:
    """Every event logged for this request id (its decision, the replays of
    a retried request, a rejected reuse), each with its place in its
    resource's order, oldest first, `limit` per page (`next` for the
    following one). Request ids are per resource: give resource_id to look
    in its partition only (otherwise every partition's unarchived tail is
    read).

    Cost: each partition's unarchived stream (all of it without PostgreSQL)
    is read once, counting every resource's decisions on the way, so a
    position costs nothing more; archived positions are index counts in
    PostgreSQL. Nothing is read again per returned decision."""
    limit = max(1, min(limit, MAX_LIMIT))
    after_key = _decode_place(after) if after else None
    parts = [partition_of(resource_id, partitions)] if resource_id else list(range(partitions))
    marks = await archived_marks(redis, parts)
    if pool is None:
        marks = {p: ("0-0", end) for p, (_, end) in marks.items()}

    found: dict[tuple[int, str], RequestDecision] = {}
    first_read: dict[int, tuple[int, int]] = {}
    for p, (mark, end) in marks.items():
        events, first = await _scan_for_request(redis, p, mark, end, request_id, resource_id)
        first_read[p] = first
        for event, position_in_tail in events:
            found[(p, event.stream_id)] = RequestDecision(partition=p, stream_id=event.stream_id,
                                                          position=position_in_tail, event=event)
    if pool is not None:
        await _archived_positions(pool, request_id, resource_id, marks, first_read, found)
    ordered = sorted(found.values(), key=lambda d: (d.event.order, d.partition))
    if after_key is not None:
        ordered = [d for d in ordered if (d.event.order, d.partition) > after_key]
    more = len(ordered) > limit
    page = ordered[:limit]
    return RequestDecisions(request_id=request_id, decisions=page,
                            next=_encode_place(page[-1]) if more else None)


async def _scan_for_request(redis: Redis, partition: int, mark: str, end: str, request_id: str,
                            resource_id: str | None) -> tuple[list[tuple[TimelineEvent, int]], tuple[int, int]]:
    """One pass over [mark, end]: the request's events, each with the number
    of its resource's decisions in the pass up to it (itself included), and
    the first stream id read (entries below it were trimmed, if any)."""
    out: list[tuple[TimelineEvent, int]] = []
    counts: dict[str, int] = {}
    first = parse_id(next_id(end)) if end != "0-0" else (0, 1)
    if end == "0-0" or parse_id(mark) > parse_id(end):
        return out, first
    key = stream_key(partition)
    cursor = mark
    while True:
        chunk = await redis.xrange(key, cursor, end, count=_SCAN_CHUNK)
        if chunk and cursor == mark:
            first = parse_id(chunk[0][0])
        for stream_id, fields in chunk:
            rid = fields.get("resource_id")
            if rid is None or (resource_id is not None and rid != resource_id):
                continue
            if "decision" in fields:
                counts[rid] = counts.get(rid, 0) + 1
            if fields.get("request_id") == request_id:
                out.append((event_from_entry(partition, stream_id, fields), counts.get(rid, 0)))
        if len(chunk) < _SCAN_CHUNK:
            return out, first
        cursor = next_id(chunk[-1][0])


async def _archived_positions(pool: AsyncConnectionPool, request_id: str, resource_id: str | None,
                              marks: dict[int, tuple[str, str]], first_read: dict[int, tuple[int, int]],
                              found: dict[tuple[int, str], RequestDecision]) -> None:
    """Adds the archived events of the request and completes every position
    with what PostgreSQL holds: decisions below the mark (an index count per
    resource) and, at or above it, archived decisions the stream no longer
    has (trimmed meanwhile)."""
    sql = _SELECT + "WHERE request_id = %s"
    args: tuple[Any, ...] = (request_id,)
    if resource_id:
        sql += " AND resource_id = %s"
        args += (resource_id,)
    archived = [e for e in await _query(pool, sql + " LIMIT %s", (*args, 10 * MAX_LIMIT))
                if e.partition in marks and e.order <= parse_id(marks[e.partition][1])]
    rows = await _fetch(
        pool,
        # each archived event's rank among its resource's decisions, by index
        "SELECT e.partition, e.stream_id, (SELECT count(*) FROM events d WHERE d.resource_id = e.resource_id "
        "AND d.decision IS NOT NULL AND (d.ms, d.seq) <= (e.ms, e.seq)) "
        "FROM events e WHERE e.partition = ANY(%s) AND e.stream_id = ANY(%s)",
        ([e.partition for e in archived], [e.stream_id for e in archived]),
    ) if archived else []
    archived_rank = {(p, sid): rank for p, sid, rank in rows}
    below_mark: dict[tuple[int, str], tuple[int, set[str]]] = {}
    for (p, sid), d in list(found.items()):
        rid = d.event.resource_id or ""
        if (p, rid) not in below_mark:
            mark, end = marks[p]
            m, e = parse_id(mark), parse_id(end)
            count_rows = await _fetch(
                pool,
                "SELECT count(*) FILTER (WHERE (ms, seq) < (%s, %s)), "
                "       array_agg(stream_id) FILTER (WHERE (ms, seq) >= (%s, %s)) "
                "FROM events WHERE resource_id = %s AND decision IS NOT NULL AND (ms, seq) <= (%s, %s)",
                (*m, *m, rid, *e),
            )
            below, recent = count_rows[0]
            below_mark[(p, rid)] = (below, set(recent or ()))
        below, recent = below_mark[(p, rid)]
        # archived at or above the mark but trimmed before the pass read them
        trimmed = sum(1 for x in recent if parse_id(x) < first_read[p] and parse_id(x) <= d.event.order)
        d.position = below + trimmed + d.position
    for e in archived:
        if (e.partition, e.stream_id) not in found:
            found[(e.partition, e.stream_id)] = RequestDecision(
                partition=e.partition, stream_id=e.stream_id,
                position=archived_rank.get((e.partition, e.stream_id), 0), event=e)
        else:
            found[(e.partition, e.stream_id)].event = e  # the archived row wins, as in merge_events


def _encode_place(d: RequestDecision) -> str:
    return encode_cursor(f"{d.partition}/{d.stream_id}")


def _decode_place(cursor: str) -> tuple[tuple[int, int], int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        part, _, sid = raw.partition("/")
        ms, seq = parse_id(sid)
        p = int(part)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidCursor(f"invalid cursor {cursor!r}") from None
    if p < 0 or ms < 0 or seq < 0 or raw != f"{p}/{ms}-{seq}":
        raise InvalidCursor(f"invalid cursor {cursor!r}")
    return (ms, seq), p


# ------------------------------------------------------------------ helpers


async def scan_stream(redis: Redis, partition: int, start: str, end: str, want: int | None, keep) -> list[TimelineEvent]:
    """Stream entries in [start, end] (end may be "+") whose fields satisfy
    `keep`, oldest first, stopping once `want` are found."""
    out: list[TimelineEvent] = []
    if end == "0-0" or (end != "+" and parse_id(start) > parse_id(end)):
        return out
    key = stream_key(partition)
    cursor = start
    while True:
        chunk = await redis.xrange(key, cursor, end, count=_SCAN_CHUNK)
        for stream_id, fields in chunk:
            if fields and keep(fields):
                out.append(event_from_entry(partition, stream_id, fields))
                if want is not None and len(out) >= want:
                    return out
        if len(chunk) < _SCAN_CHUNK:
            return out
        cursor = next_id(chunk[-1][0])


async def _query(pool: AsyncConnectionPool, sql: str, args: tuple[Any, ...]) -> list[TimelineEvent]:
    return [event_from_row(row) for row in await _fetch(pool, sql, args)]


async def _fetch(pool: AsyncConnectionPool, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    try:
        async with pool.connection() as conn:
            cur = await conn.execute(sql, args)
            return await cur.fetchall()
    except Exception as exc:
        raise AuditUnavailable(f"PostgreSQL: {type(exc).__name__}: {exc}") from exc


def merge_events(archived: list[TimelineEvent], tail: list[TimelineEvent]) -> list[TimelineEvent]:
    """Union by (partition, stream id), the archived row winning, in stream order."""
    by_id = {(e.partition, e.stream_id): e for e in tail}
    by_id.update({(e.partition, e.stream_id): e for e in archived})
    return sorted(by_id.values(), key=lambda e: (e.order, e.partition))


# ------------------------------------------------- filtered slices (console)

OUTCOMES = ("CONFIRMED", "REJECTED")
MAX_SLICE = 5000


class TimelineFilter(msgspec.Struct, frozen=True, kw_only=True):
    """Which of a resource's events to keep; None keeps all. outcome is the
    decision (CONFIRMED or REJECTED): consequences, which decide nothing,
    have none and drop out when it is given."""

    client_id: str | None = None
    request_id: str | None = None
    type: str | None = None
    outcome: str | None = None

    def keeps(self, fields: dict[str, str]) -> bool:
        return ((self.client_id is None or fields.get("client_id") == self.client_id)
                and (self.request_id is None or fields.get("request_id") == self.request_id)
                and (self.type is None or fields.get("type") == self.type)
                and (self.outcome is None or fields.get("decision") == self.outcome))

    def sql(self) -> tuple[str, tuple[Any, ...]]:
        """AND-clauses over the events table, and their arguments."""
        clauses, args = [], []
        for column in ("client_id", "request_id", "type"):
            value = getattr(self, column)
            if value is not None:
                clauses.append(f" AND {column} = %s")
                args.append(value)
        if self.outcome is not None:
            clauses.append(" AND decision = %s")
            args.append(self.outcome)
        return "".join(clauses), tuple(args)


class TimelineSlice(msgspec.Struct, kw_only=True):
    """Consecutive events of a resource, oldest first, and whether the
    history (as filtered) goes on before and after them."""

    resource_id: str
    events: list[TimelineEvent]
    has_older: bool
    has_newer: bool


async def resource_slice(
    redis: Redis,
    pool: AsyncConnectionPool | None,
    resource_id: str,
    partitions: int,
    *,
    after: str | None = None,
    before: str | None = None,
    limit: int = 100,
    where: TimelineFilter = TimelineFilter(),
) -> TimelineSlice:
    """`limit` events after the stream id `after` (oldest first), or, when
    it is None, the `limit` newest before the stream id `before` (None: the
    newest of all). Keyset paging on (ms, seq) both ways, so a page costs the
    same on the 100,000th event as on the first; the consistency argument is
    resource_timeline's. Stream ids are checked by the caller (parse_id)."""
    limit = max(1, min(limit, MAX_SLICE))
    p = partition_of(resource_id, partitions)
    mark, end = (await archived_marks(redis, [p]))[p]
    if pool is None:
        mark = "0-0"

    def keep(fields: dict[str, str]) -> bool:
        return fields.get("resource_id") == resource_id and where.keeps(fields)

    extra_sql, extra_args = where.sql()
    if after is not None:
        start = max(parse_id(next_id(after)), parse_id(mark))
        tail = await scan_stream(redis, p, f"{start[0]}-{start[1]}", end, limit + 1, keep)
        archived: list[TimelineEvent] = []
        if pool is not None and parse_id(after) < parse_id(end):
            archived = await _query(
                pool,
                _SELECT + "WHERE resource_id = %s AND (ms, seq) > (%s, %s) AND (ms, seq) <= (%s, %s)"
                + extra_sql + " ORDER BY ms, seq LIMIT %s",
                (resource_id, *parse_id(after), *parse_id(end), *extra_args, limit + 1),
            )
        events = merge_events(archived, tail)
        more = len(events) > limit
        return TimelineSlice(resource_id=resource_id, events=events[:limit],
                             has_older=after != "0-0", has_newer=more)
    top = end if before is None or parse_id(before) > parse_id(end) else f"({before}"
    tail = await scan_stream_reverse(redis, p, top, mark, limit + 1, keep)
    archived = []
    if pool is not None and end != "0-0":
        bound, inclusive = (end, "<=") if top == end else (before, "<")
        archived = await _query(
            pool,
            _SELECT + f"WHERE resource_id = %s AND (ms, seq) {inclusive} (%s, %s)"
            + extra_sql + " ORDER BY ms DESC, seq DESC LIMIT %s",
            (resource_id, *parse_id(bound), *extra_args, limit + 1),
        )
    events = merge_events(archived, tail)
    more = len(events) > limit
    return TimelineSlice(resource_id=resource_id, events=events[-limit:],
                         has_older=more, has_newer=before is not None and top != end)


async def scan_stream_reverse(redis: Redis, partition: int, top: str, bottom: str, want: int, keep) -> list[TimelineEvent]:
    """Entries from `top` (an id, or "(id" exclusive) down to `bottom`
    (inclusive) whose fields satisfy `keep`, newest first until `want` are
    found; returned oldest first."""
    out: list[TimelineEvent] = []
    if top in ("0-0", "(0-0"):
        return out
    key = stream_key(partition)
    cursor = top
    while True:
        chunk = await redis.xrevrange(key, cursor, bottom, count=_SCAN_CHUNK)
        for stream_id, fields in chunk:
            if fields and keep(fields):
                out.append(event_from_entry(partition, stream_id, fields))
                if len(out) >= want:
                    return out[::-1]
        if len(chunk) < _SCAN_CHUNK:
            return out[::-1]
        cursor = "(" + chunk[-1][0]
