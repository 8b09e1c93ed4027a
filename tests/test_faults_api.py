"""The Redis-compatible server killed with kill -9 twenty times while HTTP
clients reserve through a real `resv serve`: every 201 a client received is
in the decision log, nothing is overbooked, and the API recovers by itself."""

from __future__ import annotations

import asyncio
import random
import time
import uuid

import httpx
import pytest
import redis

from engine.embedded import EmbeddedRedis
from tests.history import Observation, check
from tests.procs import CLIENT_KEY, OPERATOR_KEY, resv_serve
from tests.report import record
from tests.support import events

OP = {"Authorization": f"Bearer {OPERATOR_KEY}"}
CL = {"Authorization": f"Bearer {CLIENT_KEY}"}


async def http_client_loop(http: httpx.AsyncClient, observations: list, stop: asyncio.Event) -> None:
    while not stop.is_set():
        key = uuid.uuid4().hex
        body = {"resource_id": "show", "quantity": 1, "client_id": f"c-{key[:8]}"}
        answer, reservation_id = None, None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                resp = await http.post("/reservations", json=body, headers={**CL, "Idempotency-Key": key})
            except httpx.HTTPError:
                await asyncio.sleep(0.05)
                continue
            assert resp.status_code in (201, 409, 503), resp.text
            if resp.status_code == 503:
                assert resp.json() == {"error": "UNAVAILABLE"}
                await asyncio.sleep(0.05)
                continue
            data = resp.json()
            answer = "CONFIRMED" if resp.status_code == 201 else "REJECTED"
            reservation_id = data.get("reservation_id")
            break
        observations.append(Observation(key, "show", answer, reservation_id))


@pytest.mark.slow
async def test_server_kill_9_under_http_load(tmp_path):
    capacity = 300
    with EmbeddedRedis(data_dir=tmp_path / "redis") as server, \
            resv_serve(server.url, workers=1, RESV_REDIS_TIMEOUT_S="0.5", RESV_REDIS_RETRIES="1") as base:
        async with httpx.AsyncClient(base_url=base, timeout=10,
                                     limits=httpx.Limits(max_connections=32)) as http:
            resp = await http.post("/resources", headers=OP,
                                   json={"resource_id": "show", "type": "concert", "capacity": capacity})
            assert resp.status_code == 201, resp.text
            observations: list[Observation] = []
            stop = asyncio.Event()
            clients = [asyncio.create_task(http_client_loop(http, observations, stop)) for _ in range(24)]
            rng = random.Random(11)
            for _ in range(20):
                await asyncio.sleep(rng.uniform(0.1, 0.3))
                server.kill()
                await asyncio.sleep(rng.uniform(0.0, 0.15))
                server.restart()
            await asyncio.sleep(0.5)
            stop.set()
            await asyncio.gather(*clients)
            # recovered without restarting the API
            state = await http.get("/resources/show", headers=OP)
            assert state.status_code == 200
        sync = redis.Redis.from_url(server.url, decode_responses=True)
        log = events(sync, "show")
        sync.close()
    report = check(observations, log, {"show": capacity})
    s = report.summary()
    record("api: kill -9 of the server x20 under HTTP load", faults=20, requests=s["requests"],
           decisions=s["decisions"], lost=s["lost"], duplicated=s["duplicated"], overbooked=s["overbooked"])
    assert report.ok, s
    assert s["confirmed_seen"] > 20
    assert state.json()["reserved"] == sum(1 for e in log if e["type"] == "RESERVATION_CONFIRMED")


async def test_flushed_library_is_reloaded_by_the_running_api(redis_server):
    r = redis.Redis.from_url(redis_server.url)
    r.flushall()
    with resv_serve(redis_server.url) as base:
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            assert (await http.post("/resources", headers=OP,
                                    json={"resource_id": "fl", "type": "t", "capacity": 3})).status_code == 201
            r.execute_command("FUNCTION", "FLUSH")
            resp = await http.post("/reservations", headers=CL,
                                   json={"resource_id": "fl", "quantity": 1, "client_id": "al"})
            assert resp.status_code == 201, resp.text
            r.execute_command("FUNCTION", "FLUSH")
            assert (await http.get("/resources/fl", headers=OP)).json()["reserved"] == 1
    r.close()
    record("api: function library flushed under a running API", faults=2, requests=3, decisions=1,
           lost=0, duplicated=0, overbooked=0)


async def test_hung_server_gives_bounded_503_and_same_key_retry_books_once():
    import os
    import signal

    with EmbeddedRedis() as server, resv_serve(server.url, RESV_REDIS_TIMEOUT_S="0.5",
                                               RESV_REDIS_RETRIES="1") as base:
        async with httpx.AsyncClient(base_url=base, timeout=15) as http:
            await http.post("/resources", headers=OP, json={"resource_id": "hung", "type": "t", "capacity": 9})
            body = {"resource_id": "hung", "quantity": 2, "client_id": "al"}
            headers = {**CL, "Idempotency-Key": "hung-1"}
            os.kill(server.pid, signal.SIGSTOP)
            try:
                started = time.monotonic()
                resp = await http.post("/reservations", json=body, headers=headers)
                elapsed = time.monotonic() - started
            finally:
                os.kill(server.pid, signal.SIGCONT)
            assert resp.status_code == 503 and resp.json() == {"error": "UNAVAILABLE"}
            assert elapsed < 5.0
            # outcome unknown to the client: it retries with the same key
            retries = [await http.post("/reservations", json=body, headers=headers) for _ in range(3)]
            assert {r.status_code for r in retries} == {201}
            assert len({r.json()["reservation_id"] for r in retries}) == 1
            assert (await http.get("/resources/hung", headers=OP)).json()["reserved"] == 2
        sync = redis.Redis.from_url(server.url, decode_responses=True)
        confirmed = [e for e in events(sync, "hung") if e["type"] == "RESERVATION_CONFIRMED"]
        sync.close()
    assert len(confirmed) == 1
    record("api: server hung (SIGSTOP), bounded 503, same-key retries", faults=1, requests=4,
           decisions=len(confirmed), lost=0, duplicated=len(confirmed) - 1, overbooked=0)
