"""The engine: typed async calls over the Lua functions.

It adds no rule of its own. It builds keys, sends the call, and turns the
reply into the Struct of its decision (engine.types); the Lua decides.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from resv.engine import keys
from resv.engine.durability import DurabilityError, check_durability
from resv.engine.errors import EngineError, is_missing_function, translate
from resv.engine.lane import Target
from resv.engine.library import ensure_library, library_version
from resv.engine.pipeline import Pipeliner
from resv.engine.settings import Settings
from resv.engine.types import (
    Cancellation,
    CancelRejected,
    CancelReplayed,
    CreateDecision,
    JoinDecision,
    LeaveDecision,
    ReplyDecoder,
    Reservation,
    ReservationCancelled,
    ReservationConfirmed,
    ReservationDecision,
    ReservationRejected,
    Resource,
    ResourceCreated,
    ResourceRejected,
    ResourceSpec,
    RulesChanged,
    RulesDecision,
    RulesRejected,
    WaitlistEntry,
    WaitlistJoined,
    WaitlistJoinReplayed,
    WaitlistLeaveRejected,
    WaitlistLeaveReplayed,
    WaitlistLeft,
    WaitlistRejected,
    from_flat,
)

# One decoder per entry point: each knows the types its function replies with.
_created = ReplyDecoder(ResourceCreated, ResourceRejected)
_rules = ReplyDecoder(RulesChanged, RulesRejected)
_reserved = ReplyDecoder(ReservationConfirmed, ReservationRejected)
_cancelled = ReplyDecoder(ReservationCancelled, CancelReplayed, CancelRejected)
_joined = ReplyDecoder(WaitlistJoined, WaitlistJoinReplayed, WaitlistRejected)
_left = ReplyDecoder(WaitlistLeft, WaitlistLeaveReplayed, WaitlistLeaveRejected)


def _opt(value: int | None) -> str:
    return "" if value is None else str(int(value))


def _by(actor: str | None) -> tuple[str, ...]:
    """The optional trailing `actor` argument: who asked (an API key id such
    as `client#1`, an ops script's name). Recorded in every event the call
    emits, never in its reply. Left out when None, so the call is what it
    was before actors existed."""
    return () if actor is None else (actor,)


def _client(url: str, settings: Settings, retries: int, max_connections: int) -> Redis:
    # redis-py does the retrying: commits sent through the retrying client are
    # idempotent (request id, reservation id, one entry per client), so a retry
    # after a lost reply can never book twice.
    pool = BlockingConnectionPool.from_url(
        url,
        decode_responses=True,
        socket_timeout=settings.socket_timeout,
        socket_connect_timeout=settings.socket_timeout,
        # No health_check_interval: its PING retries on its own, inside the
        # command's retries, and stretched a call to a hung server past 9 s.
        # A dead connection fails its command, which is retried.
        max_connections=max_connections,
        # A batch waits this long for a free connection rather than failing
        # at once (many batches sent again when a lane dies, a slow server).
        timeout=settings.socket_timeout,
        retry=Retry(ExponentialBackoff(cap=0.25, base=0.02), retries),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )
    return Redis(connection_pool=pool)


class Engine:
    def __init__(self, settings: Settings, url: str | None = None) -> None:
        url = url or settings.redis_url
        if not url:
            raise ValueError("no Redis URL: set REDIS_URL")
        self.settings = settings
        self.url = url
        """The server's URL (parts that read the streams open their own client)."""
        self._ttl_arg = str(settings.idempotency_ttl_ms)
        self._library_version = library_version()
        self.redis = _client(url, settings, settings.retries, settings.max_connections)
        # Definition changes are not idempotent (a retried create would report
        # ALREADY_EXISTS): they go through a client that never retries.
        self._admin = _client(url, settings, 0, 4)
        self._pipe = Pipeliner(self.redis, Target.from_url(url), self.load_library, timeout=settings.socket_timeout,
                               wait_replicas=settings.wait_replicas, wait_timeout_ms=settings.wait_timeout_ms)

    async def start(self) -> None:
        await self.load_library()

    async def check_durability(self) -> dict[str, str]:
        """Raises DurabilityError under the strict profile when the server
        does not fsync every write before replying (docs/guarantees.md)."""
        try:
            return await check_durability(self.redis, self.settings.durability)
        except DurabilityError:
            raise
        except Exception as exc:
            raise translate(exc) from exc

    async def load_library(self) -> bool:
        try:
            return await ensure_library(self.redis)
        except Exception as exc:
            raise translate(exc) from exc

    async def ping(self) -> bool:
        return bool(await self.redis.ping())

    async def library_ready(self) -> bool:
        """The library answers (FCALL_RO resv_version); a missing one is
        loaded again, as the next call would, and an older release (a
        process of the previous version started after this one, or lost the
        race at start) is upgraded again. A newer one is fine: it accepts
        this release's calls (docs/guarantees.md, Upgrades)."""
        command = ("FCALL_RO", "resv_version", 0)
        try:
            loaded = await self.redis.execute_command(*command)
        except Exception as exc:
            if not is_missing_function(exc):
                raise
            await self.load_library()
            await self.redis.execute_command(*command)
            return True
        if str(loaded).isdigit() and int(loaded) < self._library_version:
            await self.load_library()
        return True

    async def aclose(self) -> None:
        await self._pipe.aclose()
        # Redis(connection_pool=...) does not close a pool it did not create
        for client in (self.redis, self._admin):
            await client.aclose()
            await client.connection_pool.disconnect()

    async def __aenter__(self) -> Engine:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- plumbing

    def _keys(self, resource_id: str) -> tuple[str, ...]:
        return keys.resource_keys(resource_id, self.settings.partitions)

    def _call(self, function: str, keys_: tuple[str, ...], *args: Any) -> asyncio.Future:
        """Pipelined; await the future for the reply. Its errors arrive as
        EngineErrors. A plain function, not a coroutine: each coroutine
        between a handler and the reply is one more frame to resume when the
        reply arrives, on every commit."""
        return self._pipe.call("FCALL", function, len(keys_), *keys_, *args)

    async def _admin_call(self, function: str, keys_: tuple[str, ...], *args: Any) -> Any:
        """One call on the client that never retries (definition changes)."""
        command = ("FCALL", function, len(keys_), *keys_, *args)
        try:
            try:
                return await self._admin.execute_command(*command)
            except Exception as exc:
                if not is_missing_function(exc):
                    raise
                await self.load_library()
                return await self._admin.execute_command(*command)
        except EngineError:
            raise
        except Exception as exc:
            raise translate(exc) from exc

    # -- definition (operators)

    async def create_resource(self, spec: ResourceSpec, *, actor: str | None = None) -> CreateDecision:
        return _created(await self._admin_call(
            "resv_create",
            self._keys(spec.resource_id),
            spec.resource_id,
            spec.type,
            str(spec.capacity),
            _opt(spec.opens_at),
            _opt(spec.closes_at),
            "1" if spec.waitlist_enabled else "0",
            _opt(spec.max_per_request),
            _opt(spec.max_per_client),
            *_by(actor),
        ))

    async def configure(self, resource_id: str, expected_version: int, changes: dict[str, Any], *,
                        actor: str | None = None) -> RulesDecision:
        """changes: rule name -> value (None clears an optional rule); `state`
        (OPEN|CLOSED) may be among them. One call, one new version."""
        pairs: list[str] = [] if actor is None else ["actor", actor]
        for name, value in changes.items():
            if isinstance(value, bool):
                value = "1" if value else "0"
            pairs += [name, "" if value is None else str(value)]
        return _rules(await self._admin_call(
            "resv_configure", self._keys(resource_id), resource_id, str(expected_version), *pairs
        ))

    async def open(self, resource_id: str, expected_version: int, *, actor: str | None = None) -> RulesDecision:
        return _rules(await self._admin_call("resv_open", self._keys(resource_id), resource_id,
                                             str(expected_version), *_by(actor)))

    async def close(self, resource_id: str, expected_version: int, *, actor: str | None = None) -> RulesDecision:
        return _rules(await self._admin_call("resv_close", self._keys(resource_id), resource_id,
                                             str(expected_version), *_by(actor)))

    # -- commits (clients)

    async def reserve(self, resource_id: str, client_id: str, quantity: int, request_id: str | None = None, *,
                      actor: str | None = None) -> ReservationDecision:
        """Confirms or rejects. Give the same request_id to retry safely; a
        fresh one is made when none is given."""
        request_id = request_id or uuid.uuid4().hex
        p = self.settings.partitions
        return _reserved(await self._call(
            "resv_reserve",
            (*self._keys(resource_id), keys.request_key(resource_id, request_id, p)),
            resource_id,
            client_id,
            str(quantity),
            request_id,
            self._ttl_arg,
            *_by(actor),
        ))

    async def cancel(self, reservation_id: str, *, actor: str | None = None) -> Cancellation | None:
        """None when the id names no resource (so no reservation)."""
        resource_id = keys.resource_of_reservation(reservation_id)
        if resource_id is None:
            return None
        return _cancelled(await self._call("resv_cancel", self._keys(resource_id), resource_id, reservation_id,
                                           *_by(actor)))

    async def join_waitlist(self, resource_id: str, client_id: str, quantity: int, *,
                            actor: str | None = None) -> JoinDecision:
        return _joined(await self._call("resv_wl_join", self._keys(resource_id), resource_id, client_id,
                                        str(quantity), *_by(actor)))

    async def leave_waitlist(self, entry_id: str, *, actor: str | None = None) -> LeaveDecision | None:
        resource_id = keys.resource_of_entry(entry_id)
        if resource_id is None:
            return None
        return _left(await self._call("resv_wl_leave", self._keys(resource_id), resource_id, entry_id,
                                      *_by(actor)))

    # -- reads (source of truth; no event)

    async def resource(self, resource_id: str) -> Resource | None:
        flat = await self._call("resv_resource", self._keys(resource_id), resource_id)
        return from_flat(Resource, flat) if flat else None

    async def reservation(self, reservation_id: str) -> Reservation | None:
        resource_id = keys.resource_of_reservation(reservation_id)
        if resource_id is None:
            return None
        flat = await self._call("resv_reservation", self._keys(resource_id), resource_id, reservation_id)
        return from_flat(Reservation, flat) if flat else None

    async def waitlist_entry(self, entry_id: str) -> WaitlistEntry | None:
        resource_id = keys.resource_of_entry(entry_id)
        if resource_id is None:
            return None
        flat = await self._call("resv_wl_position", self._keys(resource_id), resource_id, entry_id)
        return from_flat(WaitlistEntry, flat) if flat else None
