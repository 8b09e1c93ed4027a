"""/health, /ready, /metrics, the operator log and the OpenAPI document."""

from __future__ import annotations

import json
import logging
import re

import pytest

from resv.api.oplog import JsonFormatter
from resv.embedded import free_port
from resv.engine import Engine
from resv.engine.settings import Settings as EngineSettings
from tests.api_support import CL, OP, api, create_resource, reserve


async def test_health_needs_no_key(redis_url):
    async with api(redis_url) as c:
        r = await c.get("/health")
        assert (r.status_code, r.json()) == (200, {"status": "ok"})


async def test_ready_checks_redis_and_the_library(redis_url):
    async with api(redis_url) as c:
        r = await c.get("/ready", headers=OP)
        assert r.status_code == 200
        assert r.json() == {"status": "ready",
                            "checks": {"redis": "up", "library": "up", "state": "up", "durability": "up",
                                       "audit": "not_configured"},
                            "archiver_lag": {"entries": 0, "seconds": 0.0}}


async def test_ready_reports_the_archiver_lag(redis_url):
    async with api(redis_url) as c:
        await create_resource(c, "gig", 5)
        await reserve(c, "gig", "ann")
        lag = (await c.get("/ready", headers=OP)).json()["archiver_lag"]
        # no archiver has run: both decisions wait in the stream
        assert lag["entries"] == 2 and lag["seconds"] >= 0


async def test_ready_reloads_a_flushed_library(redis_url):
    import redis

    async with api(redis_url) as c:
        admin = redis.Redis.from_url(redis_url)
        admin.function_flush()
        admin.close()
        assert (await c.get("/ready", headers=OP)).json()["checks"]["library"] == "up"
        await create_resource(c, "gig", 1)  # and commits work again


async def test_ready_reports_the_audit_down_without_failing_readiness(redis_url):
    """Commits need Redis alone: PostgreSQL down is reported, not judged."""
    async with api(redis_url):  # the deployment is recorded
        pass
    async with api(redis_url, database_url=f"postgresql://resv@127.0.0.1:{free_port()}/resv") as c:
        r = await c.get("/ready", headers=OP)
        assert r.status_code == 200
        assert r.json()["checks"] == {"redis": "up", "library": "up", "state": "up", "durability": "up",
                                      "audit": "down"}
        assert r.json()["status"] == "ready"
        assert (await c.get("/ready")).status_code == 200


async def test_ready_with_postgres_up(redis_url, pg_server):
    async with api(redis_url, database_url=pg_server.url) as c:
        r = await c.get("/ready", headers=OP)
        assert (r.status_code, r.json()["checks"]["audit"]) == (200, "up")


@pytest.mark.parametrize("headers", [{}, CL, {"Authorization": "Bearer not-a-key"}], ids=["none", "client", "unknown"])
async def test_ready_without_the_operator_key_says_only_whether_it_can_commit(redis_url, headers):
    async with api(redis_url) as c:
        r = await c.get("/ready", headers=headers)
        assert (r.status_code, r.json()) == (200, {"status": "ready"})
    async with api(redis_url, engine=Engine(EngineSettings(redis_url=f"redis://127.0.0.1:{free_port()}",
                                                           socket_timeout=0.2, retries=0))) as c:
        r = await c.get("/ready", headers=headers)
        assert (r.status_code, r.json()) == (503, {"status": "unavailable", "error": "UNAVAILABLE"})


async def test_metrics(redis_url):
    async with api(redis_url) as c:
        await create_resource(c, "gig", 1)
        await reserve(c, "gig", "ann")
        await reserve(c, "gig", "bob")
        await c.get("/reservations/gig~99", headers=CL)
        r = await c.get("/metrics", headers=OP)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        text = r.text
    lines = text.splitlines()
    assert any(line.startswith('resv_http_requests_total{') and 'path="/reservations"' in line
               and 'status_code="409"' in line for line in lines)
    assert any(line.startswith('resv_http_requests_total{') and 'path="/reservations/{reservation_id}"' in line
               and 'status_code="404"' in line for line in lines)
    assert any(line.startswith("resv_http_request_duration_seconds_bucket{") for line in lines)
    assert any(line.startswith("resv_decisions_total{") and 'code="RESOURCE_FULL"' in line
               and 'type="RESERVATION_REJECTED"' in line for line in lines)
    for name in ("resv_availability_cache_total", "resv_redis_errors_total", "resv_internal_errors_total"):
        assert f"# TYPE {name} counter" in text or f"# TYPE {name.removesuffix('_total')} counter" in text


async def test_one_log_line_per_request_with_the_decision(redis_url, caplog):
    formatter = JsonFormatter()
    with caplog.at_level(logging.INFO, logger="resv"):
        async with api(redis_url) as c:
            await create_resource(c, "gig", 1)
            await reserve(c, "gig", "ann", key="ann-1")
            await reserve(c, "gig", "bob", key="bob-1")
            await reserve(c, "gig", "ann", key="ann-1")
            await c.get("/nowhere", headers=CL)
    lines = [json.loads(formatter.format(r)) for r in caplog.records if r.getMessage() == "request"]
    assert [(line["method"], line["route"], line["status"]) for line in lines] == [
        ("POST", "/resources", 201), ("POST", "/reservations", 201), ("POST", "/reservations", 409),
        ("POST", "/reservations", 201), ("GET", None, 404)]
    created, confirmed, rejected, replayed, unrouted = lines
    assert confirmed["request_id"] == "ann-1" and confirmed["role"] == "client"
    assert (confirmed["decision"], confirmed["decision_type"], confirmed["reason"]) == (
        "CONFIRMED", "RESERVATION_CONFIRMED", "CONFIRMED")
    assert (rejected["decision"], rejected["code"], rejected["reason"]) == ("REJECTED", "RESOURCE_FULL", "SOLD_OUT")
    assert rejected["request_id"] == "bob-1" and rejected["ts"].endswith("Z")
    assert replayed["replayed"] is True
    assert created["role"] == "operator" and created["decision_type"] == "RESOURCE_CREATED"
    assert unrouted["path"] == "/nowhere"
    for line in lines:
        assert isinstance(line["latency_ms"], float) or line is unrouted
        assert line["request_id"]


async def test_openapi_document(redis_url):
    async with api(redis_url) as c:
        r = await c.get("/schema/openapi.json")
        assert r.status_code == 200
        doc = r.json()
        assert (await c.get("/schema")).status_code == 200
    assert doc["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http", "scheme": "bearer", "description": doc["components"]["securitySchemes"]["bearerAuth"][
            "description"]}
    operations = {(method.upper(), path): op for path, item in doc["paths"].items()
                  for method, op in item.items() if method in ("get", "post", "patch", "delete")}
    expected = {
        ("GET", "/availability"): "getAvailability",
        ("POST", "/reservations"): "createReservation",
        ("GET", "/reservations/{reservation_id}"): "getReservation",
        ("POST", "/reservations/{reservation_id}/cancel"): "cancelReservation",
        ("POST", "/waiting-list/join"): "joinWaitingList",
        ("GET", "/waiting-list/{entry_id}"): "getWaitingListEntry",
        ("DELETE", "/waiting-list/{entry_id}"): "leaveWaitingList",
        ("POST", "/resources"): "createResource",
        ("GET", "/resources/{resource_id}"): "getResource",
        ("PATCH", "/resources/{resource_id}"): "updateResource",
        ("GET", "/health"): "getHealth",
        ("GET", "/ready"): "getReadiness",
    }
    for key, operation_id in expected.items():
        assert operations[key]["operationId"] == operation_id
    for key, op in operations.items():
        if key == ("GET", "/health"):
            assert "security" not in op
            continue
        if key == ("GET", "/ready"):  # the key is optional: it adds the details
            assert op.get("security") == [{}, {"bearerAuth": []}]
            assert {"200", "503"} <= set(op["responses"])
            continue
        assert op.get("security") == [{"bearerAuth": []}], key
        assert {"401", "503"} <= set(op["responses"]), key
    # every 400 documented is ours (ErrorBody), not Litestar's default for a
    # route with parameters that declares none (schemathesis found five)
    for key, op in operations.items():
        bad_request = op["responses"].get("400")
        if bad_request is not None:
            assert bad_request["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody"), key
    reserve_op = operations[("POST", "/reservations")]
    assert {"201", "400", "409", "413", "422"} <= set(reserve_op["responses"])
    assert reserve_op["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("ReservationRequest")
    assert any(p["name"] == "Idempotency-Key" and p["in"] == "header" for p in reserve_op["parameters"])
    assert {"412", "428"} <= set(operations[("PATCH", "/resources/{resource_id}")]["responses"])
    schemas = doc["components"]["schemas"]
    request = schemas["ReservationRequest"]
    assert request["properties"]["quantity"]["minimum"] == 1
    assert request["properties"]["resource_id"]["maxLength"] == 64
    for name in ("ReservationRequest", "WaitlistJoinRequest", "ResourceCreate", "ResourcePatch"):
        assert schemas[name]["additionalProperties"] is False, name
    assert "additionalProperties" not in schemas["ReservationOut"]
    assert "bench" not in json.dumps(doc["paths"])


def test_the_log_writer_thread_keeps_every_line_in_order():
    import io

    from resv.api.oplog import BackgroundStreamHandler

    stream = io.StringIO()
    handler = BackgroundStreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("resv.test.writer")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        for n in range(2000):
            logger.warning("line %d", n)
    finally:
        logger.removeHandler(handler)
        handler.close()  # drains what is still queued
    lines = stream.getvalue().splitlines()
    assert [json.loads(line)["msg"] for line in lines] == [f"line {n}" for n in range(2000)]


async def test_timeline_with_postgres_down_is_503_not_a_partial_history(redis_url):
    down = f"postgresql://resv@127.0.0.1:{free_port()}/resv"
    async with api(redis_url, database_url=down) as c:
        # a server without deployment records and an audit that cannot be
        # read: fresh or lost cannot be told, so nothing is served
        assert (await c.post("/resources", headers=OP, json={
            "resource_id": "gig", "type": "meetup", "capacity": 1})).status_code == 503
        assert "the audit cannot be read" in (await c.get("/ready", headers=OP)).json()["problems"][0]
    async with api(redis_url):  # no audit: the deployment is recorded
        pass
    async with api(redis_url, database_url=down) as c:
        await create_resource(c, "gig", 1)
        r = await c.get("/ops/resources/gig/timeline", headers=OP)
        assert (r.status_code, r.json()) == (503, {"error": "UNAVAILABLE"})
        assert (await reserve(c, "gig", "ann")).status_code == 201  # commits go on without it


async def test_request_metrics_count_the_status_the_client_got(redis_url):
    def count(text: str, path: str, status: int) -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("resv_http_requests_total{") and f'path="{path}"' in line
                   and f'status_code="{status}"' in line and 'method="POST"' in line)

    async with api(redis_url) as c:  # the registry is the process's: compare before and after
        before = (await c.get("/metrics", headers=OP)).text
        await create_resource(c, "gig", 1)
        await reserve(c, "gig", "ann")
        await reserve(c, "gig", "bob", headers={"Authorization": "Bearer not-a-key"})
        after = (await c.get("/metrics", headers=OP)).text
    assert count(after, "/reservations", 201) - count(before, "/reservations", 201) == 1
    # refused by the key check, inside the middleware
    assert count(after, "/reservations", 401) - count(before, "/reservations", 401) == 1
    assert count(after, "/resources", 201) - count(before, "/resources", 201) == 1
    assert 'path="/metrics"' not in after  # scrapes are not counted
    assert any(line.startswith("resv_http_request_duration_seconds_count{") and 'path="/reservations"' in line
               for line in after.splitlines())
    assert 'resv_http_requests_in_progress{app_name="resv",method="POST",path="/reservations"' in after


async def test_server_processes_write_request_lines_straight_to_the_handler(redis_url, caplog):
    """In `resv serve` the handler takes request lines without a LogRecord;
    they keep their order with the records that do go through logging."""
    import io

    from resv.api.oplog import BackgroundStreamHandler

    stream = io.StringIO()
    handler = BackgroundStreamHandler(stream, request_lines=True)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("resv.api")
    logger.addHandler(handler)
    try:
        with caplog.at_level(logging.INFO, logger="resv"):
            async with api(redis_url) as c:
                await create_resource(c, "gig", 1)
                await reserve(c, "gig", "ann", key="ann-1")
                logger.warning("between the requests")
                await reserve(c, "gig", "bob", key="bob-1")
                await c.get("/nowhere", headers=CL)
    finally:
        logger.removeHandler(handler)
        handler.close()
    assert not [r for r in caplog.records if r.getMessage() == "request"]  # no LogRecord for them
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    requests = [line for line in lines if line["msg"] == "request"]
    assert [(line["route"], line["status"]) for line in requests] == [
        ("/resources", 201), ("/reservations", 201), ("/reservations", 409), (None, 404)]
    assert [line["msg"] for line in lines if line["msg"] in ("request", "between the requests")] == [
        "request", "request", "between the requests", "request", "request"]
    assert (requests[2]["request_id"], requests[2]["reason"], requests[2]["level"]) == ("bob-1", "SOLD_OUT", "info")
    assert requests[1]["key_id"] == "client#2" and requests[1]["time"].endswith("Z")


async def test_request_durations_are_observed_once_per_request(redis_url):
    """The tallies the middleware keeps per process reach the histogram: one
    observation per request, in one bucket (api/metrics.py)."""
    def samples(text: str, suffix: str) -> dict[str, float]:
        out = {}
        for line in text.splitlines():
            if line.startswith(f"resv_http_request_duration_seconds{suffix}{{") and 'path="/health"' in line:
                labels, value = line.rsplit(" ", 1)
                out[labels] = float(value)
        return out

    async with api(redis_url) as c:
        before = (await c.get("/metrics", headers=OP)).text
        for _ in range(7):
            assert (await c.get("/health")).status_code == 200
        after = (await c.get("/metrics", headers=OP)).text

    def total(text: str, suffix: str) -> float:
        return sum(samples(text, suffix).values())

    assert total(after, "_count") - total(before, "_count") == 7
    inf = [k for k in samples(after, "_bucket") if 'le="+Inf"' in k]
    assert sum(samples(after, "_bucket")[k] for k in inf) - sum(samples(before, "_bucket").get(k, 0) for k in inf) == 7
    assert total(after, "_sum") > total(before, "_sum")
    # cumulative buckets never decrease with le
    by_le = sorted(((float(re.search(r'le="([^"]+)"', k).group(1)), v) for k, v in samples(after, "_bucket").items()
                    if 'status_code="200"' in k and 'method="GET"' in k))
    assert [v for _, v in by_le] == sorted(v for _, v in by_le)
