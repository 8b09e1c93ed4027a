"""The Lua is the only rule book: an HTTP client and an ops script calling
FCALL get the same answer for the same values.

Each case sends one boundary value both ways, on a fresh keyspace each: the
HTTP API (400 = malformed, 201/200 = confirmed, 409 = rejected with a public
code) and the Lua directly (BAD_ARGUMENT = malformed, else the decision).
The bounds come from resv.engine.limits, which reads them from the Lua.
Each case also states what the Lua must answer, so a case cannot pass by
being malformed both ways when it should have been accepted.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis

from resv.engine import keys
from resv.engine.library import library_source
from resv.engine.limits import MAX_ID, MAX_IDEMPOTENCY_TTL_MS, MAX_INT, MAX_RESOURCE_ID, MAX_TIME, MAX_TYPE
from resv.engine.settings import Settings
from tests.api_support import CL, OP, api
from tests.support import PARTITIONS, as_dict

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MALFORMED = "malformed"
OK = ("CONFIRMED", None)
UNKNOWN = ("REJECTED", "INVALID_STATE")


def iso(us: int) -> str:
    return (EPOCH + timedelta(microseconds=us)).isoformat()


def fcall(r: redis.Redis, function: str, ks: list[str], *args: str) -> Any:
    try:
        d = as_dict(r.execute_command("FCALL", function, len(ks), *ks, *args))
    except redis.ResponseError as err:
        assert str(err).startswith("BAD_ARGUMENT"), err
        return MALFORMED
    return d["decision"], d.get("code") or None


def http_outcome(response) -> Any:
    if response.status_code == 400:
        return MALFORMED
    if response.status_code in (200, 201):
        return "CONFIRMED", None
    assert response.status_code == 409, response.text
    return "REJECTED", response.json()["code"]


@pytest.fixture
def r(redis_url: str):
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.execute_command("FUNCTION", "LOAD", "REPLACE", library_source())
    yield client
    client.close()


# ------------------------------------------------------------ resources

CREATE = {"resource_id": "gig", "type": "meetup", "capacity": 10}
CREATE_CASES = {
    "longest resource id": ({"resource_id": "r" * MAX_RESOURCE_ID}, OK),
    "resource id too long": ({"resource_id": "r" * (MAX_RESOURCE_ID + 1)}, MALFORMED),
    "resource id charset": ({"resource_id": "A-z_0.9"}, OK),
    "resource id with a colon": ({"resource_id": "a:b"}, MALFORMED),
    "resource id with a slash": ({"resource_id": "a/b"}, MALFORMED),
    "resource id with a tilde": ({"resource_id": "a~1"}, MALFORMED),
    "longest type": ({"type": "t" * MAX_TYPE}, OK),
    "type too long": ({"type": "t" * (MAX_TYPE + 1)}, MALFORMED),
    "type with a space": ({"type": "a b"}, MALFORMED),
    "type printable edges": ({"type": "!~"}, OK),
    "type with DEL": ({"type": "a\x7f"}, MALFORMED),
    "capacity 0": ({"capacity": 0}, OK),
    "capacity max": ({"capacity": MAX_INT}, OK),
    "capacity above max": ({"capacity": MAX_INT + 1}, MALFORMED),
    "capacity negative": ({"capacity": -1}, MALFORMED),
    "max_per_request 0": ({"max_per_request": 0}, MALFORMED),
    "max_per_request 1": ({"max_per_request": 1}, OK),
    "max_per_request max": ({"max_per_request": MAX_INT}, OK),
    "max_per_request above max": ({"max_per_request": MAX_INT + 1}, MALFORMED),
    "max_per_client max": ({"max_per_client": MAX_INT}, OK),
    "max_per_client above max": ({"max_per_client": MAX_INT + 1}, MALFORMED),
    "opens at the epoch": ({"opens_at": 0}, OK),
    "opens before the epoch": ({"opens_at": -1}, MALFORMED),
    "closes at the last time": ({"closes_at": MAX_TIME}, OK),
    "closes past the last time": ({"closes_at": MAX_TIME + 1}, MALFORMED),
    "empty window": ({"opens_at": 5_000_000, "closes_at": 5_000_000}, MALFORMED),
    "shortest window": ({"opens_at": 5_000_000, "closes_at": 5_000_001}, OK),
}


@pytest.mark.parametrize("case", CREATE_CASES)
async def test_create_boundaries_answer_alike(case, r, redis_url):
    override, expected = CREATE_CASES[case]
    spec = {**CREATE, **override}
    rid = spec["resource_id"]
    ks = list(keys.write_keys(rid, PARTITIONS))
    direct = fcall(r, "resv_create", ks, rid, spec["type"], str(spec["capacity"]),
                   *(str(spec[t]) if t in spec else "" for t in ("opens_at", "closes_at")), "0",
                   *(str(spec[t]) if t in spec else "" for t in ("max_per_request", "max_per_client")))
    r.flushall()
    body = {k: iso(v) if k in ("opens_at", "closes_at") else v for k, v in spec.items()}
    async with api(redis_url) as c:
        via_http = http_outcome(await c.post("/resources", headers=OP, json=body))
    assert direct == expected, (case, direct)
    assert via_http == direct, (case, via_http, direct)


# ----------------------------------------------------------- reservations

RESERVE = {"resource_id": "gig", "client_id": "ann", "quantity": 1, "request_id": "req-1"}
RESERVE_CASES = {
    "quantity 0": ({"quantity": 0}, MALFORMED),
    "quantity 1": ({"quantity": 1}, OK),
    "quantity max": ({"quantity": MAX_INT}, OK),
    "quantity above max": ({"quantity": MAX_INT + 1}, MALFORMED),
    "longest client id": ({"client_id": "c" * MAX_ID}, OK),
    "client id too long": ({"client_id": "c" * (MAX_ID + 1)}, MALFORMED),
    "client id printable edges": ({"client_id": "!~"}, OK),
    "client id with a space": ({"client_id": "a b"}, MALFORMED),
    "client id with DEL": ({"client_id": "a\x7f"}, MALFORMED),
    "longest request id": ({"request_id": "q" * MAX_ID}, OK),
    "request id too long": ({"request_id": "q" * (MAX_ID + 1)}, MALFORMED),
    "request id printable edges": ({"request_id": "!~"}, OK),
    "request id with a space": ({"request_id": "a b"}, MALFORMED),
    "unknown resource, longest id": ({"resource_id": "r" * MAX_RESOURCE_ID}, UNKNOWN),
    "resource id too long": ({"resource_id": "r" * (MAX_RESOURCE_ID + 1)}, MALFORMED),
    "resource id with a colon": ({"resource_id": "a:b"}, MALFORMED),
}


def _setup(r: redis.Redis) -> None:
    ks = list(keys.write_keys("gig", PARTITIONS))
    fcall(r, "resv_create", ks, "gig", "meetup", str(MAX_INT), "", "", "1", "", "")


@pytest.mark.parametrize("case", RESERVE_CASES)
async def test_reserve_boundaries_answer_alike(case, r, redis_url):
    override, expected = RESERVE_CASES[case]
    call = {**RESERVE, **override}
    rid, request_id = call["resource_id"], call["request_id"]
    _setup(r)
    direct = fcall(r, "resv_reserve", list(keys.reserve_keys(rid, request_id, PARTITIONS)), rid, call["client_id"], str(call["quantity"]),
                   request_id)
    r.flushall()
    r.execute_command("FUNCTION", "LOAD", "REPLACE", library_source())
    _setup(r)
    async with api(redis_url) as c:
        response = await c.post("/reservations", headers={**CL, "Idempotency-Key": request_id},
                                json={k: call[k] for k in ("resource_id", "client_id", "quantity")})
    assert direct == expected, (case, direct)
    assert http_outcome(response) == direct, (case, response.text, direct)


JOIN_CASES = {
    "quantity 0": (0, MALFORMED),
    "quantity max": (MAX_INT, OK),
    "quantity above max": (MAX_INT + 1, MALFORMED),
}


@pytest.mark.parametrize("case", JOIN_CASES)
async def test_waitlist_join_boundaries_answer_alike(case, r, redis_url):
    quantity, expected = JOIN_CASES[case]
    _setup(r)
    direct = fcall(r, "resv_wl_join", list(keys.write_keys("gig", PARTITIONS)), "gig", "ann", str(quantity))
    r.flushall()
    r.execute_command("FUNCTION", "LOAD", "REPLACE", library_source())
    _setup(r)
    async with api(redis_url) as c:
        response = await c.post("/waiting-list/join", headers=CL,
                                json={"resource_id": "gig", "client_id": "ann", "quantity": quantity})
    assert direct == expected, (case, direct)
    assert http_outcome(response) == direct, (case, response.text, direct)


@pytest.mark.parametrize("ttl, expected", [(1, OK), (MAX_IDEMPOTENCY_TTL_MS, OK), (0, MALFORMED),
                                           (MAX_IDEMPOTENCY_TTL_MS + 1, MALFORMED)])
def test_idempotency_ttl_bound_is_the_lua_s(ttl, expected, r):
    """The engine's setting is refused at start exactly when the Lua would
    refuse every reservation made with it."""
    _setup(r)
    assert fcall(r, "resv_reserve", list(keys.reserve_keys("gig", "q", PARTITIONS)), "gig", "ann", "1", "q", str(ttl)) == expected
    env = {"RESV_IDEMPOTENCY_TTL_MS": str(ttl)}
    if expected == OK:
        assert Settings.from_env(env).idempotency_ttl_ms == ttl
    elif ttl:  # 0 means the default
        with pytest.raises(ValueError, match="RESV_IDEMPOTENCY_TTL_MS"):
            Settings.from_env(env)
