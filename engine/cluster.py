"""Redis Cluster: the pipelined fast path with one lane per primary.

redis-py's `RedisCluster` owns the topology: which primary serves which
slot, refreshed (CLUSTER SLOTS) after a redirect or a lost primary. The
engine routes each pipelined call by the slot of its `{pN}` hash tag (every
key of a call shares it) to the Pipeliner of the primary that serves the
slot: a Pipeliner of its own per primary, with its lane and its retrying
path (a pooled client of that node only), so a batch never spans two nodes.

A call the node answers with a redirect (MOVED, ASK, TRYAGAIN, CLUSTERDOWN,
READONLY, MASTERDOWN) or whose connection failed after the node client's
retries comes back here: the topology is refreshed once for all of them and
each is sent again to the slot's owner then, at most MAX_REROUTES times
with a growing pause (a failover takes cluster-node-timeout and an
election). Every pipelined call is idempotent (request id, reservation id,
one entry per client), so a call the old owner may have run is safe to send
again. ASK (a slot being migrated) is answered by redis-py's cluster client,
which sends ASKING and the call on one connection.

A primary seen for the first time (start, failover, new shard) gets the
library before it carries calls (`on_primary`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MasterDownError,
    MovedError,
    ReadOnlyError,
    RedisError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from hiredis import pack_command

from resv.engine.errors import EngineUnavailable, translate
from resv.engine.lane import Batch, Call, Target
from resv.engine.pipeline import Pipeliner, _fail
from resv.engine.settings import Settings

log = logging.getLogger("resv.engine")

MODES = ("auto", "on", "off")

SLOTS = 16384
MAX_REROUTES = 6
"""Times one call is sent again after a redirect or a lost primary."""
REROUTE_PAUSE_S = (0.0, 0.05, 0.15, 0.3, 0.6, 1.0)
"""Pause before each re-send (a MOVED or ASK is followed at once). With the
node client's own retries, a call waits about 3 s for a failover before it
fails with EngineUnavailable (a 503 at the API)."""

REDIRECTS = (MovedError, AskError, TryAgainError, ClusterDownError, ReadOnlyError, MasterDownError)
LOST = (RedisConnectionError, RedisTimeoutError, OSError)


async def is_cluster(url: str, mode: str, timeout: float) -> bool:
    """RESV_REDIS_CLUSTER: on and off say so; auto asks the server (INFO
    cluster, cluster_enabled:1)."""
    if mode not in MODES:
        raise ValueError(f"RESV_REDIS_CLUSTER must be one of {', '.join(MODES)}, got {mode!r}")
    if mode != "auto":
        return mode == "on"
    client = Redis.from_url(url, decode_responses=True, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        return str((await client.info("cluster")).get("cluster_enabled", 0)) == "1"
    finally:
        await client.aclose()


async def open_client(url: str, settings: Settings, **kwargs: Any) -> tuple[Redis | RedisCluster, Settings]:
    """A decoding client for the parts that read the streams themselves (the
    archiver, the tools): redis-py's cluster client on a cluster, with the
    settings a cluster takes (Settings.for_cluster: the partition default)."""
    if await is_cluster(url, settings.cluster, settings.socket_timeout):
        return RedisCluster.from_url(url, decode_responses=True, **kwargs), settings.for_cluster()
    return Redis.from_url(url, decode_responses=True, **kwargs), settings


def node_url(url: str, host: str, port: int) -> str:
    """The URL with another node's address (same scheme, sign-in, query)."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = (userinfo + "@" if userinfo else "") + f"{host}:{port}"
    return urlunsplit((parts.scheme, netloc, "", parts.query, ""))


@lru_cache(maxsize=8192)
def slot_of(key: str) -> int:
    return key_slot(key.encode())


def partition_slots(partitions: int) -> list[int]:
    """The slot of each partition's hash tag `{pN}`."""
    return [key_slot(f"{{p{p}}}".encode()) for p in range(partitions)]


class NodePipeliner(Pipeliner):
    """One primary's Pipeliner: replies that redirect, and batches whose
    connection was lost, go back to the ClusterPipeliner instead of failing."""

    def __init__(self, *args: Any, node: ClusterNode, on_redirect: Callable[[Batch, BaseException], None],
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.node = node
        self._on_redirect = on_redirect

    def resend(self, call: Call) -> None:
        """Queues a call made elsewhere (its future is already awaited)."""
        if self._closed:
            self._on_redirect([call], EngineUnavailable("primary no longer serves the slot"))
            return
        self._pending.append(call)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _settle_or_reload(self, batch: Batch, results: list[Any]) -> None:
        moved = [i for i, r in enumerate(results) if isinstance(r, REDIRECTS)]
        if moved:
            error = results[moved[0]]
            self._on_redirect([batch[i] for i in moved], error)
            skip = set(moved)
            batch = [c for i, c in enumerate(batch) if i not in skip]
            results = [r for i, r in enumerate(results) if i not in skip]
        if batch:
            super()._settle_or_reload(batch, results)

    async def _send(self, batch: Batch) -> None:
        try:
            results = await self._execute(batch)
        except LOST as exc:  # the node is gone or cut off: its slots may have a new owner
            self._on_redirect(batch, exc)
            return
        except BaseException as exc:
            _fail(batch, exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        self._settle_or_reload(batch, results)


class ClusterPipeliner:
    """The Pipeliner's interface (`call`, `aclose`) over one NodePipeliner
    per primary."""

    def __init__(self, cluster: RedisCluster, url: str, *,
                 node_client: Callable[[str], Redis],
                 on_primary: Callable[[Redis], Awaitable[Any]],
                 **pipeliner: Any) -> None:
        self.cluster = cluster
        self._url = url
        self._node_client = node_client
        self._on_primary = on_primary
        self._pipeliner = pipeliner
        self._routes: list[NodePipeliner | None] = [None] * SLOTS
        self.nodes: dict[str, NodePipeliner] = {}
        """The primaries' Pipeliners, by node name (host:port)."""
        self.clients: dict[str, Redis] = {}
        """Each primary's pooled client (retrying path, library, checks)."""
        self._attempts: dict[asyncio.Future, int] = {}
        self._refreshing = asyncio.Lock()
        self._generation = 0
        self._tasks: set[asyncio.Task] = set()
        self._closed = False

    async def start(self) -> None:
        """Reads the topology and brings every primary in (library loaded)."""
        await self.cluster.initialize()
        await self._adopt()

    # -- calls

    def call(self, *command: Any) -> asyncio.Future:
        node = self._routes[slot_of(command[3])]  # FCALL name numkeys key...
        if node is None:
            return self._route_and_call(command)
        return node.call(*command)

    def _route_and_call(self, command: tuple[Any, ...]) -> asyncio.Future:
        slot = slot_of(command[3])
        node = self._owner(slot)
        if node is not None:
            return node.call(*command)
        future = asyncio.get_running_loop().create_future()
        self._spawn(self._reroute([(command, pack_command(command), future)], None))
        return future

    def _owner(self, slot: int) -> NodePipeliner | None:
        """The Pipeliner of the primary serving `slot`, None while that
        primary has none yet (a refresh brings it in)."""
        try:
            name = self.cluster.nodes_manager.get_node_from_slot(slot).name
        except RedisError:
            return None
        node = self.nodes.get(name)
        if node is not None:
            self._routes[slot] = node
        return node

    # -- redirects

    def _redirected(self, calls: Batch, error: BaseException) -> None:
        if self._closed:
            _fail_all(calls, EngineUnavailable("the engine is closed"))
            return
        self._spawn(self._reroute(calls, error))

    async def _reroute(self, calls: Batch, error: BaseException | None) -> None:
        live: Batch = []
        for call in calls:
            future = call[2]
            if future.done():
                continue
            attempt = self._attempts.get(future, 0)
            if attempt >= MAX_REROUTES:
                self._attempts.pop(future, None)
                _fail_all([call], error or EngineUnavailable("no primary serves the slot"))
                continue
            if attempt == 0:
                future.add_done_callback(self._forget)
            self._attempts[future] = attempt + 1
            live.append(call)
        if not live:
            return
        if isinstance(error, AskError) and not isinstance(error, MovedError):  # MovedError is an AskError
            await asyncio.gather(*(self._ask(call) for call in live))
            return
        first = min(self._attempts.get(c[2], 1) for c in live) - 1
        if error is not None:
            log.warning("Redis Cluster: %d calls sent again to the slots' owners (%s: %s)", len(live),
                        type(error).__name__, error)
        generation = self._generation
        try:
            await asyncio.sleep(REROUTE_PAUSE_S[min(first, len(REROUTE_PAUSE_S) - 1)])
            await self._refresh(generation)
        except Exception as exc:  # noqa: BLE001 - topology unreadable: these calls try again
            log.warning("Redis Cluster: topology refresh failed (%s: %s)", type(exc).__name__, exc)
            if not self._closed:
                self._spawn(self._reroute(live, exc))
            return
        unrouted: Batch = []
        for call in live:
            node = self._owner(slot_of(call[0][3]))
            if node is None:
                unrouted.append(call)
            else:
                node.resend(call)
        if unrouted:
            self._spawn(self._reroute(unrouted, error))

    async def _ask(self, call: Call) -> None:
        command, _, future = call
        try:
            result = await self.cluster.execute_command(*command)
        except Exception as exc:  # noqa: BLE001
            if isinstance(exc, REDIRECTS + LOST):
                self._redirected([call], exc)
                return
            result = exc
        if not future.done():
            if isinstance(result, Exception):
                future.set_exception(translate(result))
            else:
                future.set_result(result)

    def _forget(self, future: asyncio.Future) -> None:
        self._attempts.pop(future, None)

    async def _refresh(self, generation: int) -> None:
        """Reads the topology again unless another refresh finished since
        `generation` was read; brings new primaries in."""
        async with self._refreshing:
            if generation != self._generation:
                return
            await self.cluster.nodes_manager.initialize()
            await self._adopt()

    async def _adopt(self) -> None:
        primaries = {node.name: node for node in self.cluster.get_primaries()}
        for name in set(self.nodes) - set(primaries):
            node = self.nodes.pop(name)
            log.warning("Redis Cluster: %s is no longer a primary", name)
            self._spawn(node.aclose())
        for name, node in primaries.items():
            if name in self.nodes:
                continue
            client = self.clients.get(name) or self._node_client(node_url(self._url, node.host, node.port))
            self.clients[name] = client
            await self._on_primary(client)
            self.nodes[name] = NodePipeliner(
                client, _target(self._url, node), self._reload_on(client), node=node,
                on_redirect=self._redirected, **self._pipeliner)
        self._routes = [None] * SLOTS
        self._generation += 1

    def _reload_on(self, client: Redis) -> Callable[[], Awaitable[Any]]:
        async def reload() -> Any:
            return await self._on_primary(client)
        return reload

    def primary_clients(self) -> list[Redis]:
        return [self.clients[name] for name in self.nodes]

    async def refresh(self) -> None:
        """Reads the topology again (a new primary gets the library)."""
        await self._refresh(self._generation)

    # -- lifecycle

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        self._closed = True
        await asyncio.gather(*(node.aclose() for node in self.nodes.values()), return_exceptions=True)
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for client in self.clients.values():
            await client.aclose()
            await client.connection_pool.disconnect()


def _target(url: str, node: ClusterNode) -> Target:
    return Target.from_url(node_url(url, node.host, node.port))


def _fail_all(calls: Batch, error: BaseException) -> None:
    for _, _, future in calls:
        if not future.done():
            future.set_exception(translate(error))
