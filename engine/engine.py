"""The engine: typed async calls over the Lua functions.

It adds no rule of its own. It builds keys, sends the call, and turns the
reply into the Struct of its decision (engine.types); the Lua decides.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import msgspec

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from resv.engine import keys
from resv.engine.cluster import ClusterPipeliner, is_cluster
from resv.engine.deployment import (
    AuditMark,
    EngineState,
    PartitionsMismatch,
    check_partitions,
    check_state,
    read_records,
)
from resv.engine.durability import (
    STRICT_SETTINGS,
    DurabilityError,
    check_durability,
    durability_problems,
    read_durability,
)
from resv.engine.errors import EngineError, EngineRefused, is_missing_function, translate
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
    WaitingList,
    WaitlistEntry,
    WaitlistJoined,
    WaitlistJoinReplayed,
    WaitlistLeaveRejected,
    WaitlistLeaveReplayed,
    WaitlistLeft,
    WaitlistRejected,
    WaitlistSwept,
    from_flat,
)


log = logging.getLogger("resv.guard")

READS = frozenset({"resv_resource", "resv_reservation", "resv_wl_position"})
"""Reads of the source of truth: refused only when the state is behind."""

AuditMarks = Callable[[], Awaitable[Mapping[int, AuditMark]]]
"""Reads the audit marks (archiver/marks.py), raising when it cannot."""

_RUN_ID = re.compile(r"run_id:([0-9a-f]+)")


class Refusal(msgspec.Struct, frozen=True, kw_only=True):
    """Why the engine refuses calls now (Engine.refusal), in operator words."""

    state: str | None = None
    """The engine state is behind the audit (or cannot be compared with it,
    or was never checked): reads and writes are refused."""
    durability: tuple[str, ...] = ()
    """Strict-profile settings the server lost, one phrase each: writes are refused."""

    @property
    def reads(self) -> bool:
        return self.state is not None

    @property
    def problems(self) -> tuple[str, ...]:
        return ((self.state,) if self.state else ()) + self.durability


NOT_CHECKED = Refusal(state="the engine state has not been checked against the audit yet (Redis unreachable)")


# One decoder per entry point: each knows the types its function replies with.
_created = ReplyDecoder(ResourceCreated, ResourceRejected)
_rules = ReplyDecoder(RulesChanged, RulesRejected)
_reserved = ReplyDecoder(ReservationConfirmed, ReservationRejected)
_cancelled = ReplyDecoder(ReservationCancelled, CancelReplayed, CancelRejected)
_joined = ReplyDecoder(WaitlistJoined, WaitlistJoinReplayed, WaitlistRejected)
_left = ReplyDecoder(WaitlistLeft, WaitlistLeaveReplayed, WaitlistLeaveRejected)
_swept = ReplyDecoder(WaitlistSwept)


def _opt(value: int | None) -> str:
    return "" if value is None else str(int(value))


def _by(actor: str | None) -> tuple[str, ...]:
    """The optional trailing `actor` argument: who asked (an API key id such
    as `client#1`, an ops script's name). Recorded in every event the call
    emits, never in its reply. Left out when None, so the call is what it
    was before actors existed."""
    return () if actor is None else (actor,)


def _client(url: str, settings: Settings, retries: int, max_connections: int,
            on_connect: Callable[[Any], Awaitable[None]] | None = None) -> Redis:
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
        redis_connect_func=on_connect,
    )
    return Redis(connection_pool=pool)


def _cluster_client(url: str, settings: Settings, retries: int, max_connections: int) -> RedisCluster:
    """redis-py's cluster client: it owns the topology (slots, MOVED, ASK,
    TRYAGAIN, refresh after a failover). retries: of a call whose node
    failed (0 for the calls that are not idempotent)."""
    return RedisCluster.from_url(
        url, decode_responses=True,
        socket_timeout=settings.socket_timeout, socket_connect_timeout=settings.socket_timeout,
        max_connections=max_connections,
        retry=Retry(ExponentialBackoff(cap=0.25, base=0.02), retries),
    )


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
        self.refusal: Refusal | None = None
        """Set by check_guard: why calls are refused now (None: they are not)."""
        self.state: EngineState | None = None
        """The last state check's result (check_guard)."""
        self._checked_run_ids: frozenset[str] | None = None  # the servers (primaries) check_guard last looked at
        self.cluster: bool | None = None
        """Whether the server is a Redis Cluster (RESV_REDIS_CLUSTER; None
        until `discover` ran)."""
        self._discovering = asyncio.Lock()
        self._server_changed = asyncio.Event()
        self._checked = asyncio.Event()  # set, then replaced, by each completed check
        self.redis = _client(url, settings, settings.retries, settings.max_connections, self._on_connect)
        # Definition changes are not idempotent (a retried create would report
        # ALREADY_EXISTS): they go through a client that never retries.
        self._admin = _client(url, settings, 0, 4, self._on_connect)
        # The guard's own connection: not held back by the check it runs.
        self._checker = _client(url, settings, 0, 2)
        self._pipe = Pipeliner(self.redis, Target.from_url(url), self.load_library, timeout=settings.socket_timeout,
                               admit=self._admit_server,
                               wait_replicas=settings.wait_replicas, wait_timeout_ms=settings.wait_timeout_ms)

    async def discover(self) -> bool:
        """Finds out once whether the server is a cluster (RESV_REDIS_CLUSTER:
        auto asks it with INFO cluster); on a cluster, switches to the
        cluster clients and one lane per primary, and loads the library on
        every primary. Every method that talks to Redis before a call does
        it first; calls made before it go to the single-server path."""
        if self.cluster is not None:
            return self.cluster
        async with self._discovering:
            if self.cluster is not None:
                return self.cluster
            try:
                found = await is_cluster(self.url, self.settings.cluster, self.settings.socket_timeout)
                if found:
                    await self._become_cluster()
            except ValueError:
                raise
            except EngineError:
                raise
            except Exception as exc:
                raise translate(exc) from exc
            self.cluster = found
            return found

    async def _become_cluster(self) -> None:
        before = self.settings
        settings = self.settings = self.settings.for_cluster()
        url = self.url
        single = (self.redis, self._admin, self._checker)
        self.redis = _cluster_client(url, settings, settings.retries, settings.max_connections)
        self._admin = _cluster_client(url, settings, 0, 8)
        self._checker = _cluster_client(url, settings, 0, 4)

        def node_client(node: str) -> Redis:
            return _client(node, settings, settings.retries, settings.max_connections, self._on_connect)

        pipe = ClusterPipeliner(self.redis, url, node_client=node_client, on_primary=self._library_on,
                                timeout=settings.socket_timeout, admit=self._admit_server,
                                wait_replicas=settings.wait_replicas, wait_timeout_ms=settings.wait_timeout_ms)
        try:
            await pipe.start()
        except BaseException:
            await pipe.aclose()
            for client in (self.redis, self._admin, self._checker):
                await client.aclose()
            self.redis, self._admin, self._checker = single
            self.settings = before
            raise
        old, self._pipe = self._pipe, pipe
        await old.aclose()
        for client in single:
            await client.aclose()
            await client.connection_pool.disconnect()
        log.info("engine: Redis Cluster with %d primaries, %d partitions", len(pipe.nodes), settings.partitions)

    def _primaries(self) -> list[Redis]:
        """One client per server holding data: every primary of a cluster,
        or the one server."""
        if self.cluster:
            return self._pipe.primary_clients()  # type: ignore[union-attr]
        return [self.redis]

    async def start(self) -> None:
        if not await self.discover():  # a cluster loaded the library on every primary
            await self.load_library()

    async def check_durability(self) -> dict[str, str]:
        """Raises DurabilityError under the strict profile when the server
        does not fsync every write before replying (docs/guarantees.md)."""
        try:
            await self.discover()
            config: dict[str, str] = {}
            for client in self._primaries():
                config = await check_durability(client, self.settings.durability)
            return config
        except DurabilityError:
            raise
        except Exception as exc:
            raise translate(exc) from exc

    # -- the guard (docs/guarantees.md: the state-loss guard, strict all the time)

    async def check_guard(self, audit: AuditMarks | None) -> Refusal | None:
        """Checks the server now and sets `refusal`: the durability settings
        (strict profile: writes are refused while one is wrong) and the
        engine state against the audit (engine/deployment.py: reads and
        writes are refused while it is behind; missing deployment records of
        a fresh deployment are written). audit: None when there is no audit
        (no DATABASE_URL). Raises PartitionsMismatch, and EngineUnavailable
        when the server cannot be reached (`refusal` is then unchanged)."""
        try:
            await self.discover()
            run_ids, write_problems = await self._check_servers()
            marks, unreadable = None, None
            if audit is not None:
                try:
                    marks = await audit()
                except Exception as exc:  # PostgreSQL down: compared when it is back
                    unreadable = type(exc).__name__
            state = await check_state(self._checker, self.settings.partitions, marks,
                                      audit_unreadable=unreadable)
        except PartitionsMismatch:
            raise
        except EngineError:
            raise
        except Exception as exc:
            raise translate(exc) from exc
        refusal = Refusal(state=state.problem, durability=tuple(write_problems)) \
            if state.problem or write_problems else None
        if refusal != self.refusal:
            if refusal is None:
                log.warning("engine: calls accepted again")
            else:
                log.error("engine: refusing %s: %s", "all calls" if refusal.reads else "writes",
                          "; ".join(refusal.problems))
        if state.written:
            log.info("engine: deployment %s recorded in %d partitions", state.deployment_id, len(state.written))
        self.state, self.refusal = state, refusal
        self._checked_run_ids = run_ids
        done, self._checked = self._checked, asyncio.Event()
        done.set()
        return refusal

    async def _check_servers(self) -> tuple[frozenset[str], list[str]]:
        """The run_id of every server holding data (each primary of a
        cluster, read afresh) and, under the strict profile, the durability
        settings each lost."""
        strict = self.settings.durability == "strict"
        if not self.cluster:
            run_id = str((await self._checker.info("server")).get("run_id", ""))
            problems: list[str] = []
            if strict:
                try:
                    problems = [f"RESV_DURABILITY=strict: {p}"
                                for p in durability_problems(await read_durability(self._checker))]
                except DurabilityError as exc:
                    problems = [str(exc)]
            return frozenset({run_id}), problems
        checker: Any = self._checker
        await checker.nodes_manager.initialize()
        run_ids: set[str] = set()
        problems = []
        for node in checker.get_primaries():
            run_ids.add(str((await checker.execute_command("INFO", "server", target_nodes=node)).get("run_id", "")))
            if not strict:
                continue
            where = f" on {node.name}"
            try:
                config = await checker.execute_command("CONFIG", "GET", *STRICT_SETTINGS, target_nodes=node)
                config = {k: str(config.get(k, "")).lower() for k in STRICT_SETTINGS}
                problems += [f"RESV_DURABILITY=strict: {p}{where}" for p in durability_problems(config)]
            except ResponseError as exc:
                problems.append(f"RESV_DURABILITY=strict: the server refuses CONFIG GET ({exc}){where}")
        return frozenset(run_ids), problems

    async def guard_forever(self, audit: AuditMarks | None,
                            on_check: Callable[[Engine], None] | None = None) -> None:
        """check_guard every RESV_DURABILITY_CHECK_S, and at once when a
        connection meets a server not checked yet. Runs until cancelled."""
        interval = self.settings.durability_check_s
        if self._checked_run_ids is None:
            self._server_changed.set()  # never checked: at once
        while True:
            try:
                async with asyncio.timeout(interval):
                    await self._server_changed.wait()
            except TimeoutError:
                pass
            self._server_changed.clear()
            try:
                await self.check_guard(audit)
            except PartitionsMismatch as exc:
                self.refusal = Refusal(state=str(exc))
                log.error("engine: refusing all calls: %s", exc)
            except Exception as exc:
                log.warning("engine: guard check failed (%s: %s); retrying", type(exc).__name__, exc)
                await asyncio.sleep(min(0.2, interval))
                self._server_changed.set()
            if on_check is not None:
                on_check(self)

    def refuse_until_checked(self) -> None:
        """Refuses every call until check_guard has run (a process that could
        not check at start)."""
        self.refusal = NOT_CHECKED

    async def check_partitions(self) -> None:
        """Raises PartitionsMismatch when the deployment records name another
        RESV_PARTITIONS (reads only)."""
        try:
            await self.discover()
            records, _ = await read_records(self._checker, self.settings.partitions)
        except Exception as exc:
            raise translate(exc) from exc
        check_partitions(records, self.settings.partitions)

    async def _admit_server(self, info: Any) -> None:
        """Raises unless a connection whose server's INFO is `info` may carry
        calls: the server is the one the guard checked (a server it has not
        checked is checked now; the connection waits for that, up to
        RESV_REDIS_TIMEOUT_S), and the state is not behind. No guard
        (check_guard never ran): every server is admitted."""
        if self._checked_run_ids is None:
            return
        found = _RUN_ID.search(info.decode() if isinstance(info, bytes) else str(info))
        run_id = found.group(1) if found else None
        if run_id not in self._checked_run_ids:
            self._server_changed.set()
            try:
                async with asyncio.timeout(self.settings.socket_timeout):
                    while run_id not in self._checked_run_ids:
                        await self._checked.wait()
            except TimeoutError:
                raise RedisConnectionError("a Redis server the guard has not checked yet; checking it") from None
        if self.refusal is not None and self.refusal.reads:
            # calls that passed `_refuse` before the check refused them (they
            # waited for this connection) must not reach the server either
            raise RedisConnectionError("the engine state is behind the audit")

    async def _on_connect(self, conn: Any) -> None:
        """Every new redis-py connection of the commit and admin clients (the
        lane asks the same, engine/pipeline.py). Once the
        guard runs, a connection to a server it has not checked (another
        run_id: a restart, maybe without its data; a failover) fails, and the
        check runs at once: nothing is sent to that server before it passed.
        While the state is behind, every new connection fails too."""
        await conn.on_connect()
        if self._checked_run_ids is None:
            return  # no guard (tools, tests driving the engine directly)
        await conn.send_command("INFO", "server")
        await self._admit_server(await conn.read_response())

    def _refuse(self, function: str) -> None:
        refusal = self.refusal
        if refusal is not None and (refusal.reads or function not in READS):
            raise EngineRefused("; ".join(refusal.problems))

    async def load_library(self) -> bool:
        """Loads the library where it is missing or older: on the server, or
        on every primary of a cluster. True when it loaded somewhere."""
        loaded = False
        for client in self._primaries():
            loaded = await self._library_on(client) or loaded
        return loaded

    async def _library_on(self, client: Redis) -> bool:
        try:
            return await ensure_library(client)
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
        await self.discover()
        if self.cluster:
            await self._pipe.refresh()  # type: ignore[union-attr]  # a new primary gets the library
        command = ("FCALL_RO", "resv_version", 0)
        for client in self._primaries():
            try:
                loaded = await client.execute_command(*command)
            except Exception as exc:
                if not is_missing_function(exc):
                    raise
                await self._library_on(client)
                await client.execute_command(*command)
                continue
            if str(loaded).isdigit() and int(loaded) < self._library_version:
                await self._library_on(client)
        return True

    async def aclose(self) -> None:
        await self._pipe.aclose()
        # Redis(connection_pool=...) does not close a pool it did not create
        for client in (self.redis, self._admin, self._checker):
            await client.aclose()
            if not isinstance(client, RedisCluster):
                await client.connection_pool.disconnect()

    async def __aenter__(self) -> Engine:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- plumbing

    def _keys(self, resource_id: str) -> tuple[str, ...]:
        return keys.resource_keys(resource_id, self.settings.partitions)

    def _write_keys(self, resource_id: str) -> tuple[str, ...]:
        return keys.write_keys(resource_id, self.settings.partitions)

    def _call(self, function: str, keys_: tuple[str, ...], *args: Any) -> asyncio.Future:
        """Pipelined; await the future for the reply. Its errors arrive as
        EngineErrors. A plain function, not a coroutine: each coroutine
        between a handler and the reply is one more frame to resume when the
        reply arrives, on every commit."""
        if self.refusal is not None:
            self._refuse(function)
        return self._pipe.call("FCALL", function, len(keys_), *keys_, *args)

    async def _admin_call(self, function: str, keys_: tuple[str, ...], *args: Any) -> Any:
        """One call on the client that never retries (definition changes)."""
        if self.refusal is not None:
            self._refuse(function)
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
            self._write_keys(spec.resource_id),
            spec.resource_id,
            spec.type,
            str(spec.capacity),
            _opt(spec.opens_at),
            _opt(spec.closes_at),
            "1" if spec.waitlist_enabled else "0",
            _opt(spec.max_per_request),
            _opt(spec.max_per_client),
            actor or "",  # ARGV[9]: the actor, then ARGV[10]
            _opt(spec.notify_window_ms),
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
            "resv_configure", self._write_keys(resource_id), resource_id, str(expected_version), *pairs
        ))

    async def open(self, resource_id: str, expected_version: int, *, actor: str | None = None) -> RulesDecision:
        return _rules(await self._admin_call("resv_open", self._write_keys(resource_id), resource_id,
                                             str(expected_version), *_by(actor)))

    async def close(self, resource_id: str, expected_version: int, *, actor: str | None = None) -> RulesDecision:
        return _rules(await self._admin_call("resv_close", self._write_keys(resource_id), resource_id,
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
            keys.reserve_keys(resource_id, request_id, p, actor),
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
        return _cancelled(await self._call("resv_cancel", self._write_keys(resource_id), resource_id, reservation_id,
                                           *_by(actor)))

    async def join_waitlist(self, resource_id: str, client_id: str, quantity: int, *,
                            actor: str | None = None) -> JoinDecision:
        return _joined(await self._call("resv_wl_join", self._write_keys(resource_id), resource_id, client_id,
                                        str(quantity), *_by(actor)))

    async def leave_waitlist(self, entry_id: str, *, actor: str | None = None) -> LeaveDecision | None:
        resource_id = keys.resource_of_entry(entry_id)
        if resource_id is None:
            return None
        return _left(await self._call("resv_wl_leave", self._write_keys(resource_id), resource_id, entry_id,
                                      *_by(actor)))

    async def sweep_waitlist(self, resource_id: str, *, actor: str | None = None) -> WaitlistSwept:
        """Expires the resource's lapsed notifications and notifies what
        then fits (resv_wl_sweep); logs only when it changed something."""
        return _swept(await self._call("resv_wl_sweep", self._write_keys(resource_id), resource_id,
                                          *_by(actor)))

    async def due_for_sweep(self, partition: int, limit: int = 100) -> list[str]:
        """Resources of a partition with a notification whose deadline has
        come (server time), earliest first, from the partition's index."""
        try:
            now_s, now_us = await self.redis.time()
            now = int(now_s) * 1_000_000 + int(now_us)
            return list(await self.redis.zrangebyscore(keys.notified_index_key(partition), "-inf", now,
                                                       start=0, num=limit))
        except Exception as exc:
            raise translate(exc) from exc

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

    async def waiting_list(self, resource_id: str, *, offset: int = 0, count: int = 100) -> WaitingList | None:
        """The WAITING entries in order from place offset+1 (count 1..1000),
        and how many wait in all. None for an unknown resource."""
        flat = await self._call("resv_waitlist", self._keys(resource_id), resource_id, str(offset), str(count))
        if not flat:
            return None
        return WaitingList(waiting=int(flat[0]), entries=[from_flat(WaitlistEntry, e) for e in flat[1:]])
