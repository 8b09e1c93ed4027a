"""One attempt (notifier/sender.py) against real sockets that misbehave:
each failure ends as the short phrase an operator reads in `last_error`,
kept-alive connections are reused, and the address rules hold for names
(checked by the resolver at each new connection) and for literals."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from resv.embedded import free_port
from resv.notifier.sender import MAX_ANSWER_BYTES, Sender

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    servers: list[asyncio.Server] = []
    writers: list[asyncio.StreamWriter] = []

    async def start(handler: Handler) -> str:
        async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writers.append(writer)
            await handler(reader, writer)

        port = free_port()
        servers.append(await asyncio.start_server(tracked, "127.0.0.1", port))
        return f"http://127.0.0.1:{port}/hook"

    yield start
    for s in servers:
        s.close()
    for w in writers:
        w.close()
    await asyncio.sleep(0)  # the transports close on the next turn of the loop


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    return head + await reader.readexactly(length)


def answering(*answers: bytes, connections: list | None = None) -> Handler:
    """Answers the requests of a connection with `answers` in turn (the last one repeated)."""
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if connections is not None:
            connections.append(writer)
        n = 0
        try:
            while True:
                await read_request(reader)
                writer.write(answers[min(n, len(answers) - 1)])
                await writer.drain()
                n += 1
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
    return handler


async def post(url: str, *, allow_private: bool = True, timeout_s: float = 2.0, times: int = 1):
    sender = Sender(timeout_s=timeout_s, allow_private=allow_private)
    try:
        return [await sender.post(url, {"webhook-id": "msg_1"}, b'{"type":"webhook.test"}') for _ in range(times)]
    finally:
        await sender.aclose()


NO_CONTENT = b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n"


async def test_a_2xx_is_a_delivery_and_the_connection_is_kept(serve) -> None:
    connections: list = []
    url = await serve(answering(NO_CONTENT, connections=connections))
    outcomes = await post(url, times=5)
    assert [(o.status_code, o.error, o.ok) for o in outcomes] == [(204, None, True)] * 5
    assert len(connections) == 1  # one connection for the five


async def test_a_big_answer_is_read_no_further_and_the_next_attempt_still_works(serve) -> None:
    big = b"x" * (MAX_ANSWER_BYTES * 4)
    answer = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(big) + big
    url = await serve(answering(answer))
    assert [(o.status_code, o.ok) for o in await post(url, times=2)] == [(200, True), (200, True)]


@pytest.mark.parametrize("answer, phrase", [
    (b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n", "HTTP 500"),
    (b"HTTP/1.1 301 Moved\r\nlocation: http://127.0.0.1:1/\r\ncontent-length: 0\r\n\r\n",
     "HTTP 301 (redirects are not followed)"),
    (b"garbage\r\n\r\n", "invalid HTTP answer"),
    (b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nshort", "the answer was cut short"),
    (b"", "connection closed without an answer"),
])
async def test_failures_are_short_phrases(serve, answer, phrase) -> None:
    async def handler(reader, writer) -> None:
        await read_request(reader)
        writer.write(answer)
        await writer.drain()
        writer.close()
    [outcome] = await post(await serve(handler))
    assert outcome.error == phrase and not outcome.ok


async def test_retry_after_is_kept_on_429_and_503_only(serve) -> None:
    for status, kept in ((429, "7"), (503, "7"), (500, None)):
        url = await serve(answering(b"HTTP/1.1 %d X\r\nretry-after: 7\r\ncontent-length: 0\r\n\r\n" % status))
        [outcome] = await post(url)
        assert (outcome.status_code, outcome.retry_after) == (status, kept)


async def test_no_answer_in_time_is_a_timeout(serve) -> None:
    async def silent(reader, writer) -> None:
        await read_request(reader)
        await asyncio.sleep(5)
    [outcome] = await post(await serve(silent), timeout_s=0.3)
    assert (outcome.status_code, outcome.error) == (None, "timeout")


async def test_nobody_listening_is_connection_refused() -> None:
    [outcome] = await post(f"http://127.0.0.1:{free_port()}/hook")
    assert (outcome.status_code, outcome.error) == (None, "connection refused")


async def test_a_plain_server_behind_an_https_url_fails_the_tls_handshake(serve) -> None:
    async def plain(reader, writer) -> None:
        await reader.read(100)  # the ClientHello, answered in plain HTTP
        writer.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
        await writer.drain()
        writer.close()
    url = await serve(plain)
    [outcome] = await post(url.replace("http://", "https://"))
    assert outcome.error == "TLS handshake failed"


@pytest.mark.parametrize("url, phrase", [
    ("http://127.0.0.1:{port}/hook", "the host resolves to a loopback address"),
    ("http://localhost:{port}/hook", "the host resolves to a loopback address"),
    ("http://[::1]:{port}/hook", "the host resolves to a loopback address"),
    ("http://10.1.2.3:{port}/hook", "the host resolves to a private address"),
    ("http://169.254.169.254/latest/meta-data", "the host resolves to a link-local address"),
])
async def test_refused_addresses_are_never_connected_to(serve, url, phrase) -> None:
    connections: list = []
    port = (await serve(answering(NO_CONTENT, connections=connections))).split(":")[2].split("/")[0]
    [outcome] = await post(url.format(port=port), allow_private=False)
    assert (outcome.status_code, outcome.error) == (None, phrase)
    assert connections == []


async def test_link_local_stays_refused_with_private_allowed() -> None:
    [outcome] = await post("http://169.254.169.254/latest/meta-data", allow_private=True)
    assert outcome.error == "the host resolves to a link-local address"


async def test_a_name_is_checked_at_each_new_connection(serve) -> None:
    """localhost, allowed: delivered; the same sender with private
    addresses refused now (a new connection) is refused."""
    connections: list = []
    port = (await serve(answering(NO_CONTENT, connections=connections))).split(":")[2].split("/")[0]
    url = f"http://localhost:{port}/hook"
    [ok] = await post(url, allow_private=True)
    assert ok.ok and len(connections) == 1
    [refused] = await post(url, allow_private=False)
    assert refused.error == "the host resolves to a loopback address" and len(connections) == 1
