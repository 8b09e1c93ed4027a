"""Who asked, through the API: every event a request makes records the
caller's key id as `actor` (never the key), and no answer to a client
carries it; the operator's timeline shows it."""

from __future__ import annotations

import redis

from tests.api_support import CL, CLIENT_KEY, OP, OPERATOR_KEY, api, create_resource, reserve
from tests.support import events

# Key ids: the role and the key's place in RESV_API_KEYS (operator first).
OPERATOR, CLIENT = "operator#1", "client#2"


async def test_every_event_names_the_caller_and_no_client_answer_does(redis_url):
    answers: list[tuple[str, str]] = []  # (what, body) of every answer to a client key

    def seen(what: str, response) -> dict:
        answers.append((what, response.text))
        return response.json()

    async with api(redis_url) as client:
        await create_resource(client, "gig", 1, waitlist_enabled=True)
        first = seen("reserve", await reserve(client, "gig", "ann", 1, key="k1"))
        seen("reserve again", await reserve(client, "gig", "ann", 1, key="k1"))           # replayed
        seen("reserve, full", await reserve(client, "gig", "cy", 1, key="k2"))            # rejected
        seen("reserve, key reused", await reserve(client, "gig", "dee", 2, key="k1"))     # 422
        entry = seen("join", await client.post("/waiting-list/join", headers=CL,
                                               json={"resource_id": "gig", "client_id": "bob", "quantity": 1}))
        seen("entry", await client.get(f"/waiting-list/{entry['entry_id']}", headers=CL))
        seen("availability", await client.get("/availability?resource_id=gig", headers=CL))
        seen("reservation", await client.get(f"/reservations/{first['reservation_id']}", headers=CL))
        seen("cancel", await client.post(f"/reservations/{first['reservation_id']}/cancel", headers=CL))
        seen("cancel again", await client.post(f"/reservations/{first['reservation_id']}/cancel", headers=CL))
        seen("leave", await client.delete(f"/waiting-list/{entry['entry_id']}", headers=CL))
        patched = await client.patch("/resources/gig", headers={**OP, "If-Match": '"1"'}, json={"capacity": 3})
        assert patched.status_code == 200, patched.text
        timeline = (await client.get("/ops/resources/gig/timeline", headers=OP)).json()

    assert len(answers) == 11
    for what, body in answers:
        for secret in (OPERATOR, CLIENT, "actor", CLIENT_KEY, OPERATOR_KEY):
            assert secret not in body, f"{secret!r} in the answer to {what}: {body}"

    sync = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        logged = events(sync, "gig")
    finally:
        sync.close()
    by_type = [(e["type"], e.get("actor")) for e in logged]
    assert by_type == [
        ("RESOURCE_CREATED", OPERATOR),
        ("RESERVATION_CONFIRMED", CLIENT),
        ("RESERVATION_REPLAYED", CLIENT),
        ("RESERVATION_REJECTED", CLIENT),
        ("RESERVATION_REJECTED", CLIENT),   # REQUEST_ID_REUSED
        ("WAITLIST_JOINED", CLIENT),
        ("RESERVATION_CANCELLED", CLIENT),
        ("WAITLIST_NOTIFIED", CLIENT),      # a consequence carries its call's actor
        ("CANCEL_REPLAYED", CLIENT),
        ("WAITLIST_LEFT", CLIENT),
        ("RULES_CHANGED", OPERATOR),
    ]
    # the operator's timeline shows who asked (the key id, never the key)
    assert [e["actor"] for e in timeline["events"]] == [actor for _, actor in by_type]
    assert OPERATOR_KEY not in str(timeline) and CLIENT_KEY not in str(timeline)
