"""Prometheus metrics: request metrics plus the engine's own.

Requests are counted, and their latency observed, by method, route template
(so ids do not explode the label set) and status code, under the names and
labels Litestar's `PrometheusMiddleware` uses (`resv_http_requests_total`,
`resv_http_request_duration_seconds`, `resv_http_requests_in_progress`,
`resv_http_requests_error_total`), by the request middleware (`api.middleware`).
The counters below add what only the API knows.

The per-request updates (the request metrics, the decision counts, the
availability cache's hits and misses) are tallied in plain integers of the
process (`Tally`, `RouteMetrics`) and moved into prometheus_client by
`flush()`: once a second (the app's lifespan runs `flush_forever`) and
before every scrape that this process answers. prometheus_client takes a
lock per update and walks the histogram's buckets in Python; six of those
per request were ~5% of a cached GET /availability's CPU with the app driven
in-process (the `benchmarks.app_cpu` harness, metrics on and off in turns);
the tallies cost a few attribute updates. A scrape answered by another
worker sees this one's tallies as of its last flush (at most a second old).

With several server processes (`resv serve --workers N`), prometheus_client
runs in multiprocess mode: `resv serve` points PROMETHEUS_MULTIPROC_DIR at a
fresh directory before the workers start, each worker writes its samples
there, and GET /metrics (any worker) reads them all, so counters are totals
over the workers.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_left
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

class Tally:
    """A counter child's increments, kept in the process until `flush()`."""

    __slots__ = ("_child", "n")

    def __init__(self, child: Any) -> None:
        self._child = child
        self.n = 0

    def inc(self) -> None:
        self.n += 1

    def flush(self) -> None:
        n, self.n = self.n, 0
        if n:
            self._child.inc(n)


_TALLIES: list[Tally] = []


def tally(child: Any) -> Tally:
    found = Tally(child)
    _TALLIES.append(found)
    return found


CACHE_HIT = tally(AVAILABILITY_CACHE.labels("hit"))
CACHE_MISS = tally(AVAILABILITY_CACHE.labels("miss"))
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


_DECISION_TALLIES: dict[tuple[str, str, str | None], Tally] = {}
"""By labels: `labels()` costs a lock and a tuple per call. Finite: decision
types, outcomes and codes come from the Lua."""


def decision(type_: str, outcome: str, code: str | None) -> None:
    key = (type_, outcome, code)
    found = _DECISION_TALLIES.get(key)
    if found is None:
        found = _DECISION_TALLIES[key] = tally(DECISIONS.labels(type_, outcome, code or ""))
    found.n += 1


APP_NAME = "resv"
_HTTP_LABELS = ["method", "path", "status_code", "app_name"]
HTTP_REQUESTS = Counter("resv_http_requests_total", "Total requests", _HTTP_LABELS)
HTTP_DURATION = Histogram("resv_http_request_duration_seconds", "Request duration, in seconds", _HTTP_LABELS)
HTTP_IN_PROGRESS = Gauge("resv_http_requests_in_progress", "Total requests currently in progress", _HTTP_LABELS,
                         multiprocess_mode="livesum")
HTTP_ERRORS = Counter("resv_http_requests_error_total", "Total errors in requests", _HTTP_LABELS)
UNCOUNTED_ROUTES = frozenset({"/metrics"})
"""Scrapes are not requests worth counting (Litestar's `exclude`)."""


_BOUNDS = HTTP_DURATION._upper_bounds
"""The duration buckets' upper bounds (prometheus_client's defaults, +Inf last)."""


class _StatusTally:
    """Requests of one route, method and status since the last flush."""

    __slots__ = ("buckets", "count", "duration", "errors", "requests", "seconds")

    def __init__(self, labels: tuple[str, str, str, str], status: int) -> None:
        self.requests = HTTP_REQUESTS.labels(*labels)
        self.duration = HTTP_DURATION.labels(*labels)
        self.errors = HTTP_ERRORS.labels(*labels) if status >= 500 else None
        self.count = 0
        self.seconds = 0.0
        self.buckets = [0] * len(_BOUNDS)

    def flush(self) -> None:
        n, self.count = self.count, 0
        if not n:
            return
        self.requests.inc(n)
        if self.errors is not None:
            self.errors.inc(n)
        # Histogram.observe() for n observations at once: its sum and the
        # one bucket each falls in (prometheus_client keeps them per bucket
        # and makes them cumulative when it is scraped).
        self.duration._sum.inc(self.seconds)
        self.seconds = 0.0
        for i, k in enumerate(self.buckets):
            if k:
                self.duration._buckets[i].inc(k)
                self.buckets[i] = 0


class RouteMetrics:
    """The request metrics of one route and method: requests in progress,
    and per status the count and durations since the last flush."""

    __slots__ = ("_by_status", "_gauge", "_method", "_route", "in_progress")

    def __init__(self, method: str, route: str) -> None:
        self._method = method
        self._route = route
        self.in_progress = 0
        # Litestar labels in-progress requests with status 200 (not known yet)
        self._gauge = HTTP_IN_PROGRESS.labels(method, route, "200", APP_NAME)
        self._by_status: dict[int, _StatusTally] = {}

    def done(self, status: int, seconds: float) -> None:
        """A request ended (its in-progress count is the caller's)."""
        found = self._by_status.get(status)
        if found is None:
            found = self._by_status[status] = _StatusTally((self._method, self._route, str(status), APP_NAME),
                                                           status)
        found.count += 1
        found.seconds += seconds
        found.buckets[bisect_left(_BOUNDS, seconds)] += 1

    def flush(self) -> None:
        self._gauge.set(self.in_progress)
        for found in self._by_status.values():
            found.flush()


_ROUTES: dict[tuple[str, str], RouteMetrics | None] = {}
"""Finite: one entry per route template and method."""


def route(method: str, template: str) -> RouteMetrics | None:
    """The metrics of a matched route, None for one not counted."""
    key = (method, template)
    found = _ROUTES.get(key, False)
    if found is False:
        found = _ROUTES[key] = None if template in UNCOUNTED_ROUTES else RouteMetrics(method, template)
    return found  # type: ignore[return-value]


def flush() -> None:
    """Moves the process's tallies into prometheus_client (in multiprocess
    mode, into this worker's files, where any worker's scrape reads them)."""
    for found in _TALLIES:
        found.flush()
    for route_metrics in list(_ROUTES.values()):
        if route_metrics is not None:
            route_metrics.flush()


FLUSH_S = 1.0


async def flush_forever(every_s: float = FLUSH_S) -> None:
    """The app's lifespan runs this: what other workers' scrapes see is at
    most `every_s` old."""
    while True:
        await asyncio.sleep(every_s)
        flush()


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
        flush()
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
