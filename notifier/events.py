"""The delivered event types, and what a delivery's body says.

A delivered type is named from the stream's type in lower dot form. Replays
of an earlier decision (`*_REPLAYED`) are not delivered: the receiver had the
decision already. The same table is in PostgreSQL (`webhook_event_types`,
which the fan-out trigger joins); tests/test_webhooks.py checks that the two
and the Lua's types agree.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

EVENT_TYPES: dict[str, str] = {
    "RESERVATION_CONFIRMED": "reservation.confirmed",
    "RESERVATION_REJECTED": "reservation.rejected",
    "RESERVATION_CANCELLED": "reservation.cancelled",
    "CANCEL_REJECTED": "reservation.cancel_rejected",
    "WAITLIST_JOINED": "waitlist.joined",
    "WAITLIST_REJECTED": "waitlist.join_rejected",
    "WAITLIST_NOTIFIED": "waitlist.notified",
    "WAITLIST_FULFILLED": "waitlist.fulfilled",
    "WAITLIST_LEFT": "waitlist.left",
    "WAITLIST_LEAVE_REJECTED": "waitlist.leave_rejected",
    "WAITLIST_EXPIRED": "waitlist.expired",
    "WAITLIST_SWEPT": "waitlist.swept",
    "RESOURCE_CREATED": "resource.created",
    "RESOURCE_REJECTED": "resource.create_rejected",
    "RULES_CHANGED": "resource.changed",
    "RULES_REJECTED": "resource.change_rejected",
}
"""Stream type -> delivered type."""

PUBLIC_TYPES: tuple[str, ...] = tuple(EVENT_TYPES.values())
TEST_TYPE = "webhook.test"
"""What POST /webhooks/{id}/test delivers (to any endpoint, whatever it subscribed)."""
EVERY_TYPE = "*"

DATA_FIELDS = ("stream_id", "partition", "resource_id", "decision", "code", "reason", "client_id",
               "quantity", "reservation_id", "entry_id", "version", "remaining")
"""The operator fields of a decision a body carries (always present, null when
the event has none). The caller's key id (`actor`) and the request id are not sent."""
_NUMBERS = frozenset({"quantity", "version", "remaining"})

_encode = msgspec.json.Encoder().encode


def body(event_type: str, timestamp: str, data: dict[str, Any]) -> bytes:
    """A delivery's JSON body (compact, stable key order: the signed bytes)."""
    return _encode({"type": event_type, "timestamp": timestamp, "data": data})


def event_data(partition: int, stream_id: str, fields: dict[str, str]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for name in DATA_FIELDS:
        if name == "stream_id":
            data[name] = stream_id
        elif name == "partition":
            data[name] = partition
        else:
            value = fields.get(name)
            if value == "":
                value = None
            if value is not None and name in _NUMBERS:
                try:
                    value = int(value)
                except ValueError:
                    value = None
            data[name] = value
    return data


def iso_from_us(us: int) -> str:
    """Microseconds since the epoch as ISO-8601 UTC with microseconds."""
    seconds, fraction = divmod(us, 1_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{fraction:06d}Z"
