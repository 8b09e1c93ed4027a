"""Keys and roles on every route, the rate limit, and settings that refuse."""

from __future__ import annotations

import json
import logging

import pytest

from resv.api.app import create_app
from resv.api.oplog import JsonFormatter
from resv.api.settings import ApiSettings, parse_api_keys
from resv.engine.settings import Settings as EngineSettings
from tests.api_support import CL, CLIENT_KEY, OP, OPERATOR_KEY, api, create_resource

PUBLIC = [("GET", "/health", None), ("GET", "/schema/openapi.json", None), ("GET", "/schema", None),
          ("GET", "/ready", None)]
CLIENT_ROUTES = [
    ("GET", "/availability?resource_id=gig", None),
    ("POST", "/reservations", {"resource_id": "gig", "quantity": 1, "client_id": "ann"}),
    ("GET", "/reservations/gig~1", None),
    ("POST", "/reservations/gig~1/cancel", None),
    ("POST", "/waiting-list/join", {"resource_id": "gig", "client_id": "bob", "quantity": 1}),
    ("GET", "/waiting-list/gig~w2", None),
    ("DELETE", "/waiting-list/gig~w2", None),
]
OPERATOR_ROUTES = [
    ("POST", "/resources", {"resource_id": "other", "type": "t", "capacity": 1}),
    ("GET", "/resources/gig", None),
    ("PATCH", "/resources/gig", {"capacity": 3}),
    ("GET", "/metrics", None),
    ("GET", "/ops/resources/gig/timeline", None),
    ("GET", "/ops/requests/some-request", None),
    ("GET", "/webhooks/event-types", None),
    ("POST", "/webhooks", {"url": "https://example.com/hook", "event_types": ["*"]}),
    ("GET", "/webhooks", None),
    ("GET", "/webhooks/wh_x", None),
    ("PATCH", "/webhooks/wh_x", {"enabled": False}),
    ("DELETE", "/webhooks/wh_x", None),
    ("POST", "/webhooks/wh_x/rotate-secret", None),
    ("POST", "/webhooks/wh_x/test", None),
    ("GET", "/webhooks/wh_x/deliveries", None),
    ("POST", "/webhooks/wh_x/deliveries/msg_x/retry", None),
]


async def call(c, method, path, body, headers):
    extra = {"If-Match": "1"} if method == "PATCH" else {}
    return await c.request(method, path, headers={**headers, **extra}, json=body)


async def test_auth_matrix_on_every_route(redis_url):
    async with api(redis_url) as c:
        await create_resource(c, "gig", 2, waitlist_enabled=True)
        for method, path, body in PUBLIC:
            assert (await call(c, method, path, body, {})).status_code == 200, path
        for method, path, body in CLIENT_ROUTES + OPERATOR_ROUTES:
            r = await call(c, method, path, body, {})
            assert (r.status_code, r.json()) == (401, {"error": "UNAUTHORIZED"}), (method, path)
            assert r.headers["www-authenticate"] == "Bearer"
        for method, path, body in CLIENT_ROUTES:
            r = await call(c, method, path, body, CL)
            assert r.status_code < 400 or r.status_code in (404, 409), (method, path, r.status_code)
        for method, path, body in OPERATOR_ROUTES:
            r = await call(c, method, path, body, CL)
            assert (r.status_code, r.json()) == (403, {"error": "FORBIDDEN"}), (method, path)
        for method, path, body in CLIENT_ROUTES + OPERATOR_ROUTES:
            r = await call(c, method, path, body, OP)
            assert r.status_code not in (401, 403), (method, path, r.status_code)


@pytest.mark.parametrize("authorization", [
    None, "", "Bearer", "Bearer ", f"Basic {CLIENT_KEY}", "Bearer not-a-key", f"Bearer {CLIENT_KEY}x",
    f"Bearer {CLIENT_KEY[:-1]}", f"{CLIENT_KEY}",
])
async def test_missing_or_unknown_key_is_401(redis_url, authorization):
    async with api(redis_url) as c:
        headers = {} if authorization is None else {"Authorization": authorization}
        r = await c.get("/availability?resource_id=gig", headers=headers)
        assert (r.status_code, r.json()) == (401, {"error": "UNAUTHORIZED"})


async def test_scheme_is_case_insensitive(redis_url):
    async with api(redis_url) as c:
        r = await c.get("/availability?resource_id=gig", headers={"Authorization": f"bearer {CLIENT_KEY}"})
        assert r.status_code == 404


async def test_rate_limit_per_key_with_retry_after(redis_url):
    async with api(redis_url, rate_limit=3) as c:
        statuses = []
        for _ in range(10):
            r = await c.get("/availability?resource_id=gig", headers=CL)
            statuses.append(r.status_code)
            if r.status_code == 429:
                assert r.json() == {"error": "RATE_LIMITED"}
                assert int(r.headers["retry-after"]) >= 1
        assert 429 in statuses
        assert sum(s != 429 for s in statuses) <= 6  # at most two one-second windows were crossed
        # another key has its own budget; /health has none
        assert (await c.get("/availability?resource_id=gig", headers=OP)).status_code == 404
        for _ in range(10):
            assert (await c.get("/health")).status_code == 200


async def test_keys_never_reach_the_log(redis_url, caplog):
    formatter = JsonFormatter()
    with caplog.at_level(logging.INFO, logger="resv"):
        async with api(redis_url) as c:
            await create_resource(c, "gig", 1)
            await c.post("/reservations", headers=CL, json={"resource_id": "gig", "quantity": 1, "client_id": "a"})
            await c.get("/resources/gig", headers=CL)
            await c.get("/resources/gig", headers={"Authorization": "Bearer wrong-key-123"})
            await c.get("/nowhere", headers=OP)
    lines = [formatter.format(record) for record in caplog.records]
    text = "\n".join(lines) + caplog.text
    for secret in (OPERATOR_KEY, CLIENT_KEY, "wrong-key-123", "Bearer"):
        assert secret not in text
    requests = [json.loads(line) for line in lines if json.loads(line)["msg"] == "request"]
    assert len(requests) == 5
    assert [r["status"] for r in requests] == [201, 201, 403, 401, 404]
    assert requests[0]["role"] == "operator" and requests[1]["role"] == "client"
    assert requests[1]["key_id"] == "client#2"


def test_refuses_to_start_without_keys():
    with pytest.raises(ValueError, match="RESV_API_KEYS"):
        create_app(ApiSettings(engine=EngineSettings(redis_url="redis://127.0.0.1:1/0")))
    # explicitly told otherwise
    create_app(ApiSettings(engine=EngineSettings(redis_url="redis://127.0.0.1:1/0"), insecure_no_auth=True))


async def test_insecure_no_auth_makes_everyone_an_operator(redis_url):
    async with api(redis_url, api_keys=(), insecure_no_auth=True) as c:
        assert (await c.get("/resources/gig")).status_code == 404


def test_settings_from_env():
    env = {"REDIS_URL": "redis://h:1/0", "RESV_API_KEYS": " operator:k-op-1 , client:k-cl-2 ,",
           "RESV_AVAILABILITY_TTL_MS": "0", "RESV_RATE_LIMIT": "50", "RESV_PARTITIONS": "8"}
    s = ApiSettings.from_env(env)
    assert [(k.role, k.secret) for k in s.api_keys] == [("operator", "k-op-1"), ("client", "k-cl-2")]
    assert (s.availability_ttl_ms, s.rate_limit, s.engine.partitions, s.database_url) == (0, 50, 8, None)
    assert "k-op-1" not in repr(s) and "k-cl-2" not in repr(s)
    assert ApiSettings.from_env({}).rate_limit is None
    assert ApiSettings.from_env({}).availability_ttl_ms == 500


@pytest.mark.parametrize("raw", ["admin:s3cr3t-q", "client", "client:", "client:s3cr3t q", ":s3cr3t-q"])
def test_bad_key_lists_are_refused_without_echoing_the_key(raw):
    with pytest.raises(ValueError) as err:
        parse_api_keys(raw)
    secret = raw.partition(":")[2]
    assert not secret or secret not in str(err.value)


async def test_the_matrix_covers_every_documented_operation(redis_url):
    """A route added to the app but not to the matrix above fails here."""
    import re

    async with api(redis_url) as c:
        document = (await c.get("/schema/openapi.json")).json()
    listed = [(m, p.split("?")[0]) for m, p, _ in PUBLIC + CLIENT_ROUTES + OPERATOR_ROUTES]
    operations = [(method.upper(), path) for path, item in document["paths"].items()
                  for method in item if method in ("get", "post", "put", "patch", "delete")]
    assert len(operations) >= 15  # /metrics is served by the Prometheus controller, outside the document
    for method, template in operations:
        pattern = re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", template) + "$")
        assert any(m == method and pattern.match(p) for m, p in listed), f"{method} {template} not in the matrix"
