"""The waiting list: join, look up, leave.

One active entry per client and resource: joining again returns the same
entry (200 instead of 201). When capacity frees up (a cancellation, a larger
capacity, a notification that lapsed), the engine notifies waiting entries in
join order that fit in what is really free (status NOTIFIED; seats promised to
outstanding notifications do not count); the client then reserves as usual.
A notification grants no right and lasts the resource's notify_window_ms:
then the entry is EXPIRED and the client may join again.
"""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, delete, get, post
from litestar.openapi import ResponseSpec

from resv.api import decisions, docs
from resv.api.auth import actor_of
from resv.api.bodies import StrictJSON, parse
from resv.api.errors import ApiError
from resv.api.schemas import (
    RESOURCE_ID,
    EntryIdPath,
    WaitlistEntryOut,
    WaitlistJoinRequest,
)
from resv.api.services import services
from resv.api.times import iso_or_none
from resv.engine import keys
from resv.engine.codes import Reason
from resv.engine.types import WaitlistLeaveRejected, WaitlistRejected

_REJECTED = (
    "Rejected by the engine: `code` is RESOURCE_CLOSED (closed, or past its closing time) or "
    "INVALID_STATE (unknown resource, waiting list disabled, or over the per-request limit)."
)


def resource_of(entry_id: str) -> str | None:
    resource_id = keys.resource_of_entry(entry_id)
    return resource_id if resource_id is not None and RESOURCE_ID.fullmatch(resource_id) else None


class WaitlistController(Controller):
    path = "/waiting-list"
    tags = ["clients"]
    security = docs.SECURED

    @post("/join", operation_id="joinWaitingList", status_code=201,
          responses={**docs.errors(400, 413, rejection=_REJECTED), 200: ResponseSpec(
              data_container=WaitlistEntryOut, generate_examples=False,
              description="The client already has an entry (WAITING or NOTIFIED): that entry, unchanged.")})
    async def join(
        self, request: Request[Any, Any, Any], data: StrictJSON[WaitlistJoinRequest]
    ) -> Response[WaitlistEntryOut]:
        """Joins the resource's waiting list: 201 with a new entry, or 200
        with the client's existing entry (WAITING or NOTIFIED)."""
        body = parse(WaitlistJoinRequest, data)
        svc = services(request)
        decision = await svc.within_deadline(
            svc.engine.join_waitlist(body.resource_id, body.client_id, body.quantity, actor=actor_of(request.scope)))
        decisions.record(request.scope, decision)
        if isinstance(decision, WaitlistRejected):
            return decisions.rejection(decision)
        return decisions.json(decisions.waitlist_entry(decision), 201 if decision.created else 200)

    @get("/{entry_id:str}", operation_id="getWaitingListEntry", responses=docs.errors(400, 404))
    async def entry(self, request: Request[Any, Any, Any], entry_id: EntryIdPath) -> WaitlistEntryOut:
        """One entry: its status and, while WAITING, its 1-based position."""
        found = None
        if resource_of(entry_id) is not None:
            svc = services(request)
            found = await svc.within_deadline(svc.engine.waitlist_entry(entry_id))
        if found is None:
            raise ApiError(404, "NOT_FOUND")
        return WaitlistEntryOut(
            entry_id=found.entry_id,
            resource_id=found.resource_id,
            client_id=found.client_id,
            quantity=found.quantity,
            position=found.position,
            status=found.status,
            joined_at=iso_or_none(found.joined_at),
            notified_at=iso_or_none(found.notified_at),
            expires_at=iso_or_none(found.expires_at),
            expired_at=iso_or_none(found.expired_at),
        )

    @delete("/{entry_id:str}", operation_id="leaveWaitingList", status_code=200,
            responses=docs.errors(400, 404, rejection="The entry has already become a reservation, or its notification expired (INVALID_STATE)."))
    async def leave(self, request: Request[Any, Any, Any], entry_id: EntryIdPath) -> WaitlistEntryOut:
        """Leaves the waiting list (status LEFT). Repeating it returns the same."""
        if resource_of(entry_id) is None:
            raise ApiError(404, "NOT_FOUND")
        svc = services(request)
        decision = await svc.within_deadline(svc.engine.leave_waitlist(entry_id, actor=actor_of(request.scope)))
        if decision is None:
            raise ApiError(404, "NOT_FOUND")
        decisions.record(request.scope, decision)
        if isinstance(decision, WaitlistLeaveRejected):
            if decision.reason == Reason.UNKNOWN_ENTRY:
                raise ApiError(404, "NOT_FOUND")
            return decisions.rejection(decision)  # type: ignore[return-value]  # a 409 body, not an entry
        return decisions.waitlist_entry(decision)
