"""Prometheus metrics: request metrics plus the engine's own.

Requests are counted, and their latency observed, by method, route template
(so ids do not explode the label set) and status code, under the names and
labels Litestar's `PrometheusMiddleware` uses (`resv_http_requests_total`,
`resv_http_request_duration_seconds`, `resv_http_requests_in_progress`,
`resv_http_requests_error_total`), but by the request middleware (`api.middleware`),
through children bound once per label set: the middleware built a Request,
two label dicts and four `labels()` lookups per request, ~20% of a cached
GET /availability's time in a profile. The counters below add what only the
API knows.

With several server processes (`resv serve --workers N`), prometheus_client
runs in multiprocess mode: `resv serve` points PROMETHEUS_MULTIPROC_DIR at a
fresh directory before the workers start, each worker writes its samples
there, and GET /metrics (any worker) reads them all, so counters are totals
over the workers.
"""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get
from litestar.enums import MediaType
from litestar.plugins.prometheus import PrometheusController
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

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


STATE_BEHIND = Gauge(
    "resv_engine_state_behind_audit",
    "1 while the engine state is behind the audit (or not yet checked): every engine call answers 503; "
    "run `resv restore`.",
    multiprocess_mode="max",
)
DURABILITY_UNSAFE = Gauge(
    "resv_durability_unsafe",
    "1 while the server lacks a setting the strict profile requires: writes answer 503.",
    multiprocess_mode="max",
)


def guard_checked(engine: Any) -> None:
    """After each guard check (engine.Engine.guard_forever)."""
    refusal = engine.refusal
    STATE_BEHIND.set(1 if refusal is not None and refusal.state else 0)
    DURABILITY_UNSAFE.set(1 if refusal is not None and refusal.durability else 0)


_DECISION_CHILDREN: dict[tuple[str, str, str | None], Any] = {}
"""Bound children by labels: `labels()` costs a lock and a tuple per call.
Finite: decision types, outcomes and codes come from the Lua."""


def decision(type_: str, outcome: str, code: str | None) -> None:
    key = (type_, outcome, code)
    child = _DECISION_CHILDREN.get(key)
    if child is None:
        child = _DECISION_CHILDREN[key] = DECISIONS.labels(type_, outcome, code or "")
    child.inc()


APP_NAME = "resv"
_HTTP_LABELS = ["method", "path", "status_code", "app_name"]
HTTP_REQUESTS = Counter("resv_http_requests_total", "Total requests", _HTTP_LABELS)
HTTP_DURATION = Histogram("resv_http_request_duration_seconds", "Request duration, in seconds", _HTTP_LABELS)
HTTP_IN_PROGRESS = Gauge("resv_http_requests_in_progress", "Total requests currently in progress", _HTTP_LABELS,
                         multiprocess_mode="livesum")
HTTP_ERRORS = Counter("resv_http_requests_error_total", "Total errors in requests", _HTTP_LABELS)
UNCOUNTED_ROUTES = frozenset({"/metrics"})
"""Scrapes are not requests worth counting (Litestar's `exclude`)."""


class RouteMetrics:
    """The request metrics of one route and method: the in-progress gauge,
    and the count and duration children per status, bound on first use."""

    __slots__ = ("_by_status", "_method", "_route", "in_progress")

    def __init__(self, method: str, route: str) -> None:
        self._method = method
        self._route = route
        # Litestar labels in-progress requests with status 200 (not known yet)
        self.in_progress = HTTP_IN_PROGRESS.labels(method, route, "200", APP_NAME)
        self._by_status: dict[int, tuple[Any, Any, Any]] = {}

    def done(self, status: int, seconds: float) -> None:
        children = self._by_status.get(status)
        if children is None:
            labels = (self._method, self._route, str(status), APP_NAME)
            errors = HTTP_ERRORS.labels(*labels) if status >= 500 else None
            children = self._by_status[status] = (HTTP_REQUESTS.labels(*labels), HTTP_DURATION.labels(*labels),
                                                   errors)
        count, duration, errors = children
        count.inc()
        duration.observe(seconds)
        if errors is not None:
            errors.inc()


_ROUTES: dict[tuple[str, str], RouteMetrics | None] = {}
"""Finite: one entry per route template and method."""


def route(method: str, template: str) -> RouteMetrics | None:
    """The metrics of a matched route, None for one not counted."""
    key = (method, template)
    found = _ROUTES.get(key, False)
    if found is False:
        found = _ROUTES[key] = None if template in UNCOUNTED_ROUTES else RouteMetrics(method, template)
    return found  # type: ignore[return-value]


class MetricsController(PrometheusController):
    """GET /metrics: Prometheus text, operator keys only."""

    path = "/metrics"
    guards = [operator_only]
    security = docs.SECURED
    tags = ["operations"]

    @get(operation_id="getMetrics", media_type=MediaType.TEXT, responses=docs.errors(403))
    async def get(self, request: Request[Any, Any, Any]) -> Response:  # type: ignore[override]
        """Prometheus text format: request counts and latency by route and
        status, decisions, availability cache hits and misses, Redis errors.
        With several workers, totals over all of them. With DATABASE_URL,
        the webhook deliveries too, read from PostgreSQL at each scrape."""
        response = await PrometheusController.get.fn(self)
        store = request.app.state.services.webhooks
        if store is None:
            return response
        return Response(response.content + await webhook_metrics(store), status_code=response.status_code,
                        headers=response.headers)


async def webhook_metrics(store: Any) -> bytes:
    """The delivery log's state, computed from PostgreSQL now (every notifier
    writes there, so this is the total over all of them)."""
    up = GaugeMetricFamily("resv_webhook_metrics_up", "1 when the webhook metrics below could be read.")
    families = [up]
    try:
        m = await store.metrics()
    except Exception:
        up.add_metric([], 0)
        return _exposition(families)
    up.add_metric([], 1)
    deliveries = GaugeMetricFamily("resv_webhook_deliveries",
                                   "Webhook deliveries by status (outcome), those retention deleted included.",
                                   labels=["status"])
    attempts = CounterMetricFamily("resv_webhook_attempts", "Attempts made, by the delivery's status.",
                                   labels=["status"])
    for status, (n, tries) in m["by_status"].items():
        deliveries.add_metric([status], n)
        attempts.add_metric([status], tries)
    pending = GaugeMetricFamily("resv_webhook_pending_deliveries", "Deliveries not yet delivered, failed or cancelled.",
                                value=m["pending"])
    oldest = GaugeMetricFamily("resv_webhook_oldest_pending_seconds", "Age of the oldest pending delivery.",
                               value=m["oldest_pending_s"])
    latency = GaugeMetricFamily(
        "resv_webhook_delivery_latency_seconds",
        "Decision commit (server time) to successful delivery, quantiles over the last 5 minutes.",
        labels=["quantile"])
    for q, value in m["latency_quantiles"].items():
        if value is not None:
            latency.add_metric([str(q)], float(value))
    recent = GaugeMetricFamily("resv_webhook_delivered_recent", "Deliveries made in the last 5 minutes.",
                               value=m["latency_recent"])
    endpoints = GaugeMetricFamily("resv_webhook_endpoints", "Webhook endpoints by state.", labels=["state"])
    for state, n in m["endpoints"].items():
        endpoints.add_metric([state], n)
    families += [deliveries, attempts, pending, oldest, latency, recent, endpoints]
    return _exposition(families)


class _Snapshot:
    def __init__(self, families: list[Any]) -> None:
        self.families = families

    def collect(self) -> list[Any]:
        return self.families


def _exposition(families: list[Any]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(families))
    return generate_latest(registry)
