"""The baseline of `make bench-api`: a bare Litestar echo app.

It shares nothing with resv but the server settings (`benchmarks.api` runs
it through the same `resv serve` server code path: same server, event loop,
HTTP parser and worker count). No middleware, no key check, no log, no
metrics: what Litestar itself costs for a GET with a query parameter and a
POST with a JSON body decoded into a Struct, both answering JSON. It imports
nothing from resv, so nothing of ours can hide in the baseline.
"""

from __future__ import annotations

import msgspec
from litestar import Litestar, get, post


class Booking(msgspec.Struct, forbid_unknown_fields=True):
    resource_id: str
    quantity: int
    client_id: str


@get("/echo")
async def echo_get(resource_id: str) -> dict[str, str]:
    return {"resource_id": resource_id}


@post("/echo", status_code=201)
async def echo_post(data: Booking) -> Booking:
    return data


app = Litestar(route_handlers=[echo_get, echo_post], debug=False, logging_config=None, openapi_config=None)
