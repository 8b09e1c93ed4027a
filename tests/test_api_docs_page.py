"""The OpenAPI page works offline: every asset its HTML references is
served by the API itself, from the package; and the document lists every
status a route can answer."""

from __future__ import annotations

import ipaddress
import re
import socket

import pytest

from tests.api_support import api

ASSET = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']""")


@pytest.fixture
def no_network(monkeypatch):
    """Connections to anything but loopback fail (the test Redis is on loopback)."""
    real = socket.socket.connect

    def connect(self, address):
        host = address[0] if isinstance(address, tuple) else None
        if host is not None:
            try:
                if not ipaddress.ip_address(socket.gethostbyname(host)).is_loopback:
                    raise OSError(f"network off in this test: {address}")
            except (socket.gaierror, ValueError):
                raise OSError(f"network off in this test: {address}") from None
        return real(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)


async def test_the_page_loads_every_asset_from_the_package(redis_url, no_network) -> None:
    async with api(redis_url) as client:
        page = await client.get("/schema")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        urls = ASSET.findall(page.text)
        assert urls, page.text[:500]
        for url in urls:
            assert url.startswith("/") and not url.startswith("//"), f"{url}: not served by us"
            asset = await client.get(url)
            assert asset.status_code == 200, url
            assert len(asset.content) > 1000, url
        assert any(u.endswith("redoc.standalone.js") for u in urls)
        assert "Redoc.init(" in page.text
        assert "http://" not in page.text.split("<body")[0] and "https://" not in page.text.split("<body")[0]


async def test_the_document_lists_every_status(redis_url) -> None:
    async with api(redis_url) as client:
        doc = (await client.get("/schema/openapi.json")).json()
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method in ("get", "post", "patch", "delete"):
                assert "500" in op["responses"], f"{method} {path}"
    join = doc["paths"]["/waiting-list/join"]["post"]["responses"]
    assert {"200", "201", "400", "409", "413", "500", "503"} <= set(join)
    assert {"200", "503", "500"} <= set(doc["paths"]["/ready"]["get"]["responses"])
    assert "431" in doc["info"]["description"]
