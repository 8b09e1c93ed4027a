"""Archiver settings, read once from the environment.

The Redis side (REDIS_URL, RESV_PARTITIONS) comes from engine.settings, so the
archiver and the API always agree on the partition count.
"""

from __future__ import annotations

import os
import socket

import msgspec

from resv.engine.settings import env_number


class ArchiverSettings(msgspec.Struct, frozen=True, kw_only=True):
    database_url: str | None = None
    """DATABASE_URL: the PostgreSQL holding the audit. Unset: `make run` starts
    an embedded one; the timeline then reads the streams only."""
    interval_s: float = 0.2
    """RESV_ARCHIVER_INTERVAL_MS: how often a drain starts (each drains until
    the streams are empty, so this is the idle polling period)."""
    batch: int = 5000
    """RESV_ARCHIVER_BATCH: entries read per partition per round (XREADGROUP
    COUNT); one PostgreSQL transaction takes one round of every partition."""
    claim_idle_ms: int = 5000
    """RESV_ARCHIVER_CLAIM_IDLE_MS: an entry delivered to another archiver and
    unacknowledged for this long is taken over (XAUTOCLAIM): its archiver is
    presumed dead. Taking over a live one's entry is harmless (rows are keyed
    by stream id), only wasted work."""
    max_backoff_s: float = 5.0
    """RESV_ARCHIVER_MAX_BACKOFF_S: ceiling of the pause after a failed drain
    (PostgreSQL or Redis down); pauses double from the interval up to it."""
    sweep_interval_s: float = 1.0
    """RESV_WAITLIST_SWEEP_MS: how often the archiver asks the Lua to expire
    lapsed waiting-list notifications (resv_wl_sweep) on resources where one
    is due; expiry is never later than this past a deadline. 0 disables
    (expiry then waits for the next write call on the resource)."""
    check_interval_s: float = 30.0
    """RESV_DURABILITY_CHECK_S: how often the engine state is compared with
    the audit again while archiving (the engine's setting of the same name)."""
    metrics_port: int | None = None
    """RESV_ARCHIVER_METRICS_PORT: serve Prometheus metrics on this port."""
    consumer: str = ""
    """RESV_ARCHIVER_CONSUMER: consumer name in the group; host:pid by default."""
    crash_at: str | None = None
    """RESV_ARCHIVER_CRASH_AT: tests only. `<point>:<n>` makes the process
    os._exit at the n-th time it reaches <point> (before_insert,
    before_commit, after_commit_before_ack, after_ack_before_trim)."""

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> ArchiverSettings:
        env = os.environ if env is None else env

        def num(name: str, default, kind=int):
            return env_number(env, name, default, kind)

        return cls(
            database_url=env.get("DATABASE_URL") or None,
            interval_s=num("RESV_ARCHIVER_INTERVAL_MS", 200) / 1000 or 0.2,
            batch=num("RESV_ARCHIVER_BATCH", 5000) or 5000,
            claim_idle_ms=num("RESV_ARCHIVER_CLAIM_IDLE_MS", 5000),
            max_backoff_s=num("RESV_ARCHIVER_MAX_BACKOFF_S", 5.0, float) or 5.0,
            sweep_interval_s=num("RESV_WAITLIST_SWEEP_MS", 1000) / 1000,
            check_interval_s=num("RESV_DURABILITY_CHECK_S", 30.0, float) or 30.0,
            metrics_port=num("RESV_ARCHIVER_METRICS_PORT", None),
            consumer=env.get("RESV_ARCHIVER_CONSUMER") or default_consumer(),
            crash_at=env.get("RESV_ARCHIVER_CRASH_AT") or None,
        )


def default_consumer() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"
