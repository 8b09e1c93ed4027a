"""Engine settings, read once from the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping

import msgspec

from resv.engine.limits import DEFAULT_IDEMPOTENCY_TTL_MS, MAX_IDEMPOTENCY_TTL_MS

CLUSTER_PARTITIONS = 256
"""RESV_PARTITIONS when it is not set and the server is a cluster: the
partitions' hash tags spread over the shards within 10% of even for 2 to
8 shards of contiguous slot ranges (docs/scaling.md, `resv partitions`)."""


def env_number(env: Mapping[str, str], name: str, default, kind=int):
    """A non-negative number from the environment; the default when unset."""
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None
    if value < 0:
        raise ValueError(f"{name} must not be negative")
    return value


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    redis_url: str | None = None
    """REDIS_URL: the Redis-compatible server holding all state. Unset: a
    private embedded server is started by `resv demo` / the tests."""
    partitions: int = 16
    """RESV_PARTITIONS: number of event streams (and hash tags). Fixed for a
    deployment: resources are mapped to partitions by crc32 of their id.
    Unset: 16 on one server, 256 on a cluster (docs/scaling.md)."""
    partitions_set: bool = True
    """Whether RESV_PARTITIONS was given (from_env); when not, a cluster
    takes its own default (Settings.for_cluster)."""
    cluster: str = "auto"
    """RESV_REDIS_CLUSTER: auto (ask the server: INFO cluster), on or off.
    On a cluster, redis-py's cluster client owns the topology and the engine
    keeps one lane per primary (engine/cluster.py)."""
    idempotency_ttl_ms: int = DEFAULT_IDEMPOTENCY_TTL_MS
    """RESV_IDEMPOTENCY_TTL_MS: how long a request id's decision is remembered
    (at most the Lua's MAX_IDEMPOTENCY_TTL_MS)."""
    socket_timeout: float = 1.0
    """RESV_REDIS_TIMEOUT_S: per-command socket timeout; also how long the
    lane (engine/lane.py) waits for a reply before dropping its connection."""
    retries: int = 2
    """RESV_REDIS_RETRIES: retries of a call whose connection failed or timed
    out. Safe because commits are idempotent on their request id."""
    max_connections: int = 64
    """RESV_REDIS_MAX_CONNECTIONS: connection pool size per process."""
    durability: str = "strict"
    """RESV_DURABILITY: strict (refuse to start unless the server fsyncs every
    write before replying) or relaxed (start with a warning)."""
    durability_check_s: float = 30.0
    """RESV_DURABILITY_CHECK_S: how often a running process checks again the
    server's durability settings (strict profile) and the engine state
    against the audit; it also checks whenever it meets a server it has not
    checked (a restart, a failover)."""
    wait_replicas: int = 0
    """RESV_WAIT_REPLICAS: a commit is answered only after this many replicas
    acknowledged it (WAIT); 0 disables."""
    wait_timeout_ms: int = 500
    """RESV_WAIT_TIMEOUT_MS: how long to wait for those replicas."""

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env

        def num(name: str, default, kind=int):
            return env_number(env, name, default, kind)

        partitions = num("RESV_PARTITIONS", 16)
        cluster = (env.get("RESV_REDIS_CLUSTER") or "auto").lower()
        if cluster not in ("auto", "on", "off"):
            raise ValueError(f"RESV_REDIS_CLUSTER must be auto, on or off, got {cluster!r}")
        if not 1 <= partitions <= 1024:
            raise ValueError("RESV_PARTITIONS must be in 1..1024")
        ttl = num("RESV_IDEMPOTENCY_TTL_MS", DEFAULT_IDEMPOTENCY_TTL_MS) or DEFAULT_IDEMPOTENCY_TTL_MS
        if ttl > MAX_IDEMPOTENCY_TTL_MS:  # else every reservation would be refused as malformed
            raise ValueError(f"RESV_IDEMPOTENCY_TTL_MS must be at most {MAX_IDEMPOTENCY_TTL_MS} (365 days)")
        return cls(
            redis_url=env.get("REDIS_URL") or None,
            partitions=partitions,
            partitions_set=env.get("RESV_PARTITIONS") not in (None, ""),
            cluster=cluster,
            idempotency_ttl_ms=ttl,
            socket_timeout=num("RESV_REDIS_TIMEOUT_S", 1.0, float),
            retries=num("RESV_REDIS_RETRIES", 2),
            max_connections=num("RESV_REDIS_MAX_CONNECTIONS", 64) or 64,
            durability=env.get("RESV_DURABILITY") or "strict",
            durability_check_s=num("RESV_DURABILITY_CHECK_S", 30.0, float) or 30.0,
            wait_replicas=num("RESV_WAIT_REPLICAS", 0),
            wait_timeout_ms=num("RESV_WAIT_TIMEOUT_MS", 500) or 500,
        )

    def for_cluster(self) -> Settings:
        """These settings on a cluster: RESV_PARTITIONS, when not set, is
        CLUSTER_PARTITIONS (engine/cluster.py; docs/scaling.md says why)."""
        if self.partitions_set:
            return self
        return msgspec.structs.replace(self, partitions=CLUSTER_PARTITIONS, partitions_set=True)
