"""A private Redis Cluster (or Valkey cluster) of embedded servers.

The same binary the single server uses (resv.embedded), each node started
with `--cluster-enabled yes` on a free loopback port whose bus port
(port + 10000) is free too, so ports stay at or below 55535. The cluster is
formed with plain commands (CLUSTER ADDSLOTSRANGE, MEET, REPLICATE), the
slots split evenly in contiguous ranges as `redis-cli --cluster create`
does, and ready once every node reports `cluster_state:ok` and every replica
is in sync. Used by the tests and `resv demo --cluster`.
"""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis

from resv.embedded import EmbeddedRedis, ServerStartError

SLOTS = 16384
BUS_OFFSET = 10000
MAX_PORT = 65535 - BUS_OFFSET


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cluster_port(taken: set[int]) -> int:
    """A loopback port <= 55535 that is free, and whose bus port is free too."""
    for _ in range(1000):
        port = random.randint(20000, MAX_PORT)
        if port not in taken and port + BUS_OFFSET not in taken and _free(port) and _free(port + BUS_OFFSET):
            return port
    raise ServerStartError("no free loopback port pair (port, port + 10000) found")


def slot_ranges(shards: int) -> list[tuple[int, int]]:
    """Contiguous, even slot ranges, first and last slot of each (what
    `redis-cli --cluster create` assigns)."""
    per = SLOTS / shards
    return [(round(i * per), round((i + 1) * per) - 1) for i in range(shards)]


class EmbeddedCluster:
    """`primaries` shards, each with `replicas` replicas. `nodes[i]` are the
    servers (primaries first, in slot order, then the replicas of shard 0,
    1, ...); `url` names the first primary."""

    def __init__(self, binary: str | None = None, *, primaries: int = 3, replicas: int = 1,
                 node_timeout_ms: int = 1500, appendfsync: str = "always",
                 extra_args: Sequence[str] = (), start_timeout: float = 30.0) -> None:
        self.primaries = primaries
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        self.start_timeout = start_timeout
        taken: set[int] = set()
        self.nodes: list[EmbeddedRedis] = []
        for _ in range(primaries * (1 + replicas)):
            port = cluster_port(taken)
            taken |= {port, port + BUS_OFFSET}
            self.nodes.append(EmbeddedRedis(binary, port=port, appendfsync=appendfsync, extra_args=[
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(node_timeout_ms),
                # a replica takes over however long it was cut off (tests kill primaries)
                "--cluster-replica-validity-factor", "0",
                *extra_args,
            ]))

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.nodes[0].port}"

    @property
    def urls(self) -> list[str]:
        return [f"redis://127.0.0.1:{n.port}" for n in self.nodes]

    def client(self, node: EmbeddedRedis) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=node.port, decode_responses=True, socket_timeout=5)

    def start(self) -> EmbeddedCluster:
        for node in self.nodes:
            node.start()
        clients = [self.client(n) for n in self.nodes]
        try:
            ids = [c.execute_command("CLUSTER", "MYID") for c in clients]
            for c, (first, last) in zip(clients, slot_ranges(self.primaries)):
                c.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
            for c in clients[1:]:
                c.execute_command("CLUSTER", "MEET", "127.0.0.1", self.nodes[0].port)
            self._wait(lambda: all(len(_known(c)) == len(self.nodes) for c in clients), "every node meets the others")
            for i, c in enumerate(clients[self.primaries:]):
                primary = ids[i // self.replicas] if self.replicas else None
                self._wait(lambda c=c, primary=primary: _replicate(c, primary), "replicas attach")
            self.wait_ok()
        finally:
            for c in clients:
                c.close()
        return self

    def wait_ok(self, timeout: float | None = None) -> None:
        """Until every running node reports cluster_state:ok, agrees on the
        slots, and every primary's replicas are online."""
        def ok() -> bool:
            states = []
            for node in self.nodes:
                if not node.running:
                    continue
                c = self.client(node)
                try:
                    info = c.execute_command("CLUSTER", "INFO")
                    role = c.info("replication")
                    states.append((info.get("cluster_state") if isinstance(info, dict) else
                                   _field(info, "cluster_state"), _slots_of(c), role))
                except redis.RedisError:
                    return False
                finally:
                    c.close()
            if any(s != "ok" for s, _, _ in states) or len({repr(sl) for _, sl, _ in states}) != 1:
                return False
            for _, _, role in states:
                if role.get("role") == "master":
                    slaves = [v for k, v in role.items() if k.startswith("slave") and isinstance(v, dict)]
                    if any(s.get("state") != "online" for s in slaves):
                        return False
            return True
        self._wait(ok, "cluster_state:ok on every node", timeout)

    def _wait(self, check: Any, what: str, timeout: float | None = None) -> None:
        deadline = time.monotonic() + (timeout or self.start_timeout)
        while True:
            try:
                if check():
                    return
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {n.log_path}\n" + _tail(n.log_path) for n in self.nodes)
                raise ServerStartError(f"cluster: timed out waiting until {what}\n{logs}")
            time.sleep(0.05)

    def primary_nodes(self) -> list[EmbeddedRedis]:
        """The running nodes that are primaries now (after failovers too)."""
        out = []
        for node in self.nodes:
            if not node.running:
                continue
            c = self.client(node)
            try:
                if c.info("replication").get("role") == "master":
                    out.append(node)
            finally:
                c.close()
        return out

    def owner(self, slot: int) -> EmbeddedRedis:
        """The running primary serving `slot`."""
        for node in self.primary_nodes():
            c = self.client(node)
            try:
                if any(first <= slot <= last for first, last in _slots_of(c, mine=True)):
                    return node
            finally:
                c.close()
        raise LookupError(f"no primary serves slot {slot}")

    def close(self) -> None:
        for node in self.nodes:
            node.close()

    def __enter__(self) -> EmbeddedCluster:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()


def _known(c: redis.Redis) -> list[str]:
    return [line for line in c.execute_command("CLUSTER", "NODES").splitlines() if line.strip()]


def _replicate(c: redis.Redis, primary: str | None) -> bool:
    if primary is None:
        return True
    try:
        c.execute_command("CLUSTER", "REPLICATE", primary)
        return True
    except redis.ResponseError:  # the primary is not known to this node yet
        return False


def _field(info: str, name: str) -> str | None:
    for line in str(info).splitlines():
        key, _, value = line.partition(":")
        if key == name:
            return value.strip()
    return None


def _slots_of(c: redis.Redis, *, mine: bool = False) -> list[tuple[int, int]]:
    """Slot ranges served by primaries in this node's view (mine: only by
    this node), sorted."""
    out = []
    for line in _known(c):
        parts = line.split()
        flags = parts[2].split(",")
        if "master" not in flags or "fail" in flags or (mine and "myself" not in flags):
            continue
        for item in parts[8:]:
            if item.startswith("["):
                continue  # a slot being migrated or imported
            first, _, last = item.partition("-")
            out.append((int(first), int(last or first)))
    return sorted(out)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
