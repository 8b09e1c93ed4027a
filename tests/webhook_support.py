"""Fixtures of the webhook tests: real HTTP receivers (a threaded server on a
free loopback port, whose answers a test programs) and in-process notifiers
on the test's database."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from standardwebhooks import Webhook

from resv.archiver.db import open_pool
from resv.embedded import free_port
from resv.notifier.settings import NotifierSettings
from resv.notifier.worker import Notifier
from tests.procs import ROOT

# What the notifier tests need: loopback receivers, fast retries.
FAST = {"allow_private": True, "poll_s": 0.05, "timeout_s": 2.0, "backoff_base_s": 0.2,
        "retry_horizon_s": 60.0}

Answer = tuple[int, dict[str, str], float]
"""status, headers, seconds to wait before answering."""


class Received:
    def __init__(self, path: str, headers: dict[str, str], body: bytes) -> None:
        self.path = path
        self.headers = headers
        self.body = body
        self.at = time.time()

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]

    def json(self) -> dict[str, Any]:
        return json.loads(self.body)


class Receiver:
    """Records every request; `answer(received, nth)` (nth: how many times
    this webhook-id came before, 0 the first time) says what to answer."""

    def __init__(self, answer: Callable[[Received, int], Answer] | None = None) -> None:
        self.answer = answer or (lambda r, n: (204, {}, 0.0))
        self.received: list[Received] = []
        self.lock = threading.Lock()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                if len(body) < length:  # the sender died mid-request (a killed notifier): never a delivery
                    return
                got = Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                with receiver.lock:
                    nth = sum(1 for r in receiver.received if r.headers.get("webhook-id") == got.headers.get("webhook-id"))
                    receiver.received.append(got)
                status, headers, delay = receiver.answer(got, nth)
                if delay:
                    time.sleep(delay)
                try:
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("content-length", "0")
                    self.end_headers()
                except OSError:
                    pass

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def snapshot(self) -> list[Received]:
        with self.lock:
            return list(self.received)

    def verified(self, secret: str) -> list[Received]:
        """Every request, each checked with standardwebhooks (raises if one fails)."""
        out = self.snapshot()
        verifier = Webhook(secret)
        for r in out:
            verifier.verify(r.body, r.headers)
        return out


@pytest.fixture
def receiver() -> Iterator[Callable[..., Receiver]]:
    made: list[Receiver] = []

    def make(answer: Callable[[Received, int], Answer] | None = None) -> Receiver:
        r = Receiver(answer)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


class RunningNotifier:
    def __init__(self, notifier: Notifier, task: asyncio.Task[None], stop: asyncio.Event) -> None:
        self.notifier = notifier
        self.task = task
        self.stop_event = stop

    async def stop(self) -> None:
        self.stop_event.set()
        await asyncio.wait_for(self.task, 30)


@pytest.fixture
async def start_notifier(database_url: str) -> AsyncIterator[Callable[..., Any]]:
    """Starts in-process notifiers (each its own pool and name)."""
    running: list[tuple[RunningNotifier, Any]] = []

    async def start(name: str = "n1", **overrides: Any) -> RunningNotifier:
        settings = NotifierSettings(**{**FAST, "name": name, "database_url": database_url, **overrides})
        pool = await open_pool(database_url, max_size=4, timeout=2.0, check=False, autocommit=True)  # as run.py
        notifier = Notifier(pool, settings, database_url=database_url)
        stop = asyncio.Event()
        handle = RunningNotifier(notifier, asyncio.create_task(notifier.run(stop)), stop)
        running.append((handle, pool))
        return handle

    yield start
    for handle, pool in running:
        if not handle.task.done():
            await handle.stop()
        await pool.close()


async def eventually(check: Callable[[], Any], timeout: float = 30.0, what: str = "condition",
                     explain: Callable[[], Any] | None = None) -> Any:
    """Awaits check() (sync or async) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            detail = explain() if explain is not None else None
            if asyncio.iscoroutine(detail):
                detail = await detail
            raise AssertionError(f"timed out waiting for {what}" + (f": {detail}" if detail is not None else ""))
        await asyncio.sleep(0.05)


def notifier_env(database_url: str) -> dict[str, str]:
    """The environment of a `resv notifier` process: loopback receivers, fast retries, 1 s attempts."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESV_")}
    env.update(DATABASE_URL=database_url, RESV_WEBHOOK_ALLOW_PRIVATE="1", RESV_NOTIFIER_POLL_MS="50",
               RESV_WEBHOOK_TIMEOUT_S="1", RESV_WEBHOOK_BACKOFF_BASE_S="0.2", RESV_WEBHOOK_CONCURRENCY="4",
               PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    return env


@pytest.fixture
def allow_private(monkeypatch: pytest.MonkeyPatch) -> None:
    """The API (which reads RESV_WEBHOOK_ALLOW_PRIVATE at start-up) accepts loopback receivers."""
    monkeypatch.setenv("RESV_WEBHOOK_ALLOW_PRIVATE", "1")
