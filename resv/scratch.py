"""The scratch server `resv verify` and `resv restore` replay on: a private
embedded server with no persistence, started for one replay and removed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis.asyncio import Redis

from resv.embedded import EmbeddedRedis


@asynccontextmanager
async def scratch_server() -> AsyncIterator[Redis]:
    server = EmbeddedRedis(extra_args=("--appendonly", "no"))
    server.start()
    try:
        client = Redis.from_url(server.url, decode_responses=True)
        try:
            yield client
        finally:
            await client.aclose()
    finally:
        server.close()
