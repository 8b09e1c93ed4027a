"""The app's own CPU per request, without a server or a network.

`make bench-api` measures whole server processes, which on a shared 2-core
machine swings by tens of percent from run to run. This drives the ASGI apps
directly instead: 64 tasks in one process, each sending requests one after
another to the app callable (a prebuilt scope, a body, a send that drops the
response), the bare Litestar echo app (`benchmarks/bare_app.py`) and resv's
app taking turns, round after round, and reports the process CPU time
(`time.process_time`) per request. No HTTP parsing and no socket work are in
it: what is left is the framework (the bare app) and the framework plus our
layers (resv), so the multiple is stricter than bench-api's, where both
include the server's share. Valkey runs in its own process (not counted).

    python -m benchmarks.app_cpu [--requests 20000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

from benchmarks.api import CLIENT_KEY, OPERATOR_KEY, RESOURCE
from resv.embedded import EmbeddedRedis

TASKS = 64


def scope(method: str, path: str, query: bytes, body: bool) -> dict[str, Any]:
    headers = [(b"host", b"127.0.0.1"), (b"authorization", f"Bearer {CLIENT_KEY}".encode()),
               (b"user-agent", b"bench")]
    if body:
        headers += [(b"content-type", b"application/json"), (b"content-length", b"0")]
    return {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
            "method": method, "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
            "query_string": query, "headers": headers, "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000), "state": {}}


async def drive(app: Any, make_scope: Callable[[], dict], make_body: Callable[[int], bytes] | None,
                requests: int) -> tuple[float, int]:
    """CPU seconds for `requests` requests from TASKS tasks; non-2xx count."""
    statuses: list[int] = []
    counter = iter(range(10**12))

    async def client() -> None:
        for _ in range(requests // TASKS):
            n = next(counter)
            body = make_body(n) if make_body else b""
            s = make_scope()
            if make_body:
                s["headers"][-1] = (b"content-length", str(len(body)).encode())

            async def receive(body: bytes = body) -> dict:
                return {"type": "http.request", "body": body, "more_body": False}

            async def send(message: dict) -> None:
                if message["type"] == "http.response.start":
                    statuses.append(message["status"])

            await app(s, receive, send)

    start = time.process_time()
    await asyncio.gather(*(client() for _ in range(TASKS)))
    return time.process_time() - start, sum(1 for s in statuses if s >= 300)


class lifespan:  # noqa: N801 - used as `async with lifespan(app)`
    """Runs an ASGI app's lifespan protocol around a block."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.inbox: asyncio.Queue = asyncio.Queue()
        self.outbox: asyncio.Queue = asyncio.Queue()

    async def __aenter__(self) -> None:
        self.task = asyncio.create_task(self.app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}},
                                                 self.inbox.get, self.outbox.put))
        await self.inbox.put({"type": "lifespan.startup"})
        message = await self.outbox.get()
        assert message["type"] == "lifespan.startup.complete", message

    async def __aexit__(self, *exc: object) -> None:
        await self.inbox.put({"type": "lifespan.shutdown"})
        await self.outbox.get()
        await self.task


async def create_resource(app: Any) -> None:
    body = f'{{"resource_id":"{RESOURCE}","type":"bench","capacity":{10**9}}}'.encode()
    s = scope("POST", "/resources", b"", True)
    s["headers"][1] = (b"authorization", f"Bearer {OPERATOR_KEY}".encode())
    s["headers"][-1] = (b"content-length", str(len(body)).encode())
    statuses = []

    async def receive() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    await app(s, receive, send)
    assert statuses[0] in (201, 409), statuses


async def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.app_cpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with EmbeddedRedis(extra_args=["--appendonly", "no"]) as server:
        os.environ.update({"REDIS_URL": server.url, "RESV_DURABILITY": "relaxed", "RESV_BENCH_ECHO": "1",
                           "RESV_API_KEYS": f"client:{CLIENT_KEY},operator:{OPERATOR_KEY}"})
        from benchmarks.bare_app import app as bare
        from resv.api import oplog
        from resv.api.app import app_from_env

        oplog.configure("info")  # the server process's log: request lines to the batch writer
        ours = app_from_env()
        async with lifespan(ours):  # the engine starts
            await create_resource(ours)
            for hook in ours.on_startup:  # what a server process gets (GC tuning)
                if getattr(hook, "__name__", "") == "_tune_process":
                    hook()

            def booking(n: int) -> bytes:
                return f'{{"resource_id":"{RESOURCE}","quantity":1,"client_id":"c{n}"}}'.encode()

            q = f"resource_id={RESOURCE}".encode()
            rows = [
                ("bare echo GET", bare, lambda: scope("GET", "/echo", q, False), None, None),
                ("GET /availability (cached)", ours, lambda: scope("GET", "/availability", q, False), None,
                 "bare echo GET"),
                ("in-app echo GET", ours, lambda: scope("GET", "/bench/echo", q, False), None, "bare echo GET"),
                ("bare echo POST", bare, lambda: scope("POST", "/echo", b"", True), booking, None),
                ("POST /reservations", ours, lambda: scope("POST", "/reservations", b"", True), booking,
                 "bare echo POST"),
                ("in-app echo POST", ours, lambda: scope("POST", "/bench/echo", b"", True), booking,
                 "bare echo POST"),
            ]
            for _, app, make_scope, make_body, _ in rows:  # warm-up
                await drive(app, make_scope, make_body, 2000)
            per: dict[str, list[float]] = {row[0]: [] for row in rows}
            ratios: dict[str, list[float]] = {row[0]: [] for row in rows if row[4]}
            errors: dict[str, int] = {row[0]: 0 for row in rows}
            for _ in range(args.rounds):
                this: dict[str, float] = {}
                for label, app, make_scope, make_body, _ in rows:
                    gc.collect()
                    cpu, bad = await drive(app, make_scope, make_body, args.requests)
                    this[label] = cpu / args.requests * 1e6
                    per[label].append(this[label])
                    errors[label] += bad
                for label, *_, baseline in rows:
                    if baseline:
                        ratios[label].append(this[label] / this[baseline])
    oplog.flush()
    print(f"\nASGI apps driven in-process (no server, no sockets): {TASKS} tasks, median of {args.rounds} rounds "
          f"of {args.requests} requests, rows taking turns; process CPU per request\n")
    print("| route | app CPU us/req | x bare (range) | non-2xx |")
    print("|---|---:|---:|---:|")
    for label, *_ in rows:
        r = ratios.get(label)
        ratio = f"{statistics.median(r):.2f}x ({min(r):.2f}-{max(r):.2f})" if r else "1"
        print(f"| {label} | {statistics.median(per[label]):.1f} | {ratio} | {errors[label]} |")


if __name__ == "__main__":
    asyncio.run(main())
