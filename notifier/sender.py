"""One HTTP attempt: resolve the endpoint's host, check the address, connect
to that address (the Host header and TLS server name stay the endpoint's),
POST the signed body, and say what happened in a short phrase.

httpx (already in the dependency tree through Litestar) with
follow_redirects=False, no proxies from the environment (a proxy would
connect on our behalf to an address we never checked), and one bound on the
whole attempt: RESV_WEBHOOK_TIMEOUT_S, name resolution included.
"""

from __future__ import annotations

import asyncio
import errno
import ssl
from importlib.metadata import PackageNotFoundError, version

import httpx
import msgspec

from resv.notifier.addresses import UrlRefused, checked_address, default_port, parse_url

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


class Sender:
    def __init__(self, *, timeout_s: float, allow_private: bool, max_connections: int = 256) -> None:
        self.timeout_s = timeout_s
        self.allow_private = allow_private
        self.user_agent = user_agent()
        self.client = httpx.AsyncClient(
            follow_redirects=False,
            trust_env=False,
            timeout=httpx.Timeout(timeout_s),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        )

    async def aclose(self) -> None:
        await self.client.aclose()

    async def post(self, url: str, headers: dict[str, str], body: bytes) -> Outcome:
        try:
            async with asyncio.timeout(self.timeout_s):
                return await self._post(url, headers, body)
        except TimeoutError:
            return Outcome(None, "timeout")
        except UrlRefused as exc:
            return Outcome(None, str(exc))
        except httpx.TimeoutException:
            return Outcome(None, "timeout")
        except httpx.HTTPError as exc:
            return Outcome(None, _phrase(exc))
        except OSError as exc:
            return Outcome(None, _os_phrase(exc))

    async def _post(self, url: str, headers: dict[str, str], body: bytes) -> Outcome:
        parts = parse_url(url)
        address = await checked_address(parts, allow_private=self.allow_private)
        port = default_port(parts)
        target = httpx.URL(scheme=parts.scheme, host=str(address), port=port,
                           raw_path=((parts.path or "/") + (f"?{parts.query}" if parts.query else "")).encode())
        sent = {
            "host": parts.netloc.rpartition("@")[2],
            "content-type": "application/json",
            "user-agent": self.user_agent,
            **headers,
        }
        extensions = {"sni_hostname": parts.hostname} if parts.scheme == "https" else None
        request = self.client.build_request("POST", target, headers=sent, content=body, extensions=extensions)
        response = await self.client.send(request, stream=True)
        try:
            read = 0
            async for chunk in response.aiter_raw():
                read += len(chunk)
                if read > MAX_ANSWER_BYTES:
                    break
        finally:
            await response.aclose()
        code = response.status_code
        if 200 <= code < 300:
            return Outcome(code, None)
        retry_after = response.headers.get("retry-after") if code in (429, 503) else None
        if 300 <= code < 400:
            return Outcome(code, f"HTTP {code} (redirects are not followed)")
        return Outcome(code, f"HTTP {code}", retry_after)


def _phrase(exc: httpx.HTTPError) -> str:
    cause = exc.__cause__ or exc.__context__
    if isinstance(exc, httpx.ConnectError):
        if isinstance(cause, ssl.SSLError) or "SSL" in str(exc) or "certificate" in str(exc):
            return "TLS handshake failed"
        if isinstance(cause, OSError):
            return _os_phrase(cause)
        if "refused" in str(exc).lower():
            return "connection refused"
        return "connection failed"
    if isinstance(exc, httpx.RemoteProtocolError):
        return "connection closed without an answer" if "without" in str(exc) else "invalid HTTP answer"
    if isinstance(exc, (httpx.ReadError, httpx.WriteError)):
        return "connection reset"
    if isinstance(exc, httpx.UnsupportedProtocol):
        return "unsupported protocol"
    return "HTTP client error"


def _os_phrase(exc: OSError) -> str:
    if exc.errno == errno.ECONNREFUSED:
        return "connection refused"
    if exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
        return "network unreachable"
    if exc.errno == errno.ECONNRESET:
        return "connection reset"
    return "connection failed"

