"""The edge, before any key is checked (api/edge.py, api/bodies.py): a huge
head is refused without holding up other clients, incomplete requests are
closed after their timeout, deep JSON is a 400, and a client that goes away
mid-body is a client event, not an internal error."""

from __future__ import annotations

import asyncio
import re
import socket
import threading
from urllib.parse import urlparse

import httpx
import pytest

from resv.api import metrics
from tests.api_support import CL, OP, api, create_resource
from tests.procs import OPERATOR_KEY, resv_serve


def connect(base: str) -> socket.socket:
    url = urlparse(base)
    s = socket.create_connection((url.hostname, url.port), timeout=10)
    return s


def read_until_closed(s: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (socket
    timeout 10 s: a server that keeps it open fails the test)."""
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    return out


def metric(text: str, name: str) -> float:
    found = re.search(rf"^{name} ([0-9.e+]+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


@pytest.fixture(scope="module")
def served(redis_server):
    with resv_serve(redis_server.url, RESV_HEADER_TIMEOUT_S="0.5", RESV_BODY_TIMEOUT_S="0.5") as base:
        yield base


def test_a_1mb_header_gets_431_and_others_keep_being_served(served) -> None:
    others: list[int] = []
    started = threading.Event()

    def another_client() -> None:
        with httpx.Client(base_url=served, timeout=2.0) as c:  # a stalled server fails these
            for _ in range(20):
                others.append(c.get("/health").status_code)
                started.set()

    t = threading.Thread(target=another_client)
    t.start()
    started.wait(10)
    try:
        replies = []
        for _ in range(5):
            s = connect(served)
            try:
                s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 1_000_000 + b"\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass  # closed while sending: refused before reading it all
            try:
                replies.append(read_until_closed(s))
            except ConnectionResetError:
                replies.append(b"reset")
            s.close()
    finally:
        t.join()
    assert all(r.startswith(b"HTTP/1.1 431 ") or r == b"reset" for r in replies), [r[:80] for r in replies]
    assert any(r.startswith(b"HTTP/1.1 431 ") for r in replies)
    assert b'{"error":"HEADERS_TOO_LARGE"}' in next(r for r in replies if r != b"reset")
    assert others == [200] * 20


def test_a_head_under_the_limit_is_served(served) -> None:
    r = httpx.get(served + "/health", headers={"X-Padding": "a" * 12_000})
    assert r.status_code == 200


@pytest.mark.parametrize("sent", [
    b"",                                                    # silent connection
    b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ",         # half-sent head
], ids=["silent", "partial-head"])
def test_an_incomplete_head_is_closed_after_the_timeout(served, sent) -> None:
    s = connect(served)
    s.sendall(sent)
    assert read_until_closed(s) == b""  # closed without an answer
    s.close()


def test_an_incomplete_body_is_closed_and_counted_as_a_client_event(served) -> None:
    before = httpx.get(served + "/metrics", headers={"Authorization": f"Bearer {OPERATOR_KEY}"}).text
    s = connect(served)
    s.sendall(b"POST /reservations HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer client-test-key\r\n"
              b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"resource_id\":")
    read_until_closed(s)
    s.close()
    after = httpx.get(served + "/metrics", headers={"Authorization": f"Bearer {OPERATOR_KEY}"}).text
    assert metric(after, "resv_internal_errors_total") == metric(before, "resv_internal_errors_total")
    assert metric(after, "resv_client_disconnects_total") == metric(before, "resv_client_disconnects_total") + 1


DEEP = b"[" * 990 + b"]" * 990


@pytest.mark.parametrize("method, path", [
    ("POST", "/reservations"),
    ("POST", "/resources"),
    ("PATCH", "/resources/gig"),
    ("POST", "/waiting-list/join"),
])
async def test_deep_json_is_a_400_on_every_json_route(redis_url, method, path) -> None:
    async with api(redis_url) as client:
        await create_resource(client, "gig", 5)
        for body in (DEEP, b'{"resource_id": ' + b"[" * 40 + b"]" * 40 + b"}"):
            r = await client.request(method, path, content=body,
                                     headers={**OP, "Content-Type": "application/json", "If-Match": '"1"'})
            assert r.status_code == 400, r.text
            assert r.json()["error"] == "BAD_REQUEST" and "nested deeper" in r.json()["detail"]
        # brackets inside strings are text, not nesting
        r = await client.post("/reservations", headers=CL,
                              json={"resource_id": "gig", "client_id": "[" * 100, "quantity": 1})
        assert r.status_code != 400 or "nested" not in r.text


async def test_a_disconnect_mid_body_is_not_an_internal_error(redis_url) -> None:
    async with api(redis_url) as client:
        app = client.app
        internal = metrics.INTERNAL_ERRORS._value.get()
        messages = [{"type": "http.request", "body": b'{"resource_id":', "more_body": True},
                    {"type": "http.disconnect"}]
        sent: list[dict] = []

        async def receive():
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": "/reservations", "raw_path": b"/reservations", "query_string": b"",
                 "root_path": "", "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 5000),
                 "headers": [(b"authorization", CL["Authorization"].encode()),
                             (b"content-type", b"application/json"), (b"content-length", b"100")],
                 "state": {}}
        disconnects = metrics.CLIENT_DISCONNECTS._value.get() if hasattr(metrics, "CLIENT_DISCONNECTS") else 0
        await app(scope, receive, send)
        await asyncio.sleep(0)
        assert metrics.INTERNAL_ERRORS._value.get() == internal
        assert metrics.CLIENT_DISCONNECTS._value.get() == disconnects + 1
        assert sent[0]["status"] != 500


# -- one write per response (api/edge.py, _OneWrite)

class _Recorder:
    """The connection's transport as _OneWrite sees it: what was written, in calls."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def test_a_response_head_goes_out_with_its_first_body_write() -> None:
    from resv.api.edge import _OneWrite

    t = _Recorder()
    w = _OneWrite(t)  # type: ignore[arg-type]
    w.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # interim: at once
    assert t.writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]
    w.write(b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\n")
    assert len(t.writes) == 1  # held
    w.write(b"{}")
    w.write(b"")  # later body writes go as they come
    assert t.writes[1:] == [b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\n{}", b""]
    assert not w.is_closing()  # the rest is the connection's transport


def test_a_held_head_is_written_before_the_connection_closes() -> None:
    from resv.api.edge import _OneWrite

    t = _Recorder()
    w = _OneWrite(t)  # type: ignore[arg-type]
    w.write(b"HTTP/1.1 500 Internal Server Error\r\n\r\n")
    w.close()
    assert t.writes == [b"HTTP/1.1 500 Internal Server Error\r\n\r\n"] and t.closed


def read_response(s: socket.socket, head_only: bool = False) -> tuple[bytes, bytes]:
    """One response's head and (content-length) body from a kept-alive connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, f"closed mid-head: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0 if head_only else int(re.search(rb"content-length: (\d+)", head, re.I).group(1))
    while len(body) < length:
        chunk = s.recv(65536)
        assert chunk, "closed mid-body"
        body += chunk
    return head, body


def test_head_expect_continue_and_close_answers_through_the_edge(served) -> None:
    s = connect(served)
    try:
        s.sendall(b"HEAD /health HTTP/1.1\r\nHost: x\r\n\r\n")  # no body write: head as uvicorn writes it
        head, _ = read_response(s, head_only=True)
        assert head.startswith(b"HTTP/1.1 ")
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")  # the connection goes on
        head, body = read_response(s)
        assert head.startswith(b"HTTP/1.1 200") and b'"ok"' in body

        booking = b'{"resource_id":"edge-100","quantity":1,"client_id":"c"}'
        s.sendall(b"POST /reservations HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer client-test-key\r\n"
                  b"Content-Type: application/json\r\nExpect: 100-continue\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(booking))
        interim = s.recv(65536)
        assert interim.startswith(b"HTTP/1.1 100 Continue\r\n\r\n")  # before the body is sent
        s.sendall(booking)
        head, body = read_response(s)
        assert head.startswith(b"HTTP/1.1 409") and b"INVALID_STATE" in body  # no such resource
    finally:
        s.close()
    s = connect(served)
    s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    answer = read_until_closed(s)
    s.close()
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b'}') and b"connection: close" in answer.lower()
