"""Wire types: what the Lua functions return and what the streams carry.

Times are integers, microseconds since the epoch, from the server clock.
Decisions are replies of the library this package loads, so their codes are
typed (resv.engine.codes). Stream events are read by parts that may run a
version behind the API (the archiver): their codes stay strings, and every
field past the essentials has a default, so an older reader decodes a newer
event.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from resv.engine.codes import EventType, Outcome, PublicCode, Reason
from resv.engine.errors import EngineError

E = EventType
State = Literal["OPEN", "CLOSED"]
ReservationStatus = Literal["CONFIRMED", "CANCELLED"]
EntryStatus = Literal["WAITING", "NOTIFIED", "EXPIRED", "FULFILLED", "LEFT"]


# ------------------------------------------------------------ decisions
# One Struct per reply shape, tagged by the reply's `type`, so a decision's
# class says which fields it has: a ReservationConfirmed always has its
# reservation_id, a CancelRejected never has one. Each entry point's reply
# decodes into its own union (engine.engine), and an unexpected `type` is an
# error, not a half-empty Struct.


class DecisionBase(msgspec.Struct, kw_only=True, frozen=True, tag_field="type"):
    """What every decision carries, exactly as the Lua logged it."""

    decision: Outcome
    code: PublicCode | None = None
    """Set on rejections only."""
    reason: Reason | None = None
    """Every decision but RESOURCE_CREATED and RULES_CHANGED has one."""
    resource_id: str
    ts: int
    """Server time of the decision, us."""
    version: int | None = None
    """The resource's rules version; None when the resource does not exist."""
    remaining: int | None = None

    @property
    def type(self) -> EventType:
        return EventType(self.__struct_config__.tag)

    @property
    def confirmed(self) -> bool:
        return self.decision == Outcome.CONFIRMED


class _Rules(DecisionBase, kw_only=True, frozen=True):
    """The rules after a definition: what resv_create and resv_configure confirm."""

    version: int
    remaining: int
    resource_type: str
    capacity: int
    state: State
    opens_at: int | None = None
    closes_at: int | None = None
    waitlist_enabled: bool
    max_per_request: int | None = None
    max_per_client: int | None = None
    notify_window_ms: int | None = None
    """How long a waiting-list notification stays outstanding (release 1: none)."""


class ResourceCreated(_Rules, tag=E.RESOURCE_CREATED.value, kw_only=True, frozen=True):
    pass


class ResourceRejected(DecisionBase, tag=E.RESOURCE_REJECTED.value, kw_only=True, frozen=True):
    pass


class RulesChanged(_Rules, tag=E.RULES_CHANGED.value, kw_only=True, frozen=True):
    pass


class RulesRejected(DecisionBase, tag=E.RULES_REJECTED.value, kw_only=True, frozen=True):
    expected_version: int
    requested: str
    """The field/value pairs asked for, as a JSON array."""


class ReservationReply(DecisionBase, kw_only=True, frozen=True):
    client_id: str
    quantity: int
    request_id: str
    idempotency_ttl_ms: int | None = None
    """How long the decision is remembered under request_id; None when it is not."""
    replayed: bool = False
    """True when this is the remembered decision of an earlier call."""


class ReservationConfirmed(ReservationReply, tag=E.RESERVATION_CONFIRMED.value, kw_only=True, frozen=True):
    reservation_id: str
    version: int
    remaining: int


class ReservationRejected(ReservationReply, tag=E.RESERVATION_REJECTED.value, kw_only=True, frozen=True):
    pass


class ReservationCancelled(DecisionBase, tag=E.RESERVATION_CANCELLED.value, kw_only=True, frozen=True):
    """A cancellation, with the reservation as it now is."""

    reservation_id: str
    client_id: str
    quantity: int
    status: ReservationStatus
    confirmed_at: int
    cancelled_at: int | None = None
    request_id: str | None = None


class CancelReplayed(ReservationCancelled, tag=E.CANCEL_REPLAYED.value, kw_only=True, frozen=True):
    """The reservation was already cancelled: the same cancellation."""


class CancelRejected(DecisionBase, tag=E.CANCEL_REJECTED.value, kw_only=True, frozen=True):
    reservation_id: str


class EntryDecision(DecisionBase, kw_only=True, frozen=True):
    """A waiting-list decision, with the entry as it now is."""

    entry_id: str
    client_id: str
    quantity: int
    status: EntryStatus
    position: int | None = None
    """1-based, only while WAITING."""
    joined_at: int
    notified_at: int | None = None
    expires_at: int | None = None
    """While NOTIFIED: when the notification lapses."""
    expired_at: int | None = None
    left_at: int | None = None
    fulfilled_at: int | None = None


class WaitlistJoined(EntryDecision, tag=E.WAITLIST_JOINED.value, kw_only=True, frozen=True):
    created: bool
    """False when the client already had an active entry (WAITLIST_JOIN_REPLAYED)."""


class WaitlistJoinReplayed(WaitlistJoined, tag=E.WAITLIST_JOIN_REPLAYED.value, kw_only=True, frozen=True):
    pass


class WaitlistRejected(DecisionBase, tag=E.WAITLIST_REJECTED.value, kw_only=True, frozen=True):
    client_id: str
    quantity: int


class WaitlistLeft(EntryDecision, tag=E.WAITLIST_LEFT.value, kw_only=True, frozen=True):
    pass


class WaitlistLeaveReplayed(WaitlistLeft, tag=E.WAITLIST_LEAVE_REPLAYED.value, kw_only=True, frozen=True):
    pass


class WaitlistLeaveRejected(DecisionBase, tag=E.WAITLIST_LEAVE_REJECTED.value, kw_only=True, frozen=True):
    entry_id: str


class WaitlistSwept(DecisionBase, tag=E.WAITLIST_SWEPT.value, kw_only=True, frozen=True):
    """resv_wl_sweep: lapsed notifications expired, and what then fits notified."""

    expired: int
    notified: int
    """Reply only: the stream's WAITLIST_SWEPT event does not carry it."""


CreateDecision = ResourceCreated | ResourceRejected
"""resv_create's reply."""
RulesDecision = RulesChanged | RulesRejected
"""resv_configure's, resv_open's and resv_close's reply."""
ReservationDecision = ReservationConfirmed | ReservationRejected
"""resv_reserve's reply (a retry gets the original one, replayed=True)."""
Cancellation = ReservationCancelled | CancelReplayed | CancelRejected
"""resv_cancel's reply."""
JoinDecision = WaitlistJoined | WaitlistJoinReplayed | WaitlistRejected
"""resv_wl_join's reply."""
LeaveDecision = WaitlistLeft | WaitlistLeaveReplayed | WaitlistLeaveRejected
"""resv_wl_leave's reply."""
Decision = (CreateDecision | RulesDecision | ReservationDecision | Cancellation | JoinDecision | LeaveDecision
            | WaitlistSwept)
"""Any commit's reply."""


class UnexpectedReply(EngineError):
    """A reply whose type is not one its entry point gives (a library of
    another version?)."""


class ReplyDecoder:
    """Decodes one entry point's flat reply into the Struct of its type.

    Dispatches on `type` by dictionary rather than converting to the union:
    msgspec.convert re-inspects a union on every call (~20 us against ~4 us
    for one Struct, on the hot path of every commit)."""

    def __init__(self, *kinds: type[DecisionBase]) -> None:
        self._by_type = {kind.__struct_config__.tag: kind for kind in kinds}

    def __call__(self, flat: list[Any]) -> Any:
        fields = {flat[i]: flat[i + 1] for i in range(0, len(flat), 2) if flat[i + 1] != ""}
        kind = self._by_type.get(fields.get("type"))
        if kind is None:
            raise UnexpectedReply(f"unexpected reply type {fields.get('type')!r}")
        return msgspec.convert(fields, kind, strict=False)


class Resource(msgspec.Struct, kw_only=True, frozen=True):
    resource_id: str
    resource_type: str
    capacity: int
    reserved: int
    remaining: int
    state: State
    status: Literal["OPEN", "CLOSED", "FULL"]
    version: int
    opens_at: int | None = None
    closes_at: int | None = None
    waitlist_enabled: bool = False
    max_per_request: int | None = None
    max_per_client: int | None = None
    notify_window_ms: int = 900_000
    waitlist_length: int = 0
    notified: int = 0
    """The quantities of outstanding waiting-list notifications."""
    created_at: int | None = None
    updated_at: int | None = None
    now: int


class Reservation(msgspec.Struct, kw_only=True, frozen=True):
    reservation_id: str
    resource_id: str
    client_id: str
    quantity: int
    status: ReservationStatus
    confirmed_at: int
    cancelled_at: int | None = None
    request_id: str | None = None
    version: int | None = None


class WaitlistEntry(msgspec.Struct, kw_only=True, frozen=True):
    entry_id: str
    resource_id: str
    client_id: str
    quantity: int
    status: EntryStatus
    position: int | None = None
    joined_at: int
    notified_at: int | None = None
    expires_at: int | None = None
    """While NOTIFIED: when the notification lapses (notified_at + the window then in force)."""
    expired_at: int | None = None
    left_at: int | None = None
    fulfilled_at: int | None = None


class WaitingList(msgspec.Struct, kw_only=True, frozen=True):
    """One page of a resource's waiting list, in order (resv_waitlist)."""

    waiting: int
    """How many entries are WAITING in all."""
    entries: list[WaitlistEntry]


class ResourceSpec(msgspec.Struct, kw_only=True, frozen=True):
    """What an operator declares when creating a resource."""

    resource_id: str
    type: str
    capacity: int
    opens_at: int | None = None
    closes_at: int | None = None
    waitlist_enabled: bool = False
    max_per_request: int | None = None
    max_per_client: int | None = None
    notify_window_ms: int | None = None
    """None: the default (15 minutes)."""


class Event(msgspec.Struct, kw_only=True, frozen=True):
    """One stream entry, as the archiver and the timeline read it."""

    partition: int
    stream_id: str
    type: str
    ts: int
    decision: str | None = None
    code: str | None = None
    reason: str | None = None
    resource_id: str | None = None
    client_id: str | None = None
    quantity: int | None = None
    request_id: str | None = None
    reservation_id: str | None = None
    entry_id: str | None = None
    version: int | None = None
    remaining: int | None = None
    fields: dict[str, str] = {}
    """Every field of the stream entry, verbatim (rules snapshots included)."""


def from_flat(kind: type, flat: list[Any], **extra: Any):
    """Builds a Struct from a flat field/value reply; empty values are absent."""
    fields = {flat[i]: flat[i + 1] for i in range(0, len(flat), 2) if flat[i + 1] != ""}
    fields.update(extra)
    return msgspec.convert(fields, kind, strict=False)


def event_from_stream(partition: int, stream_id: str, fields: dict[str, str]) -> Event:
    data = {k: v for k, v in fields.items() if v != "" and k in _EVENT_COLUMNS}
    return msgspec.convert(
        {**data, "partition": partition, "stream_id": stream_id, "fields": fields},
        Event,
        strict=False,
    )


_EVENT_COLUMNS = frozenset(Event.__struct_fields__) - {"partition", "stream_id", "fields"}
