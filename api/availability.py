"""GET /availability: the hot read, served from the per-process cache."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, get
from litestar.enums import MediaType

from resv.api import docs
from resv.api.schemas import Availability, ResourceIdQuery
from resv.api.services import services
from resv.engine.errors import EngineRefused


class AvailabilityController(Controller):
    path = "/availability"
    tags = ["clients"]
    security = docs.SECURED

    @get(operation_id="getAvailability", responses=docs.errors(400, 404))
    async def availability(
        self,
        request: Request[Any, Any, Any],
        resource_id: ResourceIdQuery,
    ) -> Response[Availability]:
        """Whether a resource takes reservations now, and how much is left.

        Served from a per-process cache (RESV_AVAILABILITY_TTL_MS, default
        500 ms), so it may be that stale; `as_of` says when it was read. The
        reservation itself is always decided on the real state. While the
        engine state is behind the audit, 503 like every engine read, cache
        or not: a cached answer could predate the loss."""
        svc = services(request)
        refusal = svc.engine.refusal
        if refusal is not None and refusal.reads:
            raise EngineRefused("; ".join(refusal.problems))
        status, body = await svc.availability.get(resource_id)
        return Response(body, status_code=status, media_type=MediaType.JSON)  # type: ignore[return-value]
