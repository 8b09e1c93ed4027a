"""Wire types: what the Lua functions return and what the streams carry.

Times are integers, microseconds since the epoch, from the server clock.
Every field past the essentials has a default, so an older reader decodes a
newer event (the archiver may run a version behind the API).
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

PublicCode = Literal["RESOURCE_FULL", "RESOURCE_CLOSED", "INVALID_STATE"]


class Decision(msgspec.Struct, kw_only=True, frozen=True):
    """The reply of a commit: one decision, exactly as the Lua logged it."""

    type: str
    decision: Literal["CONFIRMED", "REJECTED"]
    code: str | None = None
    reason: str | None = None
    resource_id: str | None = None
    ts: int
    version: int | None = None
    remaining: int | None = None
    client_id: str | None = None
    quantity: int | None = None
    request_id: str | None = None
    reservation_id: str | None = None
    entry_id: str | None = None
    replayed: bool = False
    # reservation fields (cancel) and entry fields (waiting list)
    status: str | None = None
    confirmed_at: int | None = None
    cancelled_at: int | None = None
    position: int | None = None
    joined_at: int | None = None
    notified_at: int | None = None
    expires_at: int | None = None
    expired_at: int | None = None
    created: bool = False
    expired: int | None = None
    """resv_wl_sweep: how many notifications it expired (and `notified`, how many it sent)."""
    notified: int | None = None
    # rule fields (create, configure)
    resource_type: str | None = None
    capacity: int | None = None
    state: str | None = None
    opens_at: int | None = None
    closes_at: int | None = None
    waitlist_enabled: bool | None = None
    max_per_request: int | None = None
    max_per_client: int | None = None
    notify_window_ms: int | None = None

    @property
    def confirmed(self) -> bool:
        return self.decision == "CONFIRMED"


class Resource(msgspec.Struct, kw_only=True, frozen=True):
    resource_id: str
    resource_type: str
    capacity: int
    reserved: int
    remaining: int
    state: Literal["OPEN", "CLOSED"]
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
    status: Literal["CONFIRMED", "CANCELLED"]
    confirmed_at: int
    cancelled_at: int | None = None
    request_id: str | None = None
    version: int | None = None


class WaitlistEntry(msgspec.Struct, kw_only=True, frozen=True):
    entry_id: str
    resource_id: str
    client_id: str
    quantity: int
    status: Literal["WAITING", "NOTIFIED", "EXPIRED", "FULFILLED", "LEFT"]
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
