"""Webhook building blocks: the event types against the Lua and PostgreSQL,
Standard Webhooks signatures, URL and address rules, the retry schedule."""

from __future__ import annotations

import base64
import ipaddress
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from resv.notifier import schedule
from resv.notifier.addresses import UrlRefused, checked_address, parse_url, refusal
from resv.notifier.events import EVENT_TYPES, body, event_data
from resv.notifier.signing import new_secret, signature

LUA = (Path(__file__).resolve().parent.parent / "lua" / "resv.lua").read_text()


def lua_event_types() -> set[str]:
    """Every type the Lua writes to a stream: `'type', 'X'`, `'type', cond and 'X' or 'Y'`,
    and the waiting-list consequences, built by `waitlist_event(K, r, 'X', ...)`."""
    found: set[str] = set()
    for match in re.finditer(r"'type',\s*([^,}]*)", LUA):
        found |= set(re.findall(r"'([A-Z]+_[A-Z_]+)'", match.group(1)))
    found |= set(re.findall(r"waitlist_event\(K, \w+, '([A-Z]+_[A-Z_]+)'", LUA))
    return found


def test_every_decision_the_lua_logs_has_a_delivered_name_but_replays() -> None:
    types = lua_event_types()
    assert {"RESERVATION_CONFIRMED", "WAITLIST_NOTIFIED", "WAITLIST_LEAVE_REPLAYED"} <= types
    delivered = {t for t in types if not t.endswith("_REPLAYED")}
    assert set(EVENT_TYPES) == delivered
    for required in ("reservation.confirmed", "reservation.rejected", "reservation.cancelled", "waitlist.joined",
                     "waitlist.notified", "waitlist.fulfilled", "waitlist.left", "resource.created",
                     "resource.changed"):
        assert required in EVENT_TYPES.values()
    assert all(re.fullmatch(r"[a-z]+\.[a-z_]+", name) for name in EVENT_TYPES.values())


async def test_the_database_delivers_the_same_types(pool) -> None:
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT stream_type, event_type FROM webhook_event_types")
        assert dict(await cur.fetchall()) == EVENT_TYPES


def test_secrets_are_whsec_and_at_least_24_random_bytes() -> None:
    a, b = new_secret(), new_secret()
    assert a != b
    for s in (a, b):
        assert s.startswith("whsec_")
        assert len(base64.b64decode(s.removeprefix("whsec_"))) >= 24


def test_signatures_verify_with_standardwebhooks_and_tampering_fails() -> None:
    secret = new_secret()
    payload = body("reservation.confirmed", "2026-11-24T19:57:12.123456Z", {"stream_id": "1-0"})
    now = int(time.time())
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(now),
               "webhook-signature": signature([secret], "msg_1", now, payload)}
    assert Webhook(secret).verify(payload, headers)["type"] == "reservation.confirmed"
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(payload.replace(b"1-0", b"2-0"), headers)
    with pytest.raises(WebhookVerificationError):  # another id, same signature
        Webhook(secret).verify(payload, {**headers, "webhook-id": "msg_2"})
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(payload, headers)
    old = now - 3600  # signed an hour ago: replayed
    stale = {**headers, "webhook-timestamp": str(old), "webhook-signature": signature([secret], "msg_1", old, payload)}
    with pytest.raises(WebhookVerificationError, match="too old"):
        Webhook(secret).verify(payload, stale)


def test_after_a_rotation_both_secrets_verify() -> None:
    new, old = new_secret(), new_secret()
    payload = b'{"type":"webhook.test"}'
    now = int(time.time())
    header = signature([new, old], "msg_9", now, payload)
    assert len(header.split(" ")) == 2 and all(s.startswith("v1,") for s in header.split(" "))
    headers = {"webhook-id": "msg_9", "webhook-timestamp": str(now), "webhook-signature": header}
    for secret in (new, old):
        Webhook(secret).verify(payload, headers)


def test_event_data_carries_the_operator_fields() -> None:
    data = event_data(3, "17-2", {"type": "WAITLIST_NOTIFIED", "resource_id": "gig", "client_id": "ann",
                                  "quantity": "2", "entry_id": "gig~w1", "version": "4", "remaining": "",
                                  "actor": "client#1", "request_id": "r1", "ts": "1"})
    assert data == {"stream_id": "17-2", "partition": 3, "resource_id": "gig", "decision": None, "code": None,
                    "reason": None, "client_id": "ann", "quantity": 2, "reservation_id": None,
                    "entry_id": "gig~w1", "version": 4, "remaining": None}


@pytest.mark.parametrize("url, why", [
    ("ftp://example.com/x", "must be http or https"),
    ("https://user:pw@example.com/", "must not carry credentials"),
    ("https://user@example.com/", "must not carry credentials"),
    ("http:///nohost", "has no host"),
    ("https://example.com:99999/", "not a valid URL"),
    ("https://example.com/a b", "spaces"),
    ("https://example.com/#frag", "fragment"),
    ("https://example.com/" + "a" * 3000, "longer than"),
    ("example.com/hook", "must be http or https"),
])
def test_urls_refused(url: str, why: str) -> None:
    with pytest.raises(UrlRefused, match=why):
        parse_url(url)


@pytest.mark.parametrize("address, default, allowed", [
    ("127.0.0.1", "a loopback address", None),
    ("::1", "a loopback address", None),
    ("10.1.2.3", "a private address", None),
    ("192.168.0.10", "a private address", None),
    ("172.16.5.4", "a private address", None),
    ("fd00::1", "a private address", None),
    ("169.254.169.254", "a link-local address", "a link-local address"),
    ("fe80::1", "a link-local address", "a link-local address"),
    ("::ffff:169.254.169.254", "a link-local address", "a link-local address"),
    ("::ffff:127.0.0.1", "a loopback address", None),
    ("224.0.0.1", "a multicast address", "a multicast address"),
    ("0.0.0.0", "an unspecified address", "an unspecified address"),
    ("93.184.216.34", None, None),
    ("2606:4700::1111", None, None),
])
def test_address_rules(address: str, default: str | None, allowed: str | None) -> None:
    ip = ipaddress.ip_address(address)
    assert refusal(ip, allow_private=False) == default
    assert refusal(ip, allow_private=True) == allowed


async def test_names_are_checked_on_what_they_resolve_to() -> None:
    with pytest.raises(UrlRefused, match="loopback"):
        await checked_address(parse_url("http://localhost:8080/hook"), allow_private=False)
    assert (await checked_address(parse_url("http://localhost:8080/hook"), allow_private=True)).is_loopback
    with pytest.raises(UrlRefused, match="link-local"):
        await checked_address(parse_url("http://169.254.169.254/latest/meta-data"), allow_private=True)
    with pytest.raises(UrlRefused, match="does not resolve"):
        await checked_address(parse_url("http://no-such-host.invalid/"), allow_private=True)


def test_the_schedule_backs_off_with_jitter_within_the_horizon() -> None:
    pauses = [schedule.pause_s(n, 5.0) for n in range(1, 12)]
    assert 4.0 <= pauses[0] <= 6.0  # first retry after about 5 s
    for n, p in enumerate(pauses, start=1):
        nominal = min(5.0 * 3 ** (n - 1), schedule.MAX_PAUSE_S)
        assert nominal * 0.8 <= p <= nominal * 1.2
    assert len({round(schedule.pause_s(1, 5.0), 6) for _ in range(20)}) > 1  # jitter
    created = datetime(2026, 1, 1, tzinfo=UTC)
    # the attempts of a delivery that never succeeds, at its planned times
    now, attempts, times = created, 0, []
    while True:
        attempts += 1
        nxt = schedule.next_attempt(created, now, attempts, 5.0, 93_600.0)
        if nxt is None:
            break
        times.append(nxt)
        now = nxt
    assert now - created >= timedelta(hours=24)  # the horizon is at least a day
    assert times[-1] == created + timedelta(seconds=93_600)
    assert 10 <= attempts <= 30


def test_retry_after_is_honoured_within_bounds() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert schedule.retry_after("30", now) == 30.0
    assert schedule.retry_after("Thu, 01 Jan 2026 00:01:00 GMT", now) == 60.0
    assert schedule.retry_after("soon", now) is None
    assert schedule.pause_s(1, 5.0, retry_after_s=30.0) == 30.0
    assert schedule.pause_s(1, 5.0, retry_after_s=0.0) == 5.0  # not sooner than the schedule's first pause
    assert schedule.pause_s(1, 5.0, retry_after_s=10**9) == schedule.MAX_PAUSE_S
    created = now - timedelta(seconds=95)
    assert schedule.next_attempt(created, now, 1, 5.0, 100.0, retry_after_s=60.0) == created + timedelta(seconds=100)
