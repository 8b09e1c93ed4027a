"""GET /availability and its per-process cache."""

from __future__ import annotations

import asyncio

from resv.api.cache import AvailabilityCache
from resv.engine.types import Resource
from tests.api_support import CL, ISO_UTC_US, OP, api, create_resource, reserve


async def availability(c, resource_id="gig"):
    return await c.get(f"/availability?resource_id={resource_id}", headers=CL)


async def test_availability_body(redis_url):
    async with api(redis_url) as c:
        await create_resource(c, "gig", 2)
        r = await availability(c)
        assert r.status_code == 200
        body = r.json()
        assert set(body) == {"resource_id", "status", "remaining", "as_of"}
        assert (body["resource_id"], body["status"], body["remaining"]) == ("gig", "OPEN", 2)
        assert ISO_UTC_US.fullmatch(body["as_of"])
        missing = await availability(c, "nowhere")
        assert (missing.status_code, missing.json()) == (404, {"error": "NOT_FOUND"})


async def test_stale_within_the_ttl_fresh_after(redis_url):
    async with api(redis_url, availability_ttl_ms=300) as c:
        await create_resource(c, "gig", 2)
        first = (await availability(c)).json()
        assert (await reserve(c, "gig", "ann", 2)).status_code == 201
        cached = (await availability(c)).json()
        assert cached == first  # served from the cache: same remaining, same as_of
        await asyncio.sleep(0.35)
        fresh = (await availability(c)).json()
        assert (fresh["remaining"], fresh["status"]) == (0, "FULL")
        assert fresh["as_of"] > first["as_of"]


async def test_not_found_is_cached_too(redis_url):
    async with api(redis_url, availability_ttl_ms=300) as c:
        assert (await availability(c, "later")).status_code == 404
        await create_resource(c, "later", 1)
        assert (await availability(c, "later")).status_code == 404
        await asyncio.sleep(0.35)
        assert (await availability(c, "later")).status_code == 200


async def test_ttl_zero_disables_the_cache(redis_url):
    async with api(redis_url, availability_ttl_ms=0) as c:
        await create_resource(c, "gig", 2)
        assert (await availability(c)).json()["remaining"] == 2
        await reserve(c, "gig", "ann", 1)
        assert (await availability(c)).json()["remaining"] == 1
        created = await c.get("/resources/gig", headers=OP)
        await c.patch("/resources/gig", headers={**OP, "If-Match": created.headers["etag"]}, json={"state": "CLOSED"})
        assert (await availability(c)).json()["status"] == "CLOSED"


async def test_cache_hits_and_misses_are_counted(redis_url):
    async with api(redis_url, availability_ttl_ms=60_000) as c:
        await create_resource(c, "gig", 2)
        before = await _cache_counts(c)
        for _ in range(5):
            await availability(c)
        after = await _cache_counts(c)
        assert after["miss"] - before["miss"] == 1
        assert after["hit"] - before["hit"] == 4


async def _cache_counts(c) -> dict[str, float]:
    text = (await c.get("/metrics", headers=OP)).text
    counts = {"hit": 0.0, "miss": 0.0}
    for line in text.splitlines():
        if line.startswith("resv_availability_cache_total{"):
            labels, value = line.rsplit(" ", 1)
            counts["hit" if 'result="hit"' in labels else "miss"] += float(value)
    return counts


def _resource(resource_id: str, remaining: int) -> Resource:
    return Resource(resource_id=resource_id, resource_type="t", capacity=10, reserved=10 - remaining,
                    remaining=remaining, state="OPEN", status="OPEN", version=1, now=1_700_000_000_000_000)


async def test_concurrent_misses_share_one_read():
    reads = []

    async def read(resource_id):
        reads.append(resource_id)
        await asyncio.sleep(0.05)
        return _resource(resource_id, 3)

    cache = AvailabilityCache(read, ttl_ms=1000)
    answers = await asyncio.gather(*(cache.get("gig") for _ in range(50)))
    assert reads == ["gig"]
    assert {status for status, _ in answers} == {200}
    assert len({body for _, body in answers}) == 1


async def test_a_failed_read_is_not_cached():
    calls = 0

    async def read(resource_id):
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("down")
        return _resource(resource_id, 1)

    cache = AvailabilityCache(read, ttl_ms=1000)
    try:
        await cache.get("gig")
    except ConnectionError:
        pass
    assert (await cache.get("gig"))[0] == 200
    assert calls == 2


async def test_the_cache_is_bounded():
    now = [0.0]

    async def read(resource_id):
        return None

    cache = AvailabilityCache(read, ttl_ms=1000, max_entries=3, clock=lambda: now[0])
    for n in range(10):
        await cache.get(f"r{n}")
    assert len(cache._entries) <= 3
    now[0] = 5.0  # all expired: the next fill drops them all
    await cache.get("fresh")
    assert list(cache._entries) == ["fresh"]

