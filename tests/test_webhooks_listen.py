"""`resv listen`, the receiver for development, as a real process: it
verifies each request with standardwebhooks, prints one JSON line per event
(a retry of the same webhook-id once), refuses what does not verify with a
400 and a line on stderr, never on stdout, and never prints the secret; and
a real notifier's delivery verifies there."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from resv.embedded import free_port
from resv.notifier.events import body
from resv.notifier.manage import WebhookStore
from resv.notifier.settings import NotifierSettings
from resv.notifier.signing import new_secret, signature
from tests.procs import ROOT
from tests.webhook_support import eventually


class Listening:
    def __init__(self, proc: subprocess.Popen, url: str, out: Path, err: Path) -> None:
        self.proc, self.url, self.out, self.err = proc, url, out, err

    def events(self) -> list[dict]:
        return [json.loads(line) for line in self.out.read_text().splitlines()]


@pytest.fixture
def listen() -> Iterator:
    started: list[Listening] = []

    def start(secret: str) -> Listening:
        port = free_port()
        out = Path(tempfile.mkstemp(prefix="resv-listen-", suffix=".out")[1])
        err = Path(tempfile.mkstemp(prefix="resv-listen-", suffix=".err")[1])
        with out.open("w") as stdout, err.open("w") as stderr:  # the child keeps its own copies
            proc = subprocess.Popen([sys.executable, "-m", "resv", "listen", "--port", str(port), "--secret", secret],
                                    cwd=ROOT, stdout=stdout, stderr=stderr)
        handle = Listening(proc, f"http://127.0.0.1:{port}/", out, err)
        started.append(handle)
        deadline = time.monotonic() + 30
        while "receiving on" not in err.read_text():
            assert proc.poll() is None, err.read_text()
            assert time.monotonic() < deadline, "resv listen did not start"
            time.sleep(0.05)
        return handle

    yield start
    for h in started:
        if h.proc.poll() is None:
            h.proc.kill()
            h.proc.wait(10)
        h.out.unlink()
        h.err.unlink()


def signed(secret: str, webhook_id: str, payload: bytes, at: int | None = None) -> dict[str, str]:
    at = int(time.time()) if at is None else at
    return {"webhook-id": webhook_id, "webhook-timestamp": str(at), "content-type": "application/json",
            "webhook-signature": signature([secret], webhook_id, at, payload)}


def test_it_prints_what_verifies_once_and_refuses_the_rest(listen) -> None:
    secret = new_secret()
    r = listen(secret)
    payload = body("waitlist.notified", "2026-11-24T19:57:12.123456Z",
                   {"stream_id": "17-0", "resource_id": "gig", "client_id": "bob"})
    answers = [
        httpx.post(r.url, content=payload, headers=signed(secret, "msg_1", payload)).status_code,
        httpx.post(r.url, content=payload, headers=signed(secret, "msg_1", payload)).status_code,  # a retry
        httpx.post(r.url, content=payload.replace(b"bob", b"eve"),
                   headers=signed(secret, "msg_2", payload)).status_code,  # tampered
        httpx.post(r.url, content=payload, headers=signed(secret, "msg_3", payload,
                                                          int(time.time()) - 3600)).status_code,  # old
        httpx.post(r.url, content=payload, headers=signed(new_secret(), "msg_4", payload)).status_code,  # other key
        httpx.post(r.url, content=payload, headers={"content-type": "application/json"}).status_code,  # unsigned
    ]
    assert answers == [204, 204, 400, 400, 400, 400]
    assert r.events() == [{"webhook_id": "msg_1", "type": "waitlist.notified",
                           "timestamp": "2026-11-24T19:57:12.123456Z",
                           "data": {"stream_id": "17-0", "resource_id": "gig", "client_id": "bob"}}]
    r.proc.send_signal(signal.SIGINT)  # Ctrl-C
    assert r.proc.wait(10) == 0
    err = r.err.read_text()
    assert err.count("refused a request") == 4
    for text in (err, r.out.read_text()):
        assert secret not in text and secret.removeprefix("whsec_") not in text


def test_it_needs_a_whsec_secret() -> None:
    for bad in ([], ["--secret", "not-a-secret"], ["--secret", "whsec_!!!"]):
        done = subprocess.run([sys.executable, "-m", "resv", "listen", "--port", str(free_port()), *bad],
                              cwd=ROOT, capture_output=True, text=True, timeout=30,
                              env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
        assert done.returncode == 2, (bad, done.stderr)
        assert "--secret" in done.stderr and done.stdout == ""


async def test_a_notifiers_delivery_verifies_there(listen, start_notifier, pool) -> None:
    s = WebhookStore(pool, NotifierSettings(allow_private=True))
    hook, secret = await s.create("http://127.0.0.1:9/", ["*"], None, None)
    r = listen(secret)
    await s.update(hook.webhook_id, {"url": r.url})
    assert await s.send_test(hook.webhook_id)
    await start_notifier()
    [event] = await eventually(r.events, what="the test delivery printed")
    assert event["type"] == "webhook.test" and event["data"] == {"webhook_id": hook.webhook_id}
    assert event["webhook_id"].startswith("msg_")
