"""Notifier and webhook settings, read once from the environment."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

import msgspec

from resv.engine.settings import env_number


class NotifierSettings(msgspec.Struct, frozen=True, kw_only=True):
    database_url: str | None = None
    """DATABASE_URL: the audit, which holds the endpoints and their deliveries."""
    poll_s: float = 1.0
    """RESV_NOTIFIER_POLL_MS: how often the notifier looks for due deliveries
    without being notified (a lost NOTIFY, a retry coming due)."""
    timeout_s: float = 15.0
    """RESV_WEBHOOK_TIMEOUT_S: one attempt's bound, connection to last byte
    of the answer's head; anything but a 2xx within it is a failed attempt."""
    concurrency: int = 4
    """RESV_WEBHOOK_CONCURRENCY: attempts in flight per endpoint, over all
    notifiers (one notifier delivers to an endpoint at a time)."""
    backoff_base_s: float = 5.0
    """RESV_WEBHOOK_BACKOFF_BASE_S: the pause before the first retry; each
    next pause is three times longer, up to 3 hours, with +-20% jitter."""
    retry_horizon_s: float = 93_600.0
    """RESV_WEBHOOK_RETRY_HORIZON_S: a delivery still failing this long after
    it was created is FAILED (default 26 h: a last attempt a day later)."""
    allow_private: bool = False
    """RESV_WEBHOOK_ALLOW_PRIVATE=1: endpoints may be on loopback and private
    addresses (a receiver on the same machine or network); link-local
    (cloud metadata) and multicast stay refused."""
    retention_days: float = 30.0
    """RESV_WEBHOOK_RETENTION_DAYS: finished deliveries (DELIVERED, FAILED,
    CANCELLED) are deleted this long after they finished; 0 keeps them
    forever. PENDING deliveries are never deleted (notifier/retention.py)."""
    prune_every_s: float = 60.0
    """How often a notifier deletes what the retention let go (no variable:
    tests shorten it)."""
    prune_batch: int = 1000
    """Deliveries deleted per transaction (no variable: tests shorten it)."""
    name: str = ""
    """RESV_NOTIFIER_NAME: this notifier's name in `webhooks.owner`; host:pid by default."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> NotifierSettings:
        env = os.environ if env is None else env

        def num(name: str, default, kind=float):
            return env_number(env, name, default, kind)

        return cls(
            database_url=env.get("DATABASE_URL") or None,
            poll_s=num("RESV_NOTIFIER_POLL_MS", 1000) / 1000 or 1.0,
            timeout_s=num("RESV_WEBHOOK_TIMEOUT_S", 15.0) or 15.0,
            concurrency=num("RESV_WEBHOOK_CONCURRENCY", 4, int) or 4,
            backoff_base_s=num("RESV_WEBHOOK_BACKOFF_BASE_S", 5.0) or 5.0,
            retry_horizon_s=num("RESV_WEBHOOK_RETRY_HORIZON_S", 93_600.0) or 93_600.0,
            retention_days=num("RESV_WEBHOOK_RETENTION_DAYS", 30.0),
            allow_private=env.get("RESV_WEBHOOK_ALLOW_PRIVATE", "") in ("1", "true", "yes"),
            name=env.get("RESV_NOTIFIER_NAME") or f"{socket.gethostname()}:{os.getpid()}",
        )

    @property
    def lease_s(self) -> float:
        """How long an attempt (and an endpoint's ownership) is held without
        news: an attempt ends within timeout_s, so past this it is over; the
        margin covers the time to write its result."""
        return self.timeout_s * 1.5 + 1.0
