"""Which URLs an endpoint may have, and which addresses it may be reached at.

`http`/`https` only, a host, no credentials. An address is refused when it
is loopback, private, link-local, multicast, unspecified or reserved; with
RESV_WEBHOOK_ALLOW_PRIVATE=1 loopback and private ranges are allowed (a
receiver on this machine or network), link-local never: 169.254.169.254 is
where clouds serve their instance credentials.

The same check runs at registration and at every new connection, on the
addresses the name resolves to then; the connection goes to an address it
checked (sender.py), so a name that resolves elsewhere the second time
gains nothing.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import SplitResult, urlsplit

MAX_URL_LENGTH = 2048

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class UrlRefused(ValueError):
    """The URL or its address may not be an endpoint; the message says why
    in a short phrase fit for an operator (and an error body)."""


def parse_url(url: str) -> SplitResult:
    """The URL's parts, or UrlRefused."""
    if len(url) > MAX_URL_LENGTH:
        raise UrlRefused(f"longer than {MAX_URL_LENGTH} characters")
    if any(c.isspace() or not c.isprintable() for c in url):
        raise UrlRefused("contains spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise UrlRefused("not a valid URL") from None
    if parts.scheme not in ("http", "https"):
        raise UrlRefused("must be http or https")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise UrlRefused("must not carry credentials")
    if not parts.hostname:
        raise UrlRefused("has no host")
    if port == 0:
        raise UrlRefused("port 0 is not a port")
    if parts.fragment:
        raise UrlRefused("must not have a fragment")
    return parts


def refusal(address: Address, *, allow_private: bool) -> str | None:
    """Why this address may not be connected to, or None."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_link_local:
        return "a link-local address"
    if address.is_multicast:
        return "a multicast address"
    if address.is_unspecified:
        return "an unspecified address"
    if address.is_loopback:
        return None if allow_private else "a loopback address"
    if address.is_private:
        return None if allow_private else "a private address"
    if address.is_reserved or not address.is_global:
        return "a reserved address"
    return None


async def resolve(host: str, port: int) -> list[Address]:
    """The addresses a host name (or literal) stands for, in resolver order."""
    try:
        return [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise UrlRefused("the host name does not resolve") from None
    seen: list[Address] = []
    for *_, sockaddr in infos:
        address = ipaddress.ip_address(sockaddr[0].split("%", 1)[0])
        if address not in seen:
            seen.append(address)
    if not seen:
        raise UrlRefused("the host name does not resolve")
    return seen


def default_port(parts: SplitResult) -> int:
    return parts.port or (443 if parts.scheme == "https" else 80)


async def allowed_addresses(host: str, port: int, *, allow_private: bool) -> list[Address]:
    """The addresses a host resolves to, if every one is allowed (a name
    that resolves to a public and a private address is refused: it has no
    business doing so); else UrlRefused."""
    addresses = await resolve(host, port)
    for address in addresses:
        why = refusal(address, allow_private=allow_private)
        if why is not None:
            raise UrlRefused(f"the host resolves to {why}")
    return addresses


async def checked_address(parts: SplitResult, *, allow_private: bool) -> Address:
    """The first address the URL's host resolves to, if all are allowed."""
    return (await allowed_addresses(parts.hostname or "", default_port(parts), allow_private=allow_private))[0]
