"""The archiver's Prometheus metrics, in a registry of its own (a test can
make as many archivers as it likes; `resv archiver` serves this registry)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ArchiverMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.lag_entries = Gauge(
            "resv_archiver_lag_entries", "Stream entries not yet acknowledged (archived).", ["partition"], registry=r
        )
        self.lag_seconds = Gauge(
            "resv_archiver_lag_seconds", "Age of the oldest entry not yet archived.", ["partition"], registry=r
        )
        self.entries_read = Counter("resv_archiver_entries_read", "Stream entries read (and acknowledged).", registry=r)
        self.rows_written = Counter("resv_archiver_rows_written", "Rows inserted into events.", registry=r)
        self.duplicates = Counter(
            "resv_archiver_duplicates", "Entries already in PostgreSQL (re-delivered after a crash).", registry=r
        )
        self.trimmed = Counter("resv_archiver_trimmed", "Stream entries trimmed below the archived mark.", registry=r)
        self.batch_seconds = Histogram(
            "resv_archiver_batch_seconds",
            "Time of one batch: PostgreSQL transaction, acknowledgement and trim.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.batch_entries = Histogram(
            "resv_archiver_batch_entries", "Entries per batch.",
            buckets=(1, 10, 100, 1000, 5000, 20000, 80000), registry=r,
        )
        self.state_behind = Gauge(
            "resv_archiver_state_behind", "1 while the engine state is behind the audit: nothing is archived "
            "(run `resv restore`).", registry=r,
        )
        self.errors = Counter("resv_archiver_errors", "Failed drains (the batch is retried).", ["stage"], registry=r)
