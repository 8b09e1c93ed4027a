"""Times on the wire: ISO-8601 UTC with microseconds, `2026-11-24T19:57:12.123456Z`.

The engine speaks integer microseconds since the epoch, from the Redis server
clock; these two functions are the only conversions.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


_last_second: tuple[int, str] = (-1, "")


def iso_from_us(us: int) -> str:
    global _last_second
    seconds = us // 1_000_000
    cached_second, prefix = _last_second  # most times fall in the same second
    if seconds != cached_second:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        _last_second = (seconds, prefix)
    return "%s.%06dZ" % (prefix, us - seconds * 1_000_000)  # %-format: a third cheaper than the f-string


def iso_or_none(us: int | None) -> str | None:
    return None if us is None else iso_from_us(us)


def us_from_datetime(moment: datetime) -> int:
    """An aware datetime (any offset) -> microseconds since the epoch."""
    return (moment - _EPOCH) // _US
