"""Re-deriving logged decisions with the same Lua, on a scratch server.

Each event is replayed through the library release that decided it (its
`lib` field; none: release 1), as the package keeps every release
(resv.engine.library). A release is loaded as is, except its clock: the text
between the `-- @clock-begin` and `-- @clock-end` markers becomes a
`server_now()` that reads the recorded time from the key
`resv:replay:clock`. Each logged decision's call is re-issued at its
recorded time, with its recorded actor, in stream order per partition, and
everything the call appends to the scratch stream is compared with what was
logged: the decision itself and its consequences (WAITLIST_NOTIFIED,
WAITLIST_FULFILLED, WAITLIST_EXPIRED, which are compared, never re-issued).
A lapsed notification is a consequence of whichever call came first from
its deadline on, or of a sweep: the sweep logs its decision (WAITLIST_SWEPT)
before what it expired and notified, and is re-issued at its recorded time
like any call, so the replay lapses exactly what the log says lapsed. A
sweep that changed nothing logged nothing and is not needed. When
consecutive events were decided by different releases (an upgrade), the
scratch server switches library between them and keeps its keys: a release
reads the state its predecessor wrote, as a live upgrade requires.

Idempotency records: the replay passes the longest ttl the Lua accepts and
expires each record itself at the recorded time (set time + ttl), so a retry
that came after the record expired is decided afresh, as it was.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from contextlib import AbstractAsyncContextManager
from functools import cache
from typing import Any

import msgspec
from redis.asyncio import Redis

from resv.archiver.store import parse_int
from resv.archiver.timeline import TimelineEvent
from resv.engine import library_source
from resv.engine.codes import CONSEQUENCES, FUNCTION_OF, RECORDED, EventType, Reason
from resv.engine.keys import request_key_in, resource_keys_in, stream_key, waitlist_keys_in
from resv.engine.limits import MAX_IDEMPOTENCY_TTL_MS

CLOCK_KEY = "resv:replay:clock"
CLOCK_BEGIN = "-- @clock-begin"
CLOCK_END = "-- @clock-end"
REPLAY_CLOCK = f"""{CLOCK_BEGIN}
local function server_now()
  return tonumber(redis.call('GET', '{CLOCK_KEY}'))
end
{CLOCK_END}"""

RULES = ("type", "capacity", "state", "opens_at", "closes_at", "waitlist_enabled",
         "max_per_request", "max_per_client", "notify_window_ms")
# Columns of `events` compared with the replayed entry (as parsed from it).
COMPARED_COLUMNS = ("type", "decision", "code", "reason", "resource_id", "client_id", "quantity",
                    "request_id", "reservation_id", "entry_id", "version", "remaining", "ts")
PIPELINE_CALLS = 500


def replay_source(source: str) -> str:
    """The library with its clock replaced; refuses a source without markers."""
    begin, end = source.find(CLOCK_BEGIN), source.find(CLOCK_END)
    if begin < 0 or end < begin:
        raise ValueError(f"the Lua library has no {CLOCK_BEGIN} ... {CLOCK_END} block")
    return source[:begin] + REPLAY_CLOCK + source[end + len(CLOCK_END):]


@cache
def replay_release(version: int) -> str | None:
    """Release `version` with its clock replaced; None when the package does
    not ship it (an audit written by a newer release)."""
    try:
        return replay_source(library_source(version))
    except KeyError:
        return None


class Mismatch(msgspec.Struct, frozen=True):
    partition: int
    stream_id: str | None
    event_type: str | None
    what: str

    def __str__(self) -> str:
        where = f"p{self.partition} {self.stream_id}" if self.stream_id else f"p{self.partition}"
        return f"{where} {self.event_type or '-'}: {self.what}"


class Call(msgspec.Struct, frozen=True):
    """A logged decision, its consequences, and the call that re-issues it."""

    events: list[TimelineEvent]
    function: str | None
    keys: tuple[str, ...]
    args: tuple[str, ...]
    expire_first: tuple[str, ...] = ()
    inferred: bool = False
    """Inputs inferred from the outcome (the event lacks them): see `_rejected_configure`."""
    problem: str | None = None
    """Why the group cannot be re-issued (function is None)."""
    lib: int = 1
    """The library release that decided it (the event's `lib`)."""


ScratchFactory = Callable[[], AbstractAsyncContextManager[Redis]]
"""Starts a private, empty server and yields a client to it (decode_responses=
True); the composition root provides one. Verify and restore
load the replay library there and write nothing anywhere else."""


async def load_replay_library(scratch: Redis, source: str) -> None:
    await scratch.execute_command("FUNCTION", "LOAD", "REPLACE", replay_source(source))


class Planner:
    """Turns a partition's logged events, in stream order, into calls.

    Keeps what re-issuing needs from earlier events: each resource's
    capacity (for a CAPACITY_BELOW_RESERVED rejection that does not say what
    was asked) and when each idempotency record expires.
    """

    def __init__(self, idempotency_ttl_ms: int) -> None:
        self.default_ttl_ms = idempotency_ttl_ms
        self.capacity: dict[str, int] = {}
        self.expires: dict[str, int] = {}  # request key -> recorded expiry, us

    def plan(self, partition: int, events: Iterable[TimelineEvent]) -> list[Call]:
        calls: list[Call] = []
        group: list[TimelineEvent] = []
        for event in events:
            if event.type in CONSEQUENCES and group and group[0].resource_id == event.resource_id:
                group.append(event)
                continue
            if group:
                calls.append(self._call(partition, group))
            group = [event]
        if group:
            calls.append(self._call(partition, group))
        return calls

    def _call(self, partition: int, group: list[TimelineEvent]) -> Call:
        e = group[0]
        f = e.fields
        rid = f.get("resource_id", "")
        t = e.type or ""
        function = FUNCTION_OF.get(t)
        g = lambda name: f.get(name, "")
        lib = parse_int(f.get("lib")) or 1
        # Release 1's write calls take the six resource keys; later ones
        # also take the waiting-list keys (KEYS[7..9], after the request key).
        wl = () if lib == 1 else waitlist_keys_in(partition, rid)
        ks = resource_keys_in(partition, rid) + wl
        actor = f.get("actor")
        # re-issued as it was asked: the actor where the contract puts it
        # (a pair in resv_configure, ARGV[9] of resv_create, the trailing
        # argument elsewhere)
        by: tuple[str, ...] = () if not actor else (actor,)

        def call(function: str, *args: str, keys: tuple[str, ...] = ks, inferred: bool = False,
                 expire: tuple[str, ...] = (), tail: bool = True) -> Call:
            after = (("actor", *by) if by and function == "resv_configure" else by) if tail else ()
            return Call(events=group, function=function, keys=keys, args=(rid, *args, *after),
                        expire_first=expire, inferred=inferred, lib=lib)

        if replay_release(lib) is None:
            return self._unplayable(group, f"decided by Lua library version {lib}, which this package does not "
                                           f"ship: replay it with version {lib} or later")
        if t in CONSEQUENCES:
            return self._unplayable(group, "a consequence with no decision before it")
        if not rid:
            return self._unplayable(group, "no resource_id")
        if function is None:
            return self._unplayable(group, f"no call logs a {t or 'typeless'} event")
        if t == EventType.RESOURCE_CREATED:
            self._rules_seen(f)
            rules = (g("resource_type"), g("capacity"), g("opens_at"), g("closes_at"),
                     g("waitlist_enabled") or "0", g("max_per_request"), g("max_per_client"))
            if lib == 1:
                return call(function, *rules)
            return call(function, *rules, actor or "", g("notify_window_ms"), tail=False)
        if t == EventType.RESOURCE_REJECTED:
            # ALREADY_EXISTS depends on existence only; the attempted rules are not logged.
            return call(function, "replay", "0", "", "", "0", "", "")
        if t == EventType.RULES_CHANGED:
            self._rules_seen(f)
            version = parse_int(f.get("version")) or 1
            # release 1 had no notify window rule
            rules = [r for r in RULES if lib > 1 or r != "notify_window_ms"]
            pairs = [x for rule in rules for x in (rule, g("resource_type" if rule == "type" else rule))]
            return call(function, str(version - 1), *pairs)
        if t == EventType.RULES_REJECTED:
            return self._rejected_configure(f, call)
        if function == "resv_reserve":
            return self._reserve(partition, e, call, wl)
        if function == "resv_cancel":
            return call(function, g("reservation_id"))
        if function == "resv_wl_join":
            return call(function, g("client_id"), g("quantity"))
        if function == "resv_wl_leave":
            return call(function, g("entry_id"))
        if function == "resv_wl_sweep":
            return call(function)
        return self._unplayable(group, f"no call logs a {t or 'typeless'} event")

    @staticmethod
    def _unplayable(group: list[TimelineEvent], problem: str) -> Call:
        return Call(events=group, function=None, keys=(), args=(), problem=problem)

    def _rules_seen(self, f: dict[str, str]) -> None:
        capacity = parse_int(f.get("capacity"))
        if capacity is not None:
            self.capacity[f.get("resource_id", "")] = capacity

    def _rejected_configure(self, f: dict[str, str], call) -> Call:
        """A refused configure logs its outcome, not what was asked. With
        the request logged (`expected_version`, and `requested`: the
        field/value pairs as a JSON array) it is re-issued as it was; without,
        with inputs that reach the same refusal, flagged as inferred."""
        reason = f.get("reason")
        version = parse_int(f.get("version"))
        expected = f.get("expected_version")
        requested = _pairs(f.get("requested"))
        if expected is not None and requested:
            return call("resv_configure", expected, *requested)
        if reason == Reason.UNKNOWN_RESOURCE:  # refused whatever was asked
            return call("resv_configure", expected or "0", *(requested or ["state", "OPEN"]))
        if reason == Reason.VERSION_MISMATCH:
            stale = expected or str((version or 0) + 1)
            return call("resv_configure", stale, *(requested or ["state", "OPEN"]), inferred=expected is None)
        if reason == Reason.CAPACITY_BELOW_RESERVED:
            capacity = self.capacity.get(f.get("resource_id", ""), 0)
            reserved = capacity - (parse_int(f.get("remaining")) or 0)
            return call("resv_configure", expected or str(version or 0),
                        *(requested or ["capacity", str(max(reserved - 1, 0))]), inferred=not requested)
        return call("resv_configure", expected or str(version or 0), *(requested or ["state", "OPEN"]),
                    inferred=True)

    def _reserve(self, partition: int, e: TimelineEvent, call, wl: tuple[str, ...]) -> Call:
        f = e.fields
        rid, request_id = f.get("resource_id", ""), f.get("request_id", "")
        # From release 3 an actor scopes the request id, and the call reads
        # the unscoped record too (KEYS[11]: one an earlier release wrote),
        # unless a release-2 process made the call (request_scope=resource)
        scoped = (parse_int(f.get("lib")) or 1) >= 3 and f.get("request_scope") != "resource"
        actor = f.get("actor") if scoped else None
        req_key = request_key_in(partition, rid, request_id, actor)
        unscoped = (request_key_in(partition, rid, request_id),) if actor else ()
        ts = e.ts or 0
        expire: tuple[str, ...] = ()
        if req_key in self.expires and self.expires[req_key] <= ts:
            del self.expires[req_key]
            expire = (req_key,)
        # The Lua records the decision under the request id unless it was a
        # replay or a refused reuse of the id.
        logged_ttl = parse_int(f.get("idempotency_ttl_ms"))
        # (UNKNOWN_RESOURCE leaves none since release 3: it logs no ttl then)
        reason = f.get("reason")
        if (e.type in RECORDED and reason != Reason.REQUEST_ID_REUSED
                and (reason != Reason.UNKNOWN_RESOURCE or logged_ttl is not None)):
            self.expires[req_key] = ts + (logged_ttl or self.default_ttl_ms) * 1000
        # The logged ttl is passed again (it is part of the logged decision);
        # the record's real-time expiry never matters, the planner expires it
        # at the recorded time. Events from before the ttl was logged get the
        # longest ttl, for the same reason.
        ttl = str(logged_ttl or MAX_IDEMPOTENCY_TTL_MS)
        return call("resv_reserve", f.get("client_id", ""), f.get("quantity", ""), request_id, ttl,
                    keys=(*resource_keys_in(partition, rid), req_key, *wl, *unscoped),
                    expire=expire)


async def replay(scratch: Redis, partition: int, calls: list[Call]) -> list[Mismatch]:
    """Issues the calls in order on the scratch server, pipelined, and
    compares what each appended to the stream with what was logged."""
    mismatches: list[Mismatch] = []
    key = stream_key(partition)
    last_id = None
    loaded: int | None = None  # the release on the scratch server (loaded at the first call)
    for start in range(0, len(calls), PIPELINE_CALLS):
        chunk = calls[start:start + PIPELINE_CALLS]
        before: list[int] = []  # per call: commands sent before its FCALL
        async with scratch.pipeline(transaction=False) as pipe:
            pipe.xlen(key)
            for c in chunk:
                if c.function is None:
                    before.append(0)
                    continue
                n = 1  # SET of the clock
                if c.lib != loaded:
                    pipe.execute_command("FUNCTION", "LOAD", "REPLACE", replay_release(c.lib))
                    loaded = c.lib
                    n += 1
                if c.expire_first:
                    pipe.delete(*c.expire_first)
                    n += 1
                before.append(n)
                pipe.set(CLOCK_KEY, str(c.events[0].ts or 0))
                pipe.execute_command("FCALL", c.function, len(c.keys), *c.keys, *c.args)
                pipe.xlen(key)
            replies = await pipe.execute(raise_on_error=False)
        produced = await scratch.xrange(key, f"({last_id}" if last_id else "-", "+")
        if produced:
            last_id = produced[-1][0]
        i, length, offset = 1, replies[0], 0
        for c, n in zip(chunk, before):
            if c.function is None:
                mismatches.append(_mismatch(partition, c.events[0], c.problem or "cannot be replayed"))
                continue
            for failed in replies[i:i + n]:  # a library that does not load fails every call after it
                if isinstance(failed, Exception):
                    mismatches.append(_mismatch(partition, c.events[0], f"cannot prepare the replay: {failed}"))
            i += n  # LOAD, DEL, SET
            reply, new_length = replies[i], replies[i + 1]
            i += 2
            appended = [fields for _, fields in produced[offset:offset + new_length - length]]
            offset += new_length - length
            length = new_length
            if isinstance(reply, Exception):
                mismatches.append(_mismatch(partition, c.events[0], f"the replayed call failed: {reply}"))
            mismatches += _compare(partition, c.events, appended)
    return mismatches


def _compare(partition: int, logged: list[TimelineEvent], replayed: list[dict[str, str]]) -> list[Mismatch]:
    out: list[Mismatch] = []
    for n, event in enumerate(logged):
        if n < len(replayed):
            out += _differences(partition, event, replayed[n])
        else:
            out.append(_mismatch(partition, event, "logged, but the replay did not produce it"))
    for fields in replayed[len(logged):]:
        out.append(_mismatch(partition, logged[0],
                             f"the replay also produced {_short(fields)}, which is not in the log"))
    return out


def _differences(partition: int, event: TimelineEvent, replayed: dict[str, str]) -> list[Mismatch]:
    """Every column and every verbatim field that differs."""
    out: list[Mismatch] = []
    seen: set[str] = set()
    logged_columns = {name: getattr(event, name) for name in COMPARED_COLUMNS}
    for name, value in logged_columns.items():
        expected = replayed.get(name)
        if name in ("quantity", "version", "remaining", "ts"):
            expected_value: Any = parse_int(expected)
        else:
            expected_value = expected
        if value != expected_value:
            seen.add(name)
            out.append(_mismatch(partition, event, f"{name}: logged {_show(value)}, replayed {_show(expected_value)}"))
    for name in sorted(set(event.fields) | set(replayed)):
        if name in seen:
            continue
        a, b = event.fields.get(name), replayed.get(name)
        if a != b:
            out.append(_mismatch(partition, event, f"fields.{name}: logged {_show(a)}, replayed {_show(b)}"))
    return out


def _pairs(raw: str | None) -> list[str]:
    """A logged JSON array of field/value strings; [] when absent or not one."""
    try:
        pairs = json.loads(raw) if raw else []
    except ValueError:
        return []
    ok = isinstance(pairs, list) and len(pairs) % 2 == 0 and all(isinstance(x, str) for x in pairs)
    return pairs if ok else []


def _mismatch(partition: int, event: TimelineEvent, what: str) -> Mismatch:
    who = event.request_id or event.reservation_id or event.entry_id or event.resource_id
    return Mismatch(partition, event.stream_id, event.type, f"{what} [{who}]" if who else what)


def _show(value: Any) -> str:
    return "(none)" if value is None else str(value)


def _short(fields: dict[str, str]) -> str:
    return " ".join(f"{k}={fields[k]}" for k in ("type", "decision", "reason", "resource_id") if k in fields)
