"""The Redis-compatible server killed with kill -9 twenty times while HTTP
clients reserve through a real `resv serve`: every 201 a client received is
in the decision log, nothing is overbooked, and the API recovers by itself."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import time
import uuid

import httpx
import pytest
import redis

from resv.embedded import EmbeddedRedis
from tests.history import Observation, check
from tests.procs import CLIENT_KEY, OPERATOR_KEY, ROOT, resv_env, resv_serve
from tests.report import record
from tests.support import events, own

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
async def test_server_kill_9_under_http_load(tmp_path, database_url):
    """Redis kill -9 x20 and the archiver kill -9 x5 during the same HTTP
    load; the history is checked against the stream and against PostgreSQL."""
    capacity = 300
    with EmbeddedRedis(data_dir=tmp_path / "redis") as server, \
            resv_serve(server.url, workers=1, RESV_REDIS_TIMEOUT_S="0.5", RESV_REDIS_RETRIES="1") as base, \
            archiver_process(server.url, database_url) as archiver:
        async with httpx.AsyncClient(base_url=base, timeout=10,
                                     limits=httpx.Limits(max_connections=32)) as http:
            resp = await http.post("/resources", headers=OP,
                                   json={"resource_id": "show", "type": "concert", "capacity": capacity})
            assert resp.status_code == 201, resp.text
            observations: list[Observation] = []
            stop = asyncio.Event()
            clients = [asyncio.create_task(http_client_loop(http, observations, stop)) for _ in range(24)]
            rng = random.Random(11)
            for n in range(20):
                await asyncio.sleep(rng.uniform(0.1, 0.3))
                server.kill()
                await asyncio.sleep(rng.uniform(0.0, 0.15))
                server.restart()
                if n % 4 == 0:
                    archiver.kill_and_restart()  # mid-batch, at a random point
            await asyncio.sleep(0.5)
            stop.set()
            await asyncio.gather(*clients)
            # recovered without restarting the API
            state = await http.get("/resources/show", headers=OP)
            assert state.status_code == 200
        archiver.drain_to_the_end()
        sync = redis.Redis.from_url(server.url, decode_responses=True)
        tail = events(sync, "show")  # what the archiver has not trimmed yet
        sync.close()
    # the archiver trims the stream below what PostgreSQL holds: the audit is the log
    log = await audit_log(database_url, "show")
    archived = {e["stream_id"] for e in log}
    assert all(e["stream_id"] in archived for e in tail)
    report = check(observations, log, {"show": capacity})
    s = report.summary()
    record("api: kill -9 of Redis x20 and of the archiver x5 under HTTP load", faults=25,
           requests=s["requests"], decisions=s["decisions"], lost=s["lost"], duplicated=s["duplicated"],
           overbooked=s["overbooked"])
    assert report.ok, s
    assert s["confirmed_seen"] > 20
    assert state.json()["reserved"] == sum(1 for e in log if e["type"] == "RESERVATION_CONFIRMED")


class archiver_process:
    """`resv archiver` as a real process, killed with SIGKILL on demand."""

    def __init__(self, redis_url: str, database_url: str) -> None:
        self.env = resv_env(redis_url, DATABASE_URL=database_url, RESV_ARCHIVER_CLAIM_IDLE_MS="300")
        self.proc: subprocess.Popen | None = None

    def _start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "resv", "archiver"], env=self.env,
                                     cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def kill_and_restart(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self._start()

    def drain_to_the_end(self) -> None:
        self.proc.kill()
        self.proc.wait()
        time.sleep(0.4)  # past the claim idle time: the dead consumer's entries are reclaimed
        subprocess.run([sys.executable, "-m", "resv", "archiver", "--once"], env=self.env, cwd=ROOT,
                       check=True, timeout=60, capture_output=True)

    def __enter__(self) -> "archiver_process":
        self._start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


async def audit_log(database_url: str, resource_id: str) -> list[dict]:
    import psycopg

    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute("SELECT stream_id, fields FROM events WHERE resource_id = %s ORDER BY ms, seq",
                                 (resource_id,))
        return [{**fields, "stream_id": sid} for sid, fields in await cur.fetchall()]


async def test_flushed_library_is_reloaded_by_the_running_api(redis_server):
    r = own(redis.Redis.from_url(redis_server.url))
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
