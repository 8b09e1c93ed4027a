"""Wire types of the HTTP API: every request and response body.

Constraints live in the types (reusable `Annotated[..., Meta(...)]` aliases),
so Litestar validates bodies and parameters with msgspec before a handler
runs, and the OpenAPI document carries the same rules. Bodies refuse unknown
fields. Times are ISO-8601 strings in UTC with microseconds (`api.times`).

The bounds are the Lua's (`resv.engine.limits`, read from lua/resv.lua):
a body the API accepts is never refused as malformed there, and a value the
Lua accepts is never refused here (tests/test_rule_book.py sends the
boundary values both ways).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal

from litestar.params import PathParameter, QueryParameter
from msgspec import UNSET, Meta, Struct, UnsetType

from resv.engine.codes import PublicCode
from resv.engine.limits import MAX_ID, MAX_INT, MAX_RESOURCE_ID, MAX_TYPE, PRINTABLE, RESOURCE_ID_CHARS


def _whole(char_class: str, low: int, high: int) -> str:
    # `$` alone also matches before a final newline in Python's re (msgspec
    # uses re.search); the lookahead refuses that newline. Valid ECMA regex
    # too, so the OpenAPI pattern means the same thing in every client.
    return f"^{char_class}{{{low},{high}}}(?!\\n)$"


RESOURCE_ID = re.compile(f"[{RESOURCE_ID_CHARS}]{{1,{MAX_RESOURCE_ID}}}")
"""A resource id, for `fullmatch` where a type cannot check it (parts of ids)."""
PRINTABLE_ID = re.compile(f"[{PRINTABLE}]{{1,{MAX_ID}}}")
"""A client, request, reservation or entry id (headers: `fullmatch`)."""

RESOURCE_ID_PATTERN = _whole(f"[{RESOURCE_ID_CHARS}]", 1, MAX_RESOURCE_ID)
PRINTABLE_ID_PATTERN = _whole(f"[{PRINTABLE}]", 1, MAX_ID)
RESOURCE_ID_RULE = f"1-{MAX_RESOURCE_ID} characters of [{RESOURCE_ID_CHARS}]."
PRINTABLE_ID_RULE = f"1-{MAX_ID} printable ASCII characters, no spaces."

ResourceId = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=MAX_RESOURCE_ID,
        pattern=RESOURCE_ID_PATTERN,
        description=RESOURCE_ID_RULE,
        examples=["concert-2026-11-24"],
    ),
]
PrintableId = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=MAX_ID,
        pattern=PRINTABLE_ID_PATTERN,
        description=PRINTABLE_ID_RULE,
    ),
]
ClientId = Annotated[PrintableId, Meta(examples=["customer-42"])]
ReservationId = Annotated[PrintableId, Meta(examples=["concert-2026-11-24~17"])]
EntryId = Annotated[PrintableId, Meta(examples=["concert-2026-11-24~w3"])]
ResourceType = Annotated[
    str,
    Meta(min_length=1, max_length=MAX_TYPE, pattern=_whole(f"[{PRINTABLE}]", 1, MAX_TYPE), examples=["meetup"],
         description=f"1-{MAX_TYPE} printable ASCII characters, no spaces (e.g. meetup, table, seat)."),
]
Quantity = Annotated[int, Meta(ge=1, le=MAX_INT)]
Capacity = Annotated[int, Meta(ge=0, le=MAX_INT)]
Limit = Annotated[int, Meta(ge=1, le=MAX_INT)]
MAX_NOTIFY_WINDOW_MS = 30 * 86_400_000
"""The Lua's bound on notify_window_ms (30 days)."""
NotifyWindow = Annotated[int, Meta(
    ge=1, le=MAX_NOTIFY_WINDOW_MS, examples=[900_000],
    description="How long a waiting-list notification stays outstanding, in ms (default 900000, 15 minutes); "
                "its quantity counts as promised meanwhile, then the entry is EXPIRED.")]
Moment = Annotated[datetime, Meta(tz=True, description="ISO-8601 with a timezone, e.g. 2026-11-24T19:00:00Z.")]
Timestamp = Annotated[
    str,
    Meta(extra_json_schema={"format": "date-time"}, examples=["2026-11-24T19:57:12.123456Z"],
         description="ISO-8601 UTC with microseconds, from the server clock."),
]

# Query and path parameters: Litestar takes their constraints from the
# parameter markers, not from msgspec's Meta.
_RESOURCE_ID_RULES = {"min_length": 1, "max_length": MAX_RESOURCE_ID, "pattern": RESOURCE_ID_PATTERN,
                      "description": RESOURCE_ID_RULE}
_PRINTABLE_ID_RULES = {"min_length": 1, "max_length": MAX_ID, "pattern": PRINTABLE_ID_PATTERN}
ResourceIdQuery = Annotated[str, QueryParameter(**_RESOURCE_ID_RULES)]
ResourceIdPath = Annotated[str, PathParameter(**_RESOURCE_ID_RULES)]
ReservationIdPath = Annotated[str, PathParameter(
    **_PRINTABLE_ID_RULES, description="As returned when the reservation was confirmed (`<resource_id>~<n>`).")]
ResourceIdParam = ResourceIdPath  # the name api/ops.py imports
EntryIdPath = Annotated[str, PathParameter(
    **_PRINTABLE_ID_RULES, description="As returned when the client joined (`<resource_id>~w<n>`).")]

ErrorCode = Literal[
    "BAD_REQUEST",
    "UNAUTHORIZED",
    "FORBIDDEN",
    "NOT_FOUND",
    "METHOD_NOT_ALLOWED",
    "ALREADY_EXISTS",
    "INVALID_STATE",
    "IDEMPOTENCY_KEY_REUSED",
    "VERSION_MISMATCH",
    "PRECONDITION_REQUIRED",
    "PAYLOAD_TOO_LARGE",
    "HEADERS_TOO_LARGE",
    "RATE_LIMITED",
    "UNAVAILABLE",
    "INTERNAL",
]


class _In(Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Request bodies: unknown fields are an error, not silently dropped."""


class _Out(Struct, frozen=True, kw_only=True):
    """Response bodies."""


# ------------------------------------------------------------------ errors


class ErrorBody(_Out, kw_only=True, omit_defaults=True):
    error: ErrorCode
    detail: str | None = None
    """Which field or header was refused, and why (400 only)."""


class Rejection(_Out, kw_only=True):
    """A decision the engine took against the request (409)."""

    status: Literal["REJECTED"] = "REJECTED"
    code: PublicCode
    message: str
    """One generic message per code; the exact reason is in the operator log."""


# ------------------------------------------------------------ availability


class Availability(_Out, kw_only=True):
    resource_id: ResourceId
    status: Literal["OPEN", "CLOSED", "FULL"]
    remaining: int
    as_of: Timestamp
    """When this was read from the engine; the answer may be cached up to
    RESV_AVAILABILITY_TTL_MS."""


# ------------------------------------------------------------ reservations


class ReservationRequest(_In, kw_only=True):
    resource_id: ResourceId
    quantity: Quantity
    client_id: ClientId


class ReservationOut(_Out, kw_only=True):
    reservation_id: ReservationId
    status: Literal["CONFIRMED", "CANCELLED"]
    resource_id: ResourceId
    quantity: int
    client_id: ClientId
    confirmed_at: Timestamp
    cancelled_at: Timestamp | None = None


# ----------------------------------------------------------- waiting list


class WaitlistJoinRequest(_In, kw_only=True):
    resource_id: ResourceId
    client_id: ClientId
    quantity: Quantity


class WaitlistEntryOut(_Out, kw_only=True):
    entry_id: EntryId
    resource_id: ResourceId
    client_id: ClientId
    quantity: int
    position: int | None
    """1-based place in the waiting list (join order) while WAITING; null otherwise."""
    status: Literal["WAITING", "NOTIFIED", "EXPIRED", "FULFILLED", "LEFT"]
    """EXPIRED: notified, and the notify window passed without a reservation;
    the client may join again."""
    joined_at: Timestamp | None = None
    notified_at: Timestamp | None = None
    expires_at: Timestamp | None = None
    """While NOTIFIED: when the notification lapses."""
    expired_at: Timestamp | None = None


# -------------------------------------------------------------- resources


class ResourceCreate(_In, kw_only=True):
    resource_id: ResourceId
    type: ResourceType
    capacity: Capacity
    opens_at: Moment | None = None
    """Reservations are accepted from then on."""
    closes_at: Moment | None = None
    """Reservations are refused from then on; after opens_at."""
    waitlist_enabled: bool = False
    max_per_request: Limit | None = None
    max_per_client: Limit | None = None
    """Most a client may hold confirmed in total."""
    notify_window_ms: NotifyWindow | None = None
    """null: the default, 900000 (15 minutes)."""


class ResourcePatch(_In, kw_only=True):
    """Any of the rules, or the state. An absent field is left as it is;
    null clears an optional rule (opens_at, closes_at, max_per_request,
    max_per_client) and sets notify_window_ms back to its default. A new
    notify window applies to notifications sent from then on."""

    type: ResourceType | UnsetType = UNSET
    capacity: Capacity | UnsetType = UNSET
    state: Literal["OPEN", "CLOSED"] | UnsetType = UNSET
    opens_at: Moment | None | UnsetType = UNSET
    closes_at: Moment | None | UnsetType = UNSET
    waitlist_enabled: bool | UnsetType = UNSET
    max_per_request: Limit | None | UnsetType = UNSET
    max_per_client: Limit | None | UnsetType = UNSET
    notify_window_ms: NotifyWindow | None | UnsetType = UNSET


class ResourceCreated(_Out, kw_only=True):
    resource_id: ResourceId
    type: str
    capacity: int
    reserved: int
    remaining: int
    state: Literal["OPEN", "CLOSED"]
    version: int
    opens_at: Timestamp | None
    closes_at: Timestamp | None
    waitlist_enabled: bool
    max_per_request: int | None
    max_per_client: int | None
    notify_window_ms: int
    created_at: Timestamp


class ResourceState(_Out, kw_only=True):
    """The resource as the engine holds it (never from a cache)."""

    resource_id: ResourceId
    type: str
    capacity: int
    reserved: int
    remaining: int
    state: Literal["OPEN", "CLOSED"]
    """What the operator set."""
    status: Literal["OPEN", "CLOSED", "FULL"]
    """What clients see now: CLOSED also outside the booking window."""
    version: int
    opens_at: Timestamp | None
    closes_at: Timestamp | None
    waitlist_enabled: bool
    max_per_request: int | None
    max_per_client: int | None
    notify_window_ms: int
    waitlist_length: int
    """Entries WAITING."""
    notified: int
    """Seats promised to outstanding waiting-list notifications: entries are
    notified against remaining minus this."""
    created_at: Timestamp | None
    updated_at: Timestamp | None


# ---------------------------------------------------------------- health


class Health(_Out, kw_only=True):
    status: Literal["ok"] = "ok"


class ArchiverLag(_Out, kw_only=True):
    entries: int
    """Decisions logged in the streams and not yet archived in PostgreSQL."""
    seconds: float
    """Age of the oldest of them, by the server clock (0 when none)."""


class Readiness(_Out, kw_only=True, omit_defaults=True):
    status: Literal["ready", "unavailable"]
    checks: dict[str, Literal["up", "down", "not_configured"]] | None = None
    """Operator key only: redis (PING), library (the Lua functions loaded),
    state (the engine state is not behind the audit), durability (the server
    keeps the RESV_DURABILITY profile's settings), audit (PostgreSQL, only
    when DATABASE_URL is set; reported, not judged)."""
    archiver_lag: ArchiverLag | None = None
    """How far the audit is behind, over all partitions (when Redis is up).
    Reported, not judged: a lagging audit does not make the API unready."""
    problems: list[str] | None = None
    """Why the engine refuses calls, in words for operators (e.g. "engine
    state is behind the audit: run `resv restore`", or the strict-profile
    setting the server lost); absent when it does not."""
    error: Literal["UNAVAILABLE"] | None = None
