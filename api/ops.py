"""Operator routes over the audit (operator keys): a resource's complete,
ordered history, and where a request's decision sits in it. Both run under
the request deadline (RESV_REQUEST_DEADLINE_S: 503 past it) and page.

The logic lives in the archiver's read side (resv.archiver.reads) (shared with `resv timeline`): the
archived events in PostgreSQL merged with the not-yet-archived stream tail,
so the history is complete even while the archiver lags, and the stream
alone when DATABASE_URL is unset.
"""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, get
from litestar.params import Parameter, QueryParameter
from redis.exceptions import RedisError

from resv.api import docs
from resv.api.auth import operator_only
from resv.api.errors import ApiError
from resv.api.schemas import PRINTABLE_ID_PATTERN, RESOURCE_ID_PATTERN, ResourceIdParam
from resv.api.services import services
from resv.archiver.reads import (
    MAX_LIMIT,
    AuditUnavailable,
    InvalidCursor,
    RequestDecisions,
    TimelinePage,
)
from resv.engine.errors import translate
from resv.engine.limits import MAX_ID, MAX_RESOURCE_ID

RequestIdParam = Annotated[str, Parameter(
    min_length=1, max_length=MAX_ID, pattern=PRINTABLE_ID_PATTERN,
    description="The request id a reservation was made with (its Idempotency-Key).")]
AfterParam = Annotated[str | None, QueryParameter(
    required=False, max_length=64,
    description="`next` of the previous page; absent for the first page.")]
LimitParam = Annotated[int, QueryParameter(
    ge=1, le=MAX_LIMIT, description=f"Events per page, 1-{MAX_LIMIT}.")]
ResourceFilterParam = Annotated[str | None, QueryParameter(
    required=False, min_length=1, max_length=MAX_RESOURCE_ID, pattern=RESOURCE_ID_PATTERN,
    description="The request's resource: looks in its partition only.")]

class OpsController(Controller):
    path = "/ops"
    tags = ["operations"]
    guards = [operator_only]
    security = docs.SECURED

    @get("/resources/{resource_id:str}/timeline", operation_id="getResourceTimeline",
         responses=docs.errors(400, 403))
    async def timeline(self, request: Request[Any, Any, Any], resource_id: ResourceIdParam,
                       after: AfterParam = None, limit: LimitParam = 100) -> TimelinePage:
        """Every event of the resource (decisions and their consequences), in
        commit order (stream id), archived or not yet. Pages with `next`
        (null on the last page)."""
        svc = services(request)
        try:
            return await svc.within_deadline(svc.audit.timeline(resource_id, after=after, limit=limit))
        except InvalidCursor:
            raise ApiError(400, "BAD_REQUEST", "query parameter after: not a cursor from a previous page") from None
        except AuditUnavailable as exc:
            raise translate(ConnectionError(str(exc))) from exc
        except (RedisError, OSError) as exc:
            raise translate(exc) from exc

    @get("/requests/{request_id:str}", operation_id="getRequestDecisions",
         responses=docs.errors(400, 403, 404))
    async def request_place(self, request: Request[Any, Any, Any], request_id: RequestIdParam,
                            resource_id: ResourceFilterParam = None, after: AfterParam = None,
                            limit: LimitParam = 100) -> RequestDecisions:
        """The decision(s) logged under this request id (a retried request
        also logs its replays), oldest first, each with its partition, stream
        id and position among its resource's decisions (1-based). Pages with
        `next` (null on the last page). Without PostgreSQL each partition's
        stream is read once per page, within the request deadline (503 past
        it): give `resource_id` to read one partition only."""
        svc = services(request)
        try:
            found = await svc.within_deadline(svc.audit.request_decisions(
                request_id, resource_id=resource_id, after=after, limit=limit))
        except InvalidCursor:
            raise ApiError(400, "BAD_REQUEST", "query parameter after: not a cursor from a previous page") from None
        except AuditUnavailable as exc:
            raise translate(ConnectionError(str(exc))) from exc
        except (RedisError, OSError) as exc:
            raise translate(exc) from exc
        if not found.decisions:
            raise ApiError(404, "NOT_FOUND")
        return found
