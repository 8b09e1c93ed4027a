"""Every code the Lua emits, declared once.

The Lua (lua/resv.lua) is the authority; these enums only name what it
writes into replies and stream events: the event `type`, the `decision`, the
public `code` clients see, and the exact `reason` operators see.
tests/test_codes.py reads the Lua and fails when it emits a code missing
here, or when a code here is one the Lua never emits.

StrEnum members compare equal to the strings on the wire, so code reading a
stream entry (a plain dict of strings) compares it with these directly.
"""

from __future__ import annotations

from enum import StrEnum


class EventType(StrEnum):
    """The `type` of a reply and of its stream event."""

    # resv_create
    RESOURCE_CREATED = "RESOURCE_CREATED"
    RESOURCE_REJECTED = "RESOURCE_REJECTED"
    # resv_configure, resv_open, resv_close
    RULES_CHANGED = "RULES_CHANGED"
    RULES_REJECTED = "RULES_REJECTED"
    # resv_reserve
    RESERVATION_CONFIRMED = "RESERVATION_CONFIRMED"
    RESERVATION_REJECTED = "RESERVATION_REJECTED"
    RESERVATION_REPLAYED = "RESERVATION_REPLAYED"
    """Logged for a retry; the retry's reply is the original decision."""
    # resv_cancel
    RESERVATION_CANCELLED = "RESERVATION_CANCELLED"
    CANCEL_REPLAYED = "CANCEL_REPLAYED"
    CANCEL_REJECTED = "CANCEL_REJECTED"
    # resv_wl_join
    WAITLIST_JOINED = "WAITLIST_JOINED"
    WAITLIST_JOIN_REPLAYED = "WAITLIST_JOIN_REPLAYED"
    WAITLIST_REJECTED = "WAITLIST_REJECTED"
    # resv_wl_leave
    WAITLIST_LEFT = "WAITLIST_LEFT"
    WAITLIST_LEAVE_REPLAYED = "WAITLIST_LEAVE_REPLAYED"
    WAITLIST_LEAVE_REJECTED = "WAITLIST_LEAVE_REJECTED"
    # resv_wl_sweep
    WAITLIST_SWEPT = "WAITLIST_SWEPT"
    # consequences: logged after a decision, decide nothing themselves
    WAITLIST_NOTIFIED = "WAITLIST_NOTIFIED"
    WAITLIST_FULFILLED = "WAITLIST_FULFILLED"
    WAITLIST_EXPIRED = "WAITLIST_EXPIRED"
    """A notification lapsed: its window passed before the client reserved."""


class Outcome(StrEnum):
    """The `decision` field."""

    CONFIRMED = "CONFIRMED"
    REJECTED = "REJECTED"


class PublicCode(StrEnum):
    """The `code` of a rejection: all a client is told (with one generic
    message per code, engine.errors.PUBLIC_MESSAGES)."""

    RESOURCE_FULL = "RESOURCE_FULL"
    RESOURCE_CLOSED = "RESOURCE_CLOSED"
    INVALID_STATE = "INVALID_STATE"


class Reason(StrEnum):
    """The exact `reason`, for operators (the log, the audit, metrics)."""

    # definitions
    ALREADY_EXISTS = "ALREADY_EXISTS"
    UNKNOWN_RESOURCE = "UNKNOWN_RESOURCE"
    VERSION_MISMATCH = "VERSION_MISMATCH"
    CAPACITY_BELOW_RESERVED = "CAPACITY_BELOW_RESERVED"
    WINDOW_INVERTED = "WINDOW_INVERTED"
    """A configure whose window, merged with the stored rules, would close
    before it opens."""
    # reservations
    CONFIRMED = "CONFIRMED"
    REQUEST_ID_REUSED = "REQUEST_ID_REUSED"
    STATE_CLOSED = "STATE_CLOSED"
    WINDOW_NOT_OPEN = "WINDOW_NOT_OPEN"
    WINDOW_CLOSED = "WINDOW_CLOSED"
    OVER_REQUEST_LIMIT = "OVER_REQUEST_LIMIT"
    OVER_CLIENT_LIMIT = "OVER_CLIENT_LIMIT"
    SOLD_OUT = "SOLD_OUT"
    INSUFFICIENT_CAPACITY = "INSUFFICIENT_CAPACITY"
    # cancellations
    CANCELLED = "CANCELLED"
    ALREADY_CANCELLED = "ALREADY_CANCELLED"
    UNKNOWN_RESERVATION = "UNKNOWN_RESERVATION"
    # waiting list
    JOINED = "JOINED"
    ALREADY_JOINED = "ALREADY_JOINED"
    WAITLIST_DISABLED = "WAITLIST_DISABLED"
    LEFT = "LEFT"
    ALREADY_LEFT = "ALREADY_LEFT"
    UNKNOWN_ENTRY = "UNKNOWN_ENTRY"
    ENTRY_FULFILLED = "ENTRY_FULFILLED"
    ENTRY_EXPIRED = "ENTRY_EXPIRED"
    TOO_MANY_QUANTITIES = "TOO_MANY_QUANTITIES"
    """A join for one more distinct quantity than the waiting list indexes."""
    NOTIFY_WINDOW_PASSED = "NOTIFY_WINDOW_PASSED"
    """WAITLIST_EXPIRED's reason: the entry's notification window passed."""
    SWEPT = "SWEPT"
    """resv_wl_sweep's decision (it expired or notified something)."""


E = EventType

CONSEQUENCES = frozenset({E.WAITLIST_NOTIFIED, E.WAITLIST_FULFILLED, E.WAITLIST_EXPIRED})
"""Events a decision causes (a notified, fulfilled or expired entry): they follow
their decision in the stream and are never a call of their own."""

FUNCTION_OF: dict[str, str] = {
    E.RESOURCE_CREATED: "resv_create",
    E.RESOURCE_REJECTED: "resv_create",
    E.RULES_CHANGED: "resv_configure",
    E.RULES_REJECTED: "resv_configure",
    E.RESERVATION_CONFIRMED: "resv_reserve",
    E.RESERVATION_REJECTED: "resv_reserve",
    E.RESERVATION_REPLAYED: "resv_reserve",
    E.RESERVATION_CANCELLED: "resv_cancel",
    E.CANCEL_REPLAYED: "resv_cancel",
    E.CANCEL_REJECTED: "resv_cancel",
    E.WAITLIST_JOINED: "resv_wl_join",
    E.WAITLIST_JOIN_REPLAYED: "resv_wl_join",
    E.WAITLIST_REJECTED: "resv_wl_join",
    E.WAITLIST_LEFT: "resv_wl_leave",
    E.WAITLIST_LEAVE_REPLAYED: "resv_wl_leave",
    E.WAITLIST_LEAVE_REJECTED: "resv_wl_leave",
    E.WAITLIST_SWEPT: "resv_wl_sweep",
}
"""The entry point whose call logged a decision event (resv_open and
resv_close log as resv_configure: they are configure with state=...).
Keyed by str: a stream entry's type is any string until checked here."""

RECORDED = frozenset({E.RESERVATION_CONFIRMED, E.RESERVATION_REJECTED})
"""resv_reserve decisions remembered under their request id (except a
REQUEST_ID_REUSED refusal, which must not replace the original)."""
