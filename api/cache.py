"""The availability cache: per process, short-lived, answers kept encoded.

GET /availability is the hot read. Its answers (found: 200 with status,
remaining and the server time they were read at; not found: 404) are kept
for `ttl_ms` and served as the bytes they were encoded to, so a hit costs a
dict lookup and a clock read. They may be stale by up to the TTL: clients
who need the truth make a reservation (the engine decides on the real state)
and operators read GET /resources/{id}.

Concurrent misses for one resource share one engine read (single flight).
The cache holds at most `max_entries` resources; when full, expired entries
are dropped, then the oldest. A TTL of 0 turns it off: every request reads
the engine.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import msgspec

from resv.api import metrics
from resv.api.deadline import Deadline
from resv.api.schemas import Availability, ErrorBody
from resv.api.times import iso_from_us
from resv.engine.types import Resource

Answer = tuple[int, bytes]
"""HTTP status and encoded body."""

_encode = msgspec.json.Encoder().encode
NOT_FOUND: Answer = (404, _encode(ErrorBody(error="NOT_FOUND")))


class AvailabilityCache:
    def __init__(
        self,
        read: Callable[[str], Awaitable[Resource | None]],
        *,
        ttl_ms: int,
        deadline: Deadline | None = None,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read = read
        self._ttl = ttl_ms / 1000
        self._deadline = deadline or Deadline(3.0)
        self._max = max_entries
        self._clock = clock
        self._entries: dict[str, tuple[float, Answer]] = {}
        self._inflight: dict[str, asyncio.Future[Answer]] = {}

    async def get(self, resource_id: str) -> Answer:
        if self._ttl <= 0:
            return await self._fetch(resource_id)
        entry = self._entries.get(resource_id)
        if entry is not None and entry[0] > self._clock():
            metrics.CACHE_HIT.inc()
            return entry[1]
        metrics.CACHE_MISS.inc()
        flight = self._inflight.get(resource_id)
        if flight is None:
            flight = asyncio.ensure_future(self._fill(resource_id))
            self._inflight[resource_id] = flight
            flight.add_done_callback(lambda _: self._inflight.pop(resource_id, None))
        # shield: one waiter giving up must not cancel the read for the others
        return await asyncio.shield(flight)

    async def _fill(self, resource_id: str) -> Answer:
        answer = await self._fetch(resource_id)
        self._entries.pop(resource_id, None)  # re-inserted last: eviction order is age
        if len(self._entries) >= self._max:
            self._evict()
        self._entries[resource_id] = (self._clock() + self._ttl, answer)
        return answer

    async def _fetch(self, resource_id: str) -> Answer:
        resource = await self._deadline.run(self._read(resource_id))
        if resource is None:
            return NOT_FOUND
        return 200, _encode(Availability(
            resource_id=resource.resource_id,
            status=resource.status,
            remaining=resource.remaining,
            as_of=iso_from_us(resource.now),
        ))

    def _evict(self) -> None:
        now = self._clock()
        for key in [k for k, (expires, _) in self._entries.items() if expires <= now]:
            del self._entries[key]
        while len(self._entries) >= self._max:
            del self._entries[next(iter(self._entries))]

    def clear(self) -> None:
        self._entries.clear()
