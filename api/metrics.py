"""Prometheus metrics: Litestar's request metrics plus the engine's own.

Litestar's `PrometheusMiddleware` counts requests and their latency by
method, route template (`group_path`, so ids do not explode the label set)
and status code. The counters below add what only the API knows.

With several server processes (`resv serve --workers N`), prometheus_client
runs in multiprocess mode: `resv serve` points PROMETHEUS_MULTIPROC_DIR at a
fresh directory before the workers start, each worker writes its samples
there, and GET /metrics (any worker) reads them all, so counters are totals
over the workers.
"""

from __future__ import annotations

from typing import Any

from litestar import Response, get
from litestar.enums import MediaType
from litestar.plugins.prometheus import PrometheusConfig, PrometheusController
from prometheus_client import Counter

from resv.api import docs
from resv.api.auth import operator_only

DECISIONS = Counter(
    "resv_decisions_total",
    "Engine decisions returned to callers, by decision type, outcome and public code.",
    ["type", "decision", "code"],
)
AVAILABILITY_CACHE = Counter(
    "resv_availability_cache_total",
    "GET /availability answers by cache result (hit, miss).",
    ["result"],
)
CACHE_HIT = AVAILABILITY_CACHE.labels("hit")
CACHE_MISS = AVAILABILITY_CACHE.labels("miss")
REDIS_ERRORS = Counter(
    "resv_redis_errors_total",
    "Engine calls that failed because Redis was unreachable, timed out or refused (OOM).",
)
BAD_ARGUMENTS = Counter(
    "resv_engine_bad_arguments_total",
    "Engine calls the Lua refused as malformed (the API validated too little).",
)
CLIENT_DISCONNECTS = Counter(
    "resv_client_disconnects_total",
    "Requests whose client went away before sending the whole body (a client event, not an error).",
)
INTERNAL_ERRORS = Counter(
    "resv_internal_errors_total",
    "Requests that failed with an unexpected error (500).",
)


_DECISION_CHILDREN: dict[tuple[str, str, str | None], Any] = {}
"""Bound children by labels: `labels()` costs a lock and a tuple per call.
Finite: decision types, outcomes and codes come from the Lua."""


def decision(type_: str, outcome: str, code: str | None) -> None:
    key = (type_, outcome, code)
    child = _DECISION_CHILDREN.get(key)
    if child is None:
        child = _DECISION_CHILDREN[key] = DECISIONS.labels(type_, outcome, code or "")
    child.inc()


def request_metrics() -> PrometheusConfig:
    return PrometheusConfig(
        app_name="resv",
        prefix="resv_http",
        group_path=True,
        exclude_unhandled_paths=True,
        exclude=["^/metrics$"],
    )


class MetricsController(PrometheusController):
    """GET /metrics: Prometheus text, operator keys only."""

    path = "/metrics"
    guards = [operator_only]
    security = docs.SECURED
    tags = ["operations"]

    @get(operation_id="getMetrics", media_type=MediaType.TEXT, responses=docs.errors(403))
    async def get(self) -> Response:  # type: ignore[override]
        """Prometheus text format: request counts and latency by route and
        status, decisions, availability cache hits and misses, Redis errors.
        With several workers, totals over all of them."""
        return await PrometheusController.get.fn(self)
