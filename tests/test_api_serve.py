"""`resv serve` as a real server: two worker processes, many concurrent
clients over HTTP, one resource, never overbooked."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from resv.embedded import EmbeddedRedis, free_port
from tests.api_support import CL, CLIENT_KEY, OP, OPERATOR_KEY

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def serve_command(port: int, workers: int) -> list[str]:
    return [sys.executable, "-m", "resv", "serve", "--host", "127.0.0.1", "--port", str(port),
            "--workers", str(workers)]


def server_env(redis_url: str, **extra: str) -> dict[str, str]:
    env = {**os.environ, "REDIS_URL": redis_url, "RESV_API_KEYS": f"operator:{OPERATOR_KEY},client:{CLIENT_KEY}",
           "PYTHONPATH": str(ROOT), **extra}
    for name in ("PROMETHEUS_MULTIPROC_DIR", "RESV_RATE_LIMIT", "DATABASE_URL", "RESV_BENCH_ECHO"):
        env.pop(name, None)
    return env


@pytest.fixture
def served(redis_url, tmp_path):
    """`resv serve --workers 2` on the test Redis; its base URL."""
    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(serve_command(port, 2), cwd=ROOT, env=server_env(redis_url),
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, f"resv serve exited:\n{log.read_text()[-3000:]}"
            try:
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"resv serve did not come up:\n{log.read_text()[-3000:]}"
            time.sleep(0.1)
        yield base, log
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


async def test_2000_concurrent_reservations_for_100_seats(served):
    base, log = served
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as http:
        created = await http.post("/resources", headers=OP,
                                  json={"resource_id": "stadium", "type": "seat", "capacity": 100})
        assert created.status_code == 201

        async def attempt(n: int) -> httpx.Response:
            return await http.post("/reservations", headers=CL,
                                   json={"resource_id": "stadium", "quantity": 1, "client_id": f"fan-{n}"})

        responses = await asyncio.gather(*(attempt(n) for n in range(2000)))
        statuses = Counter(r.status_code for r in responses)
        assert statuses == {201: 100, 409: 1900}, statuses
        assert {r.json()["code"] for r in responses if r.status_code == 409} == {"RESOURCE_FULL"}
        assert len({r.json()["reservation_id"] for r in responses if r.status_code == 201}) == 100

        state = (await http.get("/resources/stadium", headers=OP)).json()
        assert (state["reserved"], state["remaining"], state["status"]) == (100, 0, "FULL")

        # the decision counters are totals over both workers (multiprocess
        # metrics); each worker moves its tallies there within a second
        confirmed = 0.0
        for _ in range(40):
            metrics = (await http.get("/metrics", headers=OP)).text
            confirmed = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                            if line.startswith("resv_decisions_total{") and 'type="RESERVATION_CONFIRMED"' in line)
            if confirmed >= 100:
                break
            await asyncio.sleep(0.1)
    assert confirmed == 100
    assert log.read_text().count("Started server process") == 2


async def test_chunked_body_over_the_limit_is_413(served):
    base, _ = served

    async def chunks():
        for _ in range(40):
            yield b" " * 1024

    async with httpx.AsyncClient(base_url=base) as http:
        r = await http.post("/reservations", headers={**CL, "Content-Type": "application/json"}, content=chunks())
    assert (r.status_code, r.json()) == (413, {"error": "PAYLOAD_TOO_LARGE"})


def test_serve_refuses_to_start_without_a_key(redis_url):
    env = server_env(redis_url)
    env.pop("RESV_API_KEYS")
    done = subprocess.run(serve_command(free_port(), 1), cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2
    assert "RESV_API_KEYS" in done.stderr


def test_serve_refuses_a_server_that_may_lose_writes():
    with EmbeddedRedis(extra_args=["--appendonly", "no"]) as server:
        done = subprocess.run(serve_command(free_port(), 1), cwd=ROOT, env=server_env(server.url),
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "appendfsync always" in done.stderr and "RESV_DURABILITY=relaxed" in done.stderr
