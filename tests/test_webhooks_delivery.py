"""Deliveries end to end: API -> Redis -> archiver -> PostgreSQL -> notifier -> a real receiver."""

from __future__ import annotations

import asyncio

from resv.archiver.drain import drain_until_empty
from tests.api_support import CL, OP, api, create_resource, reserve
from tests.webhook_support import eventually


async def register(c, url, event_types=("*",), **extra):
    response = await c.post("/webhooks", headers=OP, json={"url": url, "event_types": list(event_types), **extra})
    assert response.status_code == 201, response.text
    return response.json()


async def test_a_decision_reaches_the_receiver_signed(redis_url, database_url, make_archiver, engine,
                                                       receiver, start_notifier, pool, allow_private):
    r = receiver()
    archiver = await make_archiver()
    async with api(redis_url, database_url=database_url) as c:
        hook = await register(c, r.url)
        await start_notifier()
        await create_resource(c, "gig", 2)
        assert (await reserve(c, "gig", key="k1")).status_code == 201
        await drain_until_empty(archiver)
        await eventually(lambda: len(r.snapshot()) >= 2, what="two deliveries")
        got = r.verified(hook["secret"])
        types = [g.json()["type"] for g in got]
        assert types == ["resource.created", "reservation.confirmed"]
        body = got[1].json()
        assert body["data"]["resource_id"] == "gig" and body["data"]["quantity"] == 1
        assert got[1].headers["user-agent"].startswith("resv/")
        page = (await c.get(f"/webhooks/{hook['webhook_id']}/deliveries", headers=OP)).json()
        await asyncio.sleep(0.2)
        page = (await c.get(f"/webhooks/{hook['webhook_id']}/deliveries", headers=OP)).json()
        print(page)
        assert {d["status"] for d in page["deliveries"]} == {"DELIVERED"}
