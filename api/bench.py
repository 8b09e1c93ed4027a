"""In-app echo routes (RESV_BENCH_ECHO=1 only): they go through the same
server, middleware, key check, operator log, parameters and body validation
as GET /availability and POST /reservations, and build their response the
same way, but do no engine work. Not a ceiling (they are our own code): the
baseline of `make bench-api` is a bare Litestar app (`benchmarks/bare_app.py`);
these rows show how much of the difference our layers are."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.enums import MediaType

from resv.api import docs
from resv.api.bodies import StrictJSON, parse
from resv.api.reservations import IdempotencyKey
from resv.api.schemas import ReservationRequest, ResourceIdQuery

_encode = msgspec.json.Encoder().encode


class BenchEchoController(Controller):
    path = "/bench/echo"
    tags = ["operations"]
    security = docs.SECURED
    include_in_schema = False

    @get(operation_id="benchEchoGet")
    async def echo_get(self, request: Request[Any, Any, Any], resource_id: ResourceIdQuery) -> Response[bytes]:
        return Response(_encode({"resource_id": resource_id}), media_type=MediaType.JSON)

    @post(operation_id="benchEchoPost", status_code=201)
    async def echo_post(
        self,
        request: Request[Any, Any, Any],
        data: StrictJSON[ReservationRequest],
        idempotency_key: IdempotencyKey = None,
    ) -> Response[bytes]:
        return Response(_encode(parse(ReservationRequest, data)), status_code=201, media_type=MediaType.JSON)
