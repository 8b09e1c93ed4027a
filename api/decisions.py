"""Engine decisions as HTTP responses: the one place a Decision is turned
into what a client sees.

A rejection is a 409 `Rejection` with the public code and one generic
message per code (`engine.PUBLIC_MESSAGES`); the exact reason (SOLD_OUT,
WINDOW_CLOSED, UNKNOWN_RESOURCE, ...) goes only to the operator log and the
decision metrics, through `record`.
"""

from __future__ import annotations

from typing import Any, TypeVar, cast

import msgspec
from litestar import Response
from litestar.enums import MediaType
from litestar.types import Scope

from resv.api import metrics, oplog
from resv.api.schemas import Rejection, ReservationOut, WaitlistEntryOut
from resv.api.times import iso_from_us, iso_or_none
from resv.engine.codes import PublicCode
from resv.engine.errors import PUBLIC_MESSAGES
from resv.engine.types import Decision, DecisionBase, EntryDecision, ReservationCancelled, ReservationConfirmed

_encode = msgspec.json.Encoder().encode
T = TypeVar("T")

# Pre-encoded: there are only three.
_REJECTIONS = {code: _encode(Rejection(code=code, message=message)) for code, message in PUBLIC_MESSAGES.items()}


def record(scope: Scope, decision: Decision) -> None:
    """Counts the decision and adds it to the request's log line."""
    oplog.note(scope).decision = decision
    metrics.decision(decision.type, decision.decision, decision.code)


def json(body: T, status: int, headers: dict[str, str] | None = None) -> Response[T]:
    """The body encoded once, here (a handler returning a Response with its
    own status and headers); typed as the body it carries."""
    response = Response(_encode(body), status_code=status, media_type=MediaType.JSON, headers=headers)
    return cast("Response[T]", response)


def rejection(decision: DecisionBase) -> Response[Any]:
    code = decision.code or PublicCode.INVALID_STATE
    return Response(_REJECTIONS[code], status_code=409, media_type=MediaType.JSON)


def confirmed(decision: ReservationConfirmed) -> ReservationOut:
    """A new reservation, from its confirmation."""
    return ReservationOut(
        reservation_id=decision.reservation_id,
        status="CONFIRMED",
        resource_id=decision.resource_id,
        quantity=decision.quantity,
        client_id=decision.client_id,
        confirmed_at=iso_from_us(decision.ts),
        cancelled_at=None,
    )


def cancelled(decision: ReservationCancelled) -> ReservationOut:
    """The reservation as a cancellation (or its replay) left it."""
    return ReservationOut(
        reservation_id=decision.reservation_id,
        status=decision.status,
        resource_id=decision.resource_id,
        quantity=decision.quantity,
        client_id=decision.client_id,
        confirmed_at=iso_from_us(decision.confirmed_at),
        cancelled_at=iso_or_none(decision.cancelled_at),
    )


def waitlist_entry(decision: EntryDecision) -> WaitlistEntryOut:
    return WaitlistEntryOut(
        entry_id=decision.entry_id,
        resource_id=decision.resource_id,
        client_id=decision.client_id,
        quantity=decision.quantity,
        position=decision.position,
        status=decision.status,
        joined_at=iso_or_none(decision.joined_at),
        notified_at=iso_or_none(decision.notified_at),
        expires_at=iso_or_none(decision.expires_at),
        expired_at=iso_or_none(decision.expired_at),
    )
