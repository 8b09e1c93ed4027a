"""One HTTP attempt: POST the signed body, and say what happened in a short
phrase.

aiohttp, because the client's CPU per request is what bounds one
notifier's deliveries per second (one endpoint is delivered to by one
notifier at a time): measured on the project's machine, 3,000 POSTs, 4 in
flight, to a minimal keep-alive receiver, 187 us of client CPU per POST
against httpx's 912 (and httpcore's 667), whose layers (anyio, models,
cookies) cost more than the request.

Addresses are checked where they are used: aiohttp asks `_CheckedResolver`
for the addresses of every new connection, which resolves the name and
refuses it if any address is not allowed (addresses.py), and connects only
to the addresses it returned, so a name that resolves elsewhere later gains
nothing. A host written as an address is checked before the request (aiohttp
does not resolve those). A kept-alive connection was checked when it was
made. No redirects followed, no proxies from the environment (a proxy would
connect on our behalf to an address we never checked), one bound on the
whole attempt: RESV_WEBHOOK_TIMEOUT_S, name resolution included.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket
import ssl
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import aiohttp
import msgspec
from aiohttp.abc import AbstractResolver
from yarl import URL

from resv.notifier.addresses import UrlRefused, allowed_addresses, parse_url, refusal

MAX_ANSWER_BYTES = 64 * 1024
"""Read (and ignore) at most this much of an answer's body, so the connection
can be reused; a larger one closes it."""


def user_agent() -> str:
    try:
        return f"resv/{version('resv')}"
    except PackageNotFoundError:
        return "resv/0.0.0"


class Outcome(msgspec.Struct, frozen=True):
    status_code: int | None
    """The answer's status, None when there was none."""
    error: str | None
    """None on success; else a short operator-readable phrase."""
    retry_after: str | None = None
    """The answer's Retry-After header (429 and 503 only)."""

    @property
    def ok(self) -> bool:
        return self.error is None


class _CheckedResolver(AbstractResolver):
    """The addresses of a new connection: all of the name's, if all are allowed."""

    def __init__(self, allow_private: bool) -> None:
        self.allow_private = allow_private

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[Any]:
        addresses = await allowed_addresses(host, port, allow_private=self.allow_private)
        return [{"hostname": host, "host": str(a), "port": port,
                 "family": socket.AF_INET6 if a.version == 6 else socket.AF_INET,
                 "proto": 0, "flags": socket.AI_NUMERICHOST} for a in addresses]

    async def close(self) -> None:
        pass


class Sender:
    def __init__(self, *, timeout_s: float, allow_private: bool, max_connections: int = 256) -> None:
        self.timeout_s = timeout_s
        self.allow_private = allow_private
        self.max_connections = max_connections
        self.user_agent = user_agent()
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        # Made on first use, inside the running loop (aiohttp asks for that).
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self.max_connections, use_dns_cache=False,
                                             resolver=_CheckedResolver(self.allow_private),
                                             ssl=ssl.create_default_context())
            self._session = aiohttp.ClientSession(
                connector=connector, trust_env=False, auto_decompress=False,
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                skip_auto_headers=("Accept", "Accept-Encoding"))
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def post(self, url: str, headers: dict[str, str], body: bytes) -> Outcome:
        try:
            async with asyncio.timeout(self.timeout_s):
                return await self._post(url, headers, body)
        except TimeoutError:  # aiohttp's timeouts are TimeoutErrors too
            return Outcome(None, "timeout")
        except UrlRefused as exc:
            return Outcome(None, str(exc))
        except aiohttp.ClientError as exc:
            return Outcome(None, _phrase(exc))
        except OSError as exc:
            return Outcome(None, _os_phrase(exc))

    async def _post(self, url: str, headers: dict[str, str], body: bytes) -> Outcome:
        parse_url(url)  # checked at registration; checked again, it costs little
        target = URL(url, encoded=False)
        _check_literal(target, self.allow_private)
        sent = {"content-type": "application/json", "user-agent": self.user_agent, **headers}
        async with self._client().post(target, data=body, headers=sent, allow_redirects=False) as response:
            read = 0
            while chunk := await response.content.readany():
                read += len(chunk)
                if read > MAX_ANSWER_BYTES:
                    response.close()  # not worth reading to reuse the connection
                    break
            code = response.status
            retry_after = response.headers.get("retry-after") if code in (429, 503) else None
        if 200 <= code < 300:
            return Outcome(code, None)
        if 300 <= code < 400:
            return Outcome(code, f"HTTP {code} (redirects are not followed)")
        return Outcome(code, f"HTTP {code}", retry_after)


def _check_literal(target: URL, allow_private: bool) -> None:
    """aiohttp connects to a host written as an address without resolving
    it, so without our resolver: its check is here, on the host as aiohttp
    reads it."""
    try:
        address = ipaddress.ip_address((target.raw_host or "").strip("[]"))
    except ValueError:
        return
    why = refusal(address, allow_private=allow_private)
    if why is not None:
        raise UrlRefused(f"the host resolves to {why}")


def _phrase(exc: aiohttp.ClientError) -> str:
    if isinstance(exc, (aiohttp.ClientConnectorCertificateError, aiohttp.ClientSSLError)):
        return "TLS handshake failed"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return _os_phrase(exc.os_error)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "connection closed without an answer"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "the answer was cut short"
    if isinstance(exc, aiohttp.ClientResponseError):
        return "invalid HTTP answer"
    if isinstance(exc, aiohttp.InvalidURL):
        return "not a valid URL"
    if isinstance(exc, aiohttp.ClientOSError):
        return _os_phrase(exc)
    return "HTTP client error"


def _os_phrase(exc: OSError) -> str:
    if isinstance(exc, ssl.SSLError):
        return "TLS handshake failed"
    if exc.errno == errno.ECONNREFUSED:
        return "connection refused"
    if exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
        return "network unreachable"
    if exc.errno in (errno.ECONNRESET, errno.EPIPE):
        return "connection reset"
    return "connection failed"
