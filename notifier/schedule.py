"""When a failed attempt is tried again.

Exponential backoff with jitter: the n-th retry waits base * 3^(n-1), at
most 3 hours, times a random factor in [0.8, 1.2]; with the default 5 s base:
5 s, 15 s, 45 s, 2 min, 7 min, 20 min, 1 h, then every 3 h. A delivery still
failing RESV_WEBHOOK_RETRY_HORIZON_S after it was created gets one last
attempt at the horizon, then is FAILED. A `Retry-After` (429, 503) replaces
the computed pause, bounded to [base, 3 h] and the horizon.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta

FACTOR = 3.0
MAX_PAUSE_S = 3 * 3600.0
JITTER = 0.2


def pause_s(attempts: int, base_s: float, retry_after_s: float | None = None,
            rng: random.Random | None = None) -> float:
    """The pause after the `attempts`-th failed attempt."""
    if retry_after_s is not None:
        return min(max(retry_after_s, base_s), MAX_PAUSE_S)
    pause = min(base_s * FACTOR ** max(0, attempts - 1), MAX_PAUSE_S)
    return pause * (rng or random).uniform(1 - JITTER, 1 + JITTER)


def next_attempt(created_at: datetime, now: datetime, attempts: int, base_s: float, horizon_s: float,
                 retry_after_s: float | None = None) -> datetime | None:
    """When to try again, or None: the delivery is FAILED."""
    horizon = created_at + timedelta(seconds=horizon_s)
    if now >= horizon:
        return None
    return min(now + timedelta(seconds=pause_s(attempts, base_s, retry_after_s)), horizon)


def retry_after(value: str | None, now: datetime) -> float | None:
    """A Retry-After header (seconds, or an HTTP date) as seconds from now."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    from email.utils import parsedate_to_datetime

    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        return None
    return max(0.0, (moment - now).total_seconds())
