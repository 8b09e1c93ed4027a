"""Resources (operator keys): create, read the source of truth, change rules.

Every change is a compare-and-set on the resource's version: GET gives the
version as `ETag: "<n>"`, PATCH must send it back as `If-Match` (`3` or
`"3"`) and makes exactly one engine call, so one version bump per PATCH.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from litestar import Controller, Request, Response, get, patch, post
from litestar.datastructures import ResponseHeader
from litestar.params import HeaderParameter
from msgspec import UNSET

from resv.api import decisions, docs
from resv.api.auth import actor_of, operator_only
from resv.api.bodies import StrictJSON, parse
from resv.api.errors import ApiError
from resv.api.schemas import (
    ResourceCreate,
    ResourceCreated,
    ResourceIdPath,
    ResourcePatch,
    ResourceState,
)
from resv.api.services import services
from resv.api.times import iso_from_us, iso_or_none, us_from_datetime
from resv.engine.codes import Reason
from resv.engine.types import Resource, ResourceRejected, ResourceSpec, RulesRejected

_IF_MATCH = re.compile(r' *("?)([0-9]{1,10})\1 *')

IfMatch = Annotated[
    str | None,
    HeaderParameter(
        name="If-Match",
        required=False,
        description='The version read from ETag, as `3` or `"3"`. Required (428 without it).',
        schema_extra={"examples": ['"3"'], "pattern": '^ *("?)[0-9]{1,10}\\1 *$'},
    ),
]

_TIMES = ("opens_at", "closes_at")

ETAG_HEADER = [ResponseHeader(name="ETag", description='The version, quoted: `"3"`.', documentation_only=True)]


def etag(version: int) -> dict[str, str]:
    return {"ETag": f'"{version}"'}


def parse_if_match(value: str | None) -> int:
    if value is None:
        raise ApiError(428, "PRECONDITION_REQUIRED")
    matched = _IF_MATCH.fullmatch(value)
    if matched is None:
        raise ApiError(400, "BAD_REQUEST", 'header If-Match: expected the version from ETag, e.g. "3"')
    return int(matched.group(2))


def state_of(resource: Resource) -> ResourceState:
    return ResourceState(
        resource_id=resource.resource_id,
        type=resource.resource_type,
        capacity=resource.capacity,
        reserved=resource.reserved,
        remaining=resource.remaining,
        state=resource.state,
        status=resource.status,
        version=resource.version,
        opens_at=iso_or_none(resource.opens_at),
        closes_at=iso_or_none(resource.closes_at),
        waitlist_enabled=resource.waitlist_enabled,
        max_per_request=resource.max_per_request,
        max_per_client=resource.max_per_client,
        notify_window_ms=resource.notify_window_ms,
        waitlist_length=resource.waitlist_length,
        notified=resource.notified,
        created_at=iso_or_none(resource.created_at),
        updated_at=iso_or_none(resource.updated_at),
    )


class ResourceController(Controller):
    path = "/resources"
    tags = ["operators"]
    guards = [operator_only]
    security = docs.SECURED

    @post(operation_id="createResource", status_code=201,
          responses=docs.errors(400, 403, 413, conflict="A resource with this id exists (`ALREADY_EXISTS`)."),
          response_headers=ETAG_HEADER)
    async def create(
        self, request: Request[Any, Any, Any], data: StrictJSON[ResourceCreate]
    ) -> Response[ResourceCreated]:
        """Creates a resource: OPEN, version 1, nothing reserved."""
        body = parse(ResourceCreate, data)
        opens_at = us_from_datetime(body.opens_at) if body.opens_at is not None else None
        closes_at = us_from_datetime(body.closes_at) if body.closes_at is not None else None
        if opens_at is not None and closes_at is not None and opens_at >= closes_at:
            raise ApiError(400, "BAD_REQUEST", "closes_at: must be after opens_at")
        spec = ResourceSpec(
            resource_id=body.resource_id,
            type=body.type,
            capacity=body.capacity,
            opens_at=opens_at,
            closes_at=closes_at,
            waitlist_enabled=body.waitlist_enabled,
            max_per_request=body.max_per_request,
            max_per_client=body.max_per_client,
            notify_window_ms=body.notify_window_ms,
        )
        svc = services(request)
        decision = await svc.within_deadline(svc.engine.create_resource(spec, actor=actor_of(request.scope)))
        decisions.record(request.scope, decision)
        if isinstance(decision, ResourceRejected):
            if decision.reason == Reason.ALREADY_EXISTS:
                raise ApiError(409, "ALREADY_EXISTS")
            raise ApiError(409, "INVALID_STATE")
        created = ResourceCreated(
            resource_id=decision.resource_id,
            type=decision.resource_type,
            capacity=decision.capacity,
            reserved=0,
            remaining=decision.remaining,
            state=decision.state,
            version=decision.version,
            opens_at=iso_or_none(decision.opens_at),
            closes_at=iso_or_none(decision.closes_at),
            waitlist_enabled=decision.waitlist_enabled,
            max_per_request=decision.max_per_request,
            max_per_client=decision.max_per_client,
            notify_window_ms=decision.notify_window_ms or 900_000,
            created_at=iso_from_us(decision.ts),
        )
        return decisions.json(created, 201, etag(decision.version))

    @get("/{resource_id:str}", operation_id="getResource", responses=docs.errors(400, 403, 404),
         response_headers=ETAG_HEADER)
    async def resource(self, request: Request[Any, Any, Any], resource_id: ResourceIdPath) -> Response[ResourceState]:
        """The full state, read from the engine (never from a cache). The
        version is also in the ETag header."""
        svc = services(request)
        found = await svc.within_deadline(svc.engine.resource(resource_id))
        if found is None:
            raise ApiError(404, "NOT_FOUND")
        return decisions.json(state_of(found), 200, etag(found.version))

    @patch(
        "/{resource_id:str}",
        operation_id="updateResource",
        responses=docs.errors(400, 403, 404, 412, 413, 428,
                              conflict="Capacity below what is reserved (`INVALID_STATE`)."),
        response_headers=ETAG_HEADER,
    )
    async def update(
        self,
        request: Request[Any, Any, Any],
        resource_id: ResourceIdPath,
        data: StrictJSON[ResourcePatch],
        if_match: IfMatch = None,
    ) -> Response[ResourceState]:
        """Changes rules and/or the state in one versioned step. Absent
        fields stay; null clears an optional rule."""
        changed = parse(ResourcePatch, data)
        expected = parse_if_match(if_match)
        changes: dict[str, Any] = {}
        for name in ResourcePatch.__struct_fields__:
            value = getattr(changed, name)
            if value is UNSET:
                continue
            if name in _TIMES and value is not None:
                value = us_from_datetime(value)
            changes[name] = value
        if not changes:
            raise ApiError(400, "BAD_REQUEST", "body: give at least one field to change")
        if changes.get("opens_at") is not None and changes.get("closes_at") is not None \
                and changes["opens_at"] >= changes["closes_at"]:
            raise ApiError(400, "BAD_REQUEST", "closes_at: must be after opens_at")
        svc = services(request)
        decision = await svc.within_deadline(
            svc.engine.configure(resource_id, expected, changes, actor=actor_of(request.scope)))
        decisions.record(request.scope, decision)
        if isinstance(decision, RulesRejected):
            if decision.reason == Reason.UNKNOWN_RESOURCE:
                raise ApiError(404, "NOT_FOUND")
            if decision.reason == Reason.VERSION_MISMATCH:
                raise ApiError(412, "VERSION_MISMATCH", headers=etag(decision.version) if decision.version else None)
            if decision.reason == Reason.WINDOW_INVERTED:  # logged, as every refusal; the body was well-formed
                raise ApiError(400, "BAD_REQUEST", "closes_at: must be after opens_at (as stored, with this change)")
            raise ApiError(409, "INVALID_STATE")
        found = await svc.within_deadline(svc.engine.resource(resource_id))
        if found is None:  # cannot happen: resources are never deleted
            raise ApiError(404, "NOT_FOUND")
        return decisions.json(state_of(found), 200, etag(found.version))
