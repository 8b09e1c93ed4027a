"""Engine decisions as HTTP responses: the one place a Decision is turned
into what a client sees.

A rejection is a 409 `Rejection` with the public code and one generic
message per code (`engine.PUBLIC_MESSAGES`); the exact reason (SOLD_OUT,
WINDOW_CLOSED, UNKNOWN_RESOURCE, ...) goes only to the operator log and the
decision metrics, through `record`.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Response
from litestar.enums import MediaType
from litestar.types import Scope

from resv.api import metrics, oplog
from resv.api.schemas import Rejection, ReservationOut, WaitlistEntryOut
from resv.api.times import iso_from_us, iso_or_none
from resv.engine.errors import PUBLIC_MESSAGES
from resv.engine.types import Decision

_encode = msgspec.json.Encoder().encode

_PUBLIC_CODES = frozenset(PUBLIC_MESSAGES)

# Pre-encoded: there are only three.
_REJECTIONS = {
    code: _encode(Rejection(code=code, message=message))  # type: ignore[arg-type]
    for code, message in PUBLIC_MESSAGES.items()
}


def record(scope: Scope, decision: Decision) -> None:
    """Counts the decision and adds it to the request's log line."""
    oplog.note(scope).decision = decision
    metrics.decision(decision.type, decision.decision, decision.code)


def json(body: Any, status: int, headers: dict[str, str] | None = None) -> Response[bytes]:
    return Response(_encode(body), status_code=status, media_type=MediaType.JSON, headers=headers)


def rejection(decision: Decision) -> Response[bytes]:
    code = decision.code if decision.code in _PUBLIC_CODES else "INVALID_STATE"
    return Response(_REJECTIONS[code], status_code=409, media_type=MediaType.JSON)


def reservation(decision: Decision) -> ReservationOut:
    """A confirmed reservation, or a cancellation, from its decision."""
    confirmed = decision.type == "RESERVATION_CONFIRMED"
    return ReservationOut(
        reservation_id=decision.reservation_id,  # type: ignore[arg-type]
        status="CONFIRMED" if confirmed else decision.status,  # type: ignore[arg-type]
        resource_id=decision.resource_id,  # type: ignore[arg-type]
        quantity=decision.quantity,  # type: ignore[arg-type]
        client_id=decision.client_id,  # type: ignore[arg-type]
        confirmed_at=iso_from_us(decision.ts if confirmed else decision.confirmed_at),  # type: ignore[arg-type]
        cancelled_at=None if confirmed else iso_or_none(decision.cancelled_at),
    )


def waitlist_entry(decision: Decision) -> WaitlistEntryOut:
    return WaitlistEntryOut(
        entry_id=decision.entry_id,  # type: ignore[arg-type]
        resource_id=decision.resource_id,  # type: ignore[arg-type]
        client_id=decision.client_id,  # type: ignore[arg-type]
        quantity=decision.quantity,  # type: ignore[arg-type]
        position=decision.position,
        status=decision.status,  # type: ignore[arg-type]
        joined_at=iso_or_none(decision.joined_at),
        notified_at=iso_or_none(decision.notified_at),
        expires_at=iso_or_none(decision.expires_at),
        expired_at=iso_or_none(decision.expired_at),
    )
