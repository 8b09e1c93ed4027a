"""Reservations: the commit (POST), its reading and its cancellation.

Idempotency: `Idempotency-Key` becomes the engine's request id. The Lua
remembers each request id's decision (24 h by default,
RESV_IDEMPOTENCY_TTL_MS) and replays it: a retry with the same key and body
gets the same status and body, whatever happened since; the same key with
another client_id or quantity is refused (422). Request ids are scoped per
resource: the same key sent for two resources makes two independent
requests. Without the header every request gets a fresh random request id
(128 bits, like a uuid4), and a retry is a new reservation. A request whose outcome is unknown (503
after the deadline) is safe to retry with the same key; the engine's own
retries of a lost reply re-send the same request id.
"""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, Response, get, post
from litestar.params import HeaderParameter

from resv.api import decisions, docs, oplog
from resv.api.auth import actor_of
from resv.api.bodies import StrictJSON, parse
from resv.api.errors import ApiError, error_response
from resv.api.ids import new_request_id
from resv.api.schemas import (
    PRINTABLE_ID,
    RESOURCE_ID,
    ReservationIdPath,
    ReservationOut,
    ReservationRequest,
)
from resv.api.services import services
from resv.api.times import iso_from_us, iso_or_none
from resv.engine import keys
from resv.engine.codes import Reason
from resv.engine.limits import MAX_ID, PRINTABLE
from resv.engine.types import CancelRejected, ReservationConfirmed

IDEMPOTENCY_KEY = PRINTABLE_ID
"""The Lua's request id rule: 1-MAX_ID printable ASCII characters, no spaces."""

_REJECTED = (
    "Rejected by the engine: `code` is RESOURCE_FULL (not enough left), RESOURCE_CLOSED "
    "(closed, or outside the booking window) or INVALID_STATE (unknown resource, or a "
    "per-request or per-client limit)."
)

IdempotencyKey = Annotated[
    str | None,
    HeaderParameter(
        name="Idempotency-Key",
        required=False,
        description=f"1-{MAX_ID} printable ASCII characters without spaces; scoped to the resource. "
        "A retry with the same key and body returns the original status and body.",
        schema_extra={"maxLength": MAX_ID, "minLength": 1, "pattern": f"^[{PRINTABLE}]{{1,{MAX_ID}}}$"},
    ),
]


def resource_of(reservation_id: str) -> str | None:
    """The resource a reservation id belongs to, or None when the id cannot
    name a reservation (then it is unknown: 404)."""
    resource_id = keys.resource_of_reservation(reservation_id)
    return resource_id if resource_id is not None and RESOURCE_ID.fullmatch(resource_id) else None


class ReservationController(Controller):
    path = "/reservations"
    tags = ["clients"]
    security = docs.SECURED

    @post(
        operation_id="createReservation",
        status_code=201,
        responses=docs.errors(400, 413, 422, rejection=_REJECTED),
    )
    async def reserve(
        self,
        request: Request[Any, Any, Any],
        data: StrictJSON[ReservationRequest],
        idempotency_key: IdempotencyKey = None,
    ) -> Response[ReservationOut]:
        """Reserves `quantity` of a resource for a client: confirmed (201) or
        rejected (409), decided on the real state at server time."""
        body = parse(ReservationRequest, data)
        if idempotency_key is None:
            request_id = new_request_id()
        elif IDEMPOTENCY_KEY.fullmatch(idempotency_key):
            request_id = idempotency_key
        else:
            raise ApiError(400, "BAD_REQUEST",
                           f"header Idempotency-Key: must be 1-{MAX_ID} printable ASCII characters without spaces")
        oplog.note(request.scope).request_id = request_id
        svc = services(request)
        with svc.deadline.guard():
            decision = await svc.engine.reserve(body.resource_id, body.client_id, body.quantity, request_id,
                                                actor=actor_of(request.scope))
        decisions.record(request.scope, decision)
        if isinstance(decision, ReservationConfirmed):
            return decisions.json(decisions.confirmed(decision), 201)
        if decision.reason == Reason.REQUEST_ID_REUSED:
            return error_response(422, "IDEMPOTENCY_KEY_REUSED")  # type: ignore[return-value]  # an error body
        return decisions.rejection(decision)

    @get("/{reservation_id:str}", operation_id="getReservation", responses=docs.errors(400, 404))
    async def reservation(self, request: Request[Any, Any, Any], reservation_id: ReservationIdPath) -> ReservationOut:
        """One reservation, as the engine holds it."""
        found = None
        if resource_of(reservation_id) is not None:
            svc = services(request)
            found = await svc.within_deadline(svc.engine.reservation(reservation_id))
        if found is None:
            raise ApiError(404, "NOT_FOUND")
        return ReservationOut(
            reservation_id=found.reservation_id,
            status=found.status,
            resource_id=found.resource_id,
            quantity=found.quantity,
            client_id=found.client_id,
            confirmed_at=iso_from_us(found.confirmed_at),
            cancelled_at=iso_or_none(found.cancelled_at),
        )

    @post(
        "/{reservation_id:str}/cancel",
        operation_id="cancelReservation",
        status_code=200,
        responses=docs.errors(400, 404, rejection="The engine refused the cancellation."),
    )
    async def cancel(self, request: Request[Any, Any, Any], reservation_id: ReservationIdPath) -> ReservationOut:
        """Cancels a reservation and frees its quantity (waiting clients that
        fit are notified). Repeating it returns the same cancellation."""
        if resource_of(reservation_id) is None:
            raise ApiError(404, "NOT_FOUND")
        svc = services(request)
        decision = await svc.within_deadline(svc.engine.cancel(reservation_id, actor=actor_of(request.scope)))
        if decision is None:
            raise ApiError(404, "NOT_FOUND")
        decisions.record(request.scope, decision)
        if isinstance(decision, CancelRejected):
            if decision.reason == Reason.UNKNOWN_RESERVATION:
                raise ApiError(404, "NOT_FOUND")
            return decisions.rejection(decision)  # type: ignore[return-value]  # a 409 body, not a ReservationOut
        return decisions.cancelled(decision)
