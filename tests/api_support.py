"""Helpers for the HTTP API tests: an app on the test Redis, keys, resources."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from litestar.testing import AsyncTestClient

from resv.api.app import create_app
from resv.api.settings import ApiSettings, parse_api_keys
from resv.engine import Engine
from resv.engine.settings import Settings as EngineSettings

OPERATOR_KEY = "op-secret-4f2a9e"
CLIENT_KEY = "web-secret-9c1d77"
OP = {"Authorization": f"Bearer {OPERATOR_KEY}"}
CL = {"Authorization": f"Bearer {CLIENT_KEY}"}

ISO_UTC_US = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")

# What no response body may ever contain (internals, traces, key names).
LEAKS = ("Traceback", "redis", "lua", "resv:", "{p", "psycopg", "/work", ".py")


def settings(redis_url: str, **overrides: Any) -> ApiSettings:
    engine = overrides.pop("engine", None) or EngineSettings(redis_url=redis_url)
    values: dict[str, Any] = {
        "engine": engine,
        "api_keys": parse_api_keys(f"operator:{OPERATOR_KEY},client:{CLIENT_KEY}"),
    }
    values.update(overrides)
    return ApiSettings(**values)


@asynccontextmanager
async def api(redis_url: str, *, engine: Engine | None = None, **overrides: Any) -> AsyncIterator[AsyncTestClient]:
    """A started app (lifespan run) and a client for it."""
    app = create_app(settings(redis_url, **overrides), engine=engine)
    async with AsyncTestClient(app, raise_server_exceptions=False) as client:
        yield client


async def create_resource(client: AsyncTestClient, resource_id: str = "gig", capacity: int = 10,
                          **rules: Any) -> dict[str, Any]:
    response = await client.post("/resources", headers=OP,
                                 json={"resource_id": resource_id, "type": "meetup", "capacity": capacity, **rules})
    assert response.status_code == 201, response.text
    return response.json()


async def reserve(client: AsyncTestClient, resource_id: str = "gig", client_id: str = "ann", quantity: int = 1,
                  key: str | None = None, headers: dict[str, str] | None = None):
    extra = {"Idempotency-Key": key} if key is not None else {}
    return await client.post("/reservations", headers={**(headers or CL), **extra},
                             json={"resource_id": resource_id, "quantity": quantity, "client_id": client_id})


def assert_no_leak(text: str) -> None:
    lowered = text.lower()
    for needle in LEAKS:
        assert needle.lower() not in lowered, f"{needle!r} in response body: {text[:300]}"
