"""Helpers for tests that talk to the Lua directly, as an ops script would."""

from __future__ import annotations

import asyncio
from typing import Any

import redis

from resv.engine import keys

PARTITIONS = 16

OWN_SERVERS: set[str] = set()
"""URLs of the Redis servers the suite started (tests/conftest.py): the only
ones a test may wipe."""


def own(r: Any) -> Any:
    """`r`, a client of a server the suite started (tests/conftest.py), for a
    test that wipes it (FLUSHALL, FUNCTION FLUSH); on a RESV_TEST_REDIS_URL
    server the test skips: the suite never wipes a server it did not start."""
    kwargs = r.connection_pool.connection_kwargs
    if f"redis://{kwargs.get('host')}:{kwargs.get('port')}/{kwargs.get('db', 0)}" not in OWN_SERVERS:
        import pytest

        pytest.skip("wipes the whole server: runs only on one the suite started")
    return r


def rkeys(resource_id: str, partitions: int = PARTITIONS) -> list[str]:
    return list(keys.resource_keys(resource_id, partitions))


def as_dict(flat: list[Any]) -> dict[str, str]:
    return {_s(flat[i]): _s(flat[i + 1]) for i in range(0, len(flat), 2)}


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else v


WRITES = frozenset({"resv_create", "resv_configure", "resv_open", "resv_close", "resv_reserve", "resv_cancel",
                    "resv_wl_join", "resv_wl_leave", "resv_wl_sweep"})


def wkeys(resource_id: str, partitions: int = PARTITIONS) -> list[str]:
    """The waiting-list keys a write call takes after its other keys."""
    return list(keys.waitlist_keys(resource_id, partitions))


def call_keys(function: str, resource_id: str, extra_keys: tuple = ()) -> list[str]:
    ks = rkeys(resource_id) + list(extra_keys)
    return ks + wkeys(resource_id) if function in WRITES else ks


def fcall(r: redis.Redis, function: str, resource_id: str, *args: Any, extra_keys: tuple = ()) -> dict[str, str]:
    ks = call_keys(function, resource_id, extra_keys)
    return as_dict(r.execute_command("FCALL", function, len(ks), *ks, resource_id, *args))


def create(r: redis.Redis, rid: str, capacity: int = 10, *, type_: str = "meetup", opens_at: str = "",
           closes_at: str = "", waitlist: bool = False, max_per_request: str = "", max_per_client: str = "") -> dict:
    return fcall(r, "resv_create", rid, type_, str(capacity), opens_at, closes_at,
                 "1" if waitlist else "0", max_per_request, max_per_client)


def reserve(r: redis.Redis, rid: str, client: str, qty: int | str, request_id: str) -> dict:
    req = keys.request_key(rid, request_id, PARTITIONS)
    return fcall(r, "resv_reserve", rid, client, str(qty), request_id, extra_keys=(req,))


def snapshot(r: redis.Redis, *, streams: bool = True) -> dict[str, Any]:
    """Every key's type and full value (streams as their entries)."""
    out: dict[str, Any] = {}
    if isinstance(r, redis.RedisCluster):  # every primary's keys
        found = r.keys("*", target_nodes=redis.RedisCluster.PRIMARIES)
    else:
        found = r.keys("*")
    for key in sorted(found):
        kind = _s(r.type(key))
        if kind == "string":
            value = r.get(key)
        elif kind == "hash":
            value = r.hgetall(key)
        elif kind == "zset":
            value = r.zrange(key, 0, -1, withscores=True)
        elif kind == "stream":
            if not streams:
                continue
            value = r.xrange(key)
        else:
            value = kind
        out[_s(key)] = (kind, value)
    return out


def events(r: redis.Redis, resource_id: str | None = None) -> list[dict[str, str]]:
    """All events of every partition stream, in stream order per partition."""
    out = []
    for p in range(PARTITIONS):
        for sid, fields in r.xrange(keys.stream_key(p)):
            ev = {_s(k): _s(v) for k, v in fields.items()}
            ev["stream_id"] = _s(sid)
            if resource_id is None or ev.get("resource_id") == resource_id:
                out.append(ev)
    return out


async def open_lane(engine: Any, resource_id: str) -> Any:
    """Makes calls until the engine's lane (engine/lane.py) carries them;
    returns the lane. White box: which connection carried the calls."""
    for _ in range(200):
        await engine.resource(resource_id)
        lane = engine._pipe._lane
        if lane is not None and lane.ready:
            return lane
        await asyncio.sleep(0.01)
    raise AssertionError("the lane never opened")
