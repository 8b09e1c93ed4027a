"""Fuzz the API from its own OpenAPI document with schemathesis, against a
real `resv serve`, with both keys: no server error, no response that breaks
the schema, no body that leaks internals.

Schemathesis' Hypothesis strategies are driven directly, one operation at a
time (its pytest plugin does not support the pytest version in use)."""

from __future__ import annotations

import re

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.procs import CLIENT_KEY, OPERATOR_KEY, resv_serve
from tests.report import record

LEAKS = re.compile(r"Traceback|redis|valkey|\blua\b|psycopg|resv:|\{p\d+\}|/work/|\.py\b|File \"", re.I)
# /ready and /metrics (operator key) name dependencies by design ({"redis": "up"})
READY_LEAKS = re.compile(r"Traceback|resv:\{|\{p\d+\}|/work/|\.py\b|File \"|Exception", re.I)
EXAMPLES = 60


@pytest.fixture(scope="module")
def fuzz_database(pg_server):
    """A migrated database of this module's own: the /webhooks routes need one."""
    import asyncio
    import uuid

    import psycopg

    from resv.archiver.migrate import apply_migrations
    from tests.archiver_support import database_url_of

    name = f"resv_fuzz_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_server.url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = database_url_of(pg_server.url, name)
    asyncio.run(apply_migrations(url))
    try:
        yield url
    finally:
        with psycopg.connect(pg_server.url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def live_api(redis_server, fuzz_database):
    with resv_serve(redis_server.url, RESV_AVAILABILITY_TTL_MS="0", DATABASE_URL=fuzz_database) as base:
        headers = {"Authorization": f"Bearer {OPERATOR_KEY}"}
        # something to find: resources with and without a waiting list
        for rid, wl in (("fuzz-a", True), ("fuzz-b", False)):
            httpx.post(base + "/resources", headers=headers,
                       json={"resource_id": rid, "type": "meetup", "capacity": 5, "waitlist_enabled": wl})
        yield base


@pytest.mark.slow
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
def test_api_conforms_and_never_leaks(live_api, mode):
    schema = schemathesis.openapi.from_url(live_api + "/schema/openapi.json")
    cases = {"n": 0}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 12

    for operation in operations:
        @settings(max_examples=EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(generation_mode=mode))
        def fuzz(case):
            for key in (CLIENT_KEY, OPERATOR_KEY):  # every generated case, with both roles
                headers = {**(case.headers or {}), "Authorization": f"Bearer {key}"}
                if mode is GenerationMode.POSITIVE:
                    # a generated Idempotency-Key may repeat with another body: the
                    # contract's 422, which this one check would call a rejection
                    response = case.call_and_validate(base_url=live_api, headers=headers,
                                                      excluded_checks=[positive_data_acceptance])
                else:  # invalid input: only "no 5xx, no leak" is expected
                    response = case.call(base_url=live_api, headers=headers)
                cases["n"] += 1
                assert response.status_code < 500, (case.method, case.path, response.text)
                leaks = READY_LEAKS if case.path in ("/ready", "/metrics") else LEAKS
                assert not leaks.search(response.text), response.text

        try:
            fuzz()
        except Unsatisfiable:  # an operation with no input to make invalid (e.g. /health)
            assert mode is GenerationMode.NEGATIVE
    record(f"api: schemathesis {mode.value} cases (both keys, all operations)", fuzz_cases=cases["n"])
    assert cases["n"] >= len(operations) * 2
