"""Bad input, size limits, unknown routes, Redis failures, and what bodies
never contain."""

from __future__ import annotations

import logging
import os
import signal
import time

import pytest
import redis

from resv.embedded import EmbeddedRedis, free_port
from resv.engine import Engine
from resv.engine.engine import NOT_CHECKED
from resv.engine.limits import MAX_INT
from resv.engine.settings import Settings as EngineSettings
from tests.api_support import CL, OP, api, assert_no_leak, create_resource, reserve

GOOD = {"resource_id": "gig", "quantity": 1, "client_id": "ann"}

BAD_RESERVATIONS = {
    "quantity zero": ({**GOOD, "quantity": 0}, "quantity"),
    "quantity too large": ({**GOOD, "quantity": MAX_INT + 1}, "quantity"),  # the Lua's bound
    "quantity string": ({**GOOD, "quantity": "1"}, "quantity"),
    "quantity float": ({**GOOD, "quantity": 1.5}, "quantity"),
    "quantity null": ({**GOOD, "quantity": None}, "quantity"),
    "quantity huge": ({**GOOD, "quantity": 10**30}, "quantity"),
    "client id too long": ({**GOOD, "client_id": "c" * 129}, "client_id"),
    "client id empty": ({**GOOD, "client_id": ""}, "client_id"),
    "client id space": ({**GOOD, "client_id": "a b"}, "client_id"),
    "client id control": ({**GOOD, "client_id": "a\x00b"}, "client_id"),
    "client id newline": ({**GOOD, "client_id": "ab\n"}, "client_id"),
    "client id unicode": ({**GOOD, "client_id": "caf\u00e9"}, "client_id"),
    "resource id too long": ({**GOOD, "resource_id": "r" * 65}, "resource_id"),
    "resource id slash": ({**GOOD, "resource_id": "a/b"}, "resource_id"),
    "resource id key-like": ({**GOOD, "resource_id": "x}:res:{p1"}, "resource_id"),
    "unknown field": ({**GOOD, "note": "hi"}, "note"),
    "missing field": ({"resource_id": "gig", "quantity": 1}, "client_id"),
    "not an object": ([GOOD], "body"),
}


async def test_bad_reservation_bodies_are_400_naming_the_field(redis_url):
    async with api(redis_url) as c:
        await create_resource(c, "gig", 5)
        for name, (body, field) in BAD_RESERVATIONS.items():
            r = await c.post("/reservations", headers=CL, json=body)
            assert r.status_code == 400, name
            assert r.json()["error"] == "BAD_REQUEST"
            assert field in r.json()["detail"], (name, r.json())
            assert_no_leak(r.text)
        for raw in (b"{not json", b"", b'{"resource_id": "gig", "quantity": 1, ', b"\xff\xfe"):
            r = await c.post("/reservations", headers={**CL, "Content-Type": "application/json"}, content=raw)
            assert (r.status_code, r.json()["error"]) == (400, "BAD_REQUEST"), raw
            assert_no_leak(r.text)
        assert (await c.get("/resources/gig", headers=OP)).json()["reserved"] == 0


async def test_bad_parameters_are_400(redis_url):
    async with api(redis_url) as c:
        cases = [
            ("GET", "/availability", "resource_id"),
            ("GET", "/availability?resource_id=" + "r" * 65, "resource_id"),
            ("GET", "/availability?resource_id=a%00b", "resource_id"),
            ("GET", "/availability?resource_id=a%0A", "resource_id"),
            ("GET", "/reservations/" + "x" * 129, "reservation_id"),
            ("GET", "/waiting-list/a%01b", "entry_id"),
        ]
        for method, path, field in cases:
            r = await c.request(method, path, headers=CL)
            assert r.status_code == 400, path
            assert field in r.json()["detail"], (path, r.json())
        r = await c.get("/resources/" + "r" * 65, headers=OP)
        assert r.status_code == 400 and "resource_id" in r.json()["detail"]


async def test_bodies_over_the_limit_are_413(redis_url):
    async with api(redis_url) as c:
        big = {**GOOD, "client_id": "c" * 20_000}
        r = await c.post("/reservations", headers=CL, json=big)
        assert (r.status_code, r.json()) == (413, {"error": "PAYLOAD_TOO_LARGE"})
        # a chunked body without Content-Length: see test_api_serve.py (needs a real server)


async def test_unknown_routes_and_methods(redis_url):
    async with api(redis_url) as c:
        for headers in ({}, CL, OP):
            r = await c.get("/nowhere", headers=headers)
            assert (r.status_code, r.json()) == (404, {"error": "NOT_FOUND"})
        for method, path in (("DELETE", "/resources/gig"), ("PUT", "/reservations"), ("GET", "/waiting-list/join"),
                             ("POST", "/availability")):
            r = await c.request(method, path, headers=OP)
            assert (r.status_code, r.json()) == (405, {"error": "METHOD_NOT_ALLOWED"}), (method, path)
            assert r.headers["allow"]


class ExplodingEngine(Engine):
    async def reserve(self, *args, **kwargs):
        raise RuntimeError("boom in /work/main/engine/engine.py at resv:{p3}:res:gig (lua) Traceback")


async def test_unexpected_errors_are_500_with_details_only_in_the_log(redis_url, caplog):
    engine = ExplodingEngine(EngineSettings(redis_url=redis_url))
    with caplog.at_level(logging.ERROR, logger="resv"):
        async with api(redis_url, engine=engine) as c:
            r = await reserve(c, "gig")
    assert (r.status_code, r.json()) == (500, {"error": "INTERNAL"})
    assert_no_leak(r.text)
    assert "boom in /work/main/engine/engine.py" in caplog.text


def redis_errors(metrics: str) -> float:
    return next(float(line.split()[1]) for line in metrics.splitlines()
                if line.startswith("resv_redis_errors_total "))


async def test_unreachable_redis_is_503_and_the_app_still_starts(redis_url):
    dead = EngineSettings(redis_url=f"redis://127.0.0.1:{free_port()}/0", retries=1)
    async with api(redis_url, engine=Engine(dead)) as c:
        errors_before = redis_errors((await c.get("/metrics", headers=OP)).text)
        started = time.monotonic()
        bodies = []
        for method, path, body, headers in (
            ("POST", "/reservations", GOOD, CL),
            ("GET", "/availability?resource_id=gig", None, CL),
            ("GET", "/reservations/gig~1", None, CL),
            ("POST", "/waiting-list/join", GOOD, CL),
            ("POST", "/resources", {"resource_id": "gig", "type": "t", "capacity": 1}, OP),
            ("GET", "/resources/gig", None, OP),
            ("PATCH", "/resources/gig", {"capacity": 2}, {**OP, "If-Match": "1"}),
        ):
            r = await c.request(method, path, headers=headers, json=body)
            assert (r.status_code, r.json()) == (503, {"error": "UNAVAILABLE"}), path
            assert r.headers["retry-after"] == "1"
            bodies.append(r.text)
        assert time.monotonic() - started < 10
        ready = await c.get("/ready", headers=OP)  # names the dependency, by design: not scanned
        assert ready.status_code == 503
        assert ready.json() == {"status": "unavailable", "error": "UNAVAILABLE",
                                "checks": {"redis": "down", "library": "down", "state": "down",
                                           "durability": "up", "audit": "not_configured"},
                                "problems": [NOT_CHECKED.state]}
        # refused by the state-loss guard before reaching Redis (never checked: NOT_CHECKED), so
        # not counted as Redis errors; the counter is exported all the same
        assert redis_errors((await c.get("/metrics", headers=OP)).text) >= errors_before
    for text in bodies:
        assert_no_leak(text)


@pytest.fixture
def private_redis():
    with EmbeddedRedis() as server:
        yield server


async def test_out_of_memory_is_503_and_reads_still_work(private_redis):
    async with api(private_redis.url) as c:
        await create_resource(c, "gig", 5)
        admin = redis.Redis.from_url(private_redis.url)
        admin.config_set("maxmemory", "1")
        try:
            r = await reserve(c, "gig")
            assert (r.status_code, r.json()) == (503, {"error": "UNAVAILABLE"})
            assert_no_leak(r.text)
            assert (await c.get("/resources/gig", headers=OP)).status_code == 200
        finally:
            admin.config_set("maxmemory", "0")
            admin.close()
        assert (await reserve(c, "gig")).status_code == 201


async def test_a_hung_redis_answers_503_within_the_deadline_then_recovers(private_redis):
    async with api(private_redis.url, request_deadline_s=0.5) as c:
        await create_resource(c, "gig", 5)
        os.kill(private_redis.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            r = await reserve(c, "gig", key="during-hang")
            elapsed = time.monotonic() - started
            assert (r.status_code, r.json()) == (503, {"error": "UNAVAILABLE"})
            assert elapsed < 1.5
            r = await c.get("/availability?resource_id=gig", headers=CL)
            assert r.status_code == 503
        finally:
            os.kill(private_redis.pid, signal.SIGCONT)
        # the retry with the same key gets the one decision, whatever happened to the first try
        again = await reserve(c, "gig", key="during-hang")
        assert again.status_code == 201
        assert (await reserve(c, "gig", key="during-hang")).content == again.content
        assert (await c.get("/resources/gig", headers=OP)).json()["reserved"] == 1


async def test_the_api_recovers_when_redis_comes_back(private_redis):
    async with api(private_redis.url, availability_ttl_ms=0) as c:
        await create_resource(c, "gig", 5)
        private_redis.stop()
        assert (await reserve(c, "gig")).status_code == 503
        assert (await c.get("/availability?resource_id=gig", headers=CL)).status_code == 503
        private_redis.restart()
        assert (await reserve(c, "gig")).status_code == 201
        assert (await c.get("/availability?resource_id=gig", headers=CL)).json()["remaining"] == 4
