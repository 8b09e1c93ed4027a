"""Key names. Every key one call touches shares its partition's hash tag.

A resource maps to partition crc32(resource_id) mod RESV_PARTITIONS; the
partition count is fixed for a deployment (changing it moves resources to
other tags). Reservation and entry ids carry their resource id, so a cancel
or a leave finds its keys without a lookup. The `*_in(partition, ...)` forms
name a resource's keys in a given partition (replay and verify use the
logged one); the others find the partition from the resource id.
"""

from __future__ import annotations

import re
import zlib
from functools import lru_cache

RESERVATION_SEP = "~"
ENTRY_SEP = "~w"

KEY_PREFIX = "resv:"
"""Every key of the engine starts with it (a restore refuses a target
holding any)."""


def partition_of(resource_id: str, partitions: int) -> int:
    return zlib.crc32(resource_id.encode()) % partitions


def prefix(partition: int) -> str:
    return f"{KEY_PREFIX}{{p{partition}}}:"


def stream_key(partition: int) -> str:
    return prefix(partition) + "events"


def deployment_key(partition: int) -> str:
    """The partition's deployment record (lua resv_deploy; engine/deployment.py)."""
    return prefix(partition) + "deployment"


def notified_index_key(partition: int) -> str:
    """The partition's resources with outstanding notifications, scored by
    their earliest deadline (us): what the sweep visits."""
    return prefix(partition) + "notified"


def resource_keys_in(partition: int, resource_id: str) -> tuple[str, str, str, str, str, str]:
    """The six keys every resource call takes, in the Lua contract's order."""
    p = prefix(partition)
    return (
        f"{p}res:{resource_id}",
        f"{p}bk:{resource_id}",
        f"{p}cl:{resource_id}",
        f"{p}wl:{resource_id}",
        f"{p}we:{resource_id}",
        f"{p}events",
    )


def waitlist_keys_in(partition: int, resource_id: str) -> tuple[str, str, str]:
    """The waiting-list keys every write call takes after its other keys:
    WAITING entries by quantity, NOTIFIED entries by deadline, and the
    partition's index of resources with outstanding notifications."""
    p = prefix(partition)
    return (f"{p}wq:{resource_id}", f"{p}wn:{resource_id}", f"{p}notified")


def request_key_in(partition: int, resource_id: str, request_id: str, actor: str | None = None) -> str:
    """The idempotency record of a reservation request. With an actor (the
    API passes its key id), request ids are scoped to it: two applications'
    equal Idempotency-Keys never meet. Without, the scope is the resource
    alone (ops scripts calling the Lua directly). A resource id holds no '@'
    and an actor no ':', so scopes never collide."""
    scope = f"@{actor}" if actor else ""
    return f"{prefix(partition)}req:{resource_id}{scope}:{request_id}"


# Cached: every call needs them, and a resource takes many calls.
@lru_cache(maxsize=4096)
def resource_keys(resource_id: str, partitions: int) -> tuple[str, str, str, str, str, str]:
    return resource_keys_in(partition_of(resource_id, partitions), resource_id)


@lru_cache(maxsize=4096)
def waitlist_keys(resource_id: str, partitions: int) -> tuple[str, str, str]:
    return waitlist_keys_in(partition_of(resource_id, partitions), resource_id)


@lru_cache(maxsize=4096)
def write_keys(resource_id: str, partitions: int) -> tuple[str, ...]:
    """The keys of a write call other than resv_reserve: the resource keys,
    then the waiting-list keys."""
    return resource_keys(resource_id, partitions) + waitlist_keys(resource_id, partitions)


def request_key(resource_id: str, request_id: str, partitions: int, actor: str | None = None) -> str:
    return request_key_in(partition_of(resource_id, partitions), resource_id, request_id, actor)


def reserve_keys(resource_id: str, request_id: str, partitions: int, actor: str | None = None) -> tuple[str, ...]:
    """resv_reserve's keys: the resource keys, the request key, the
    waiting-list keys and, with an actor, the unscoped request key (read
    only, for records an earlier release wrote; see lua/resv.lua)."""
    resource, scoped, waitlist, unscoped = _reserve_parts(resource_id, partitions, actor)
    if unscoped is None:
        return (*resource, scoped + request_id, *waitlist)
    return (*resource, scoped + request_id, *waitlist, unscoped + request_id)


@lru_cache(maxsize=4096)
def _reserve_parts(resource_id: str, partitions: int,
                   actor: str | None) -> tuple[tuple[str, ...], str, tuple[str, ...], str | None]:
    """What reserve_keys takes per resource and actor: its keys, and the
    request keys without the request id (request_key_in's names). Cached:
    building them per call was ~2 us of a commit's API time."""
    partition = partition_of(resource_id, partitions)
    unscoped = request_key_in(partition, resource_id, "")
    return (resource_keys(resource_id, partitions), request_key_in(partition, resource_id, "", actor),
            waitlist_keys(resource_id, partitions), unscoped if actor else None)


RESOURCE_KEYS_GLOB = f"{KEY_PREFIX}{{p*}}:res:*"
"""SCAN pattern matching every resource hash (see `parse_resource_key`)."""
PARTITION_KEYS_GLOB = f"{KEY_PREFIX}{{p*"
"""SCAN pattern matching every key in a partition (streams included)."""
_RESOURCE_KEY = re.compile(re.escape(KEY_PREFIX) + r"\{p(\d+)\}:res:(.+)")


def parse_resource_key(key: str) -> tuple[int, str] | None:
    """(partition, resource id) of a resource hash's key; None for any other key."""
    matched = _RESOURCE_KEY.fullmatch(key)
    return (int(matched.group(1)), matched.group(2)) if matched else None


def is_stream_key(key: str) -> bool:
    return key.startswith(KEY_PREFIX + "{p") and key.endswith("}:events")


def resource_of_reservation(reservation_id: str) -> str | None:
    rid, sep, seq = reservation_id.rpartition(RESERVATION_SEP)
    return rid if sep and rid and seq.isdigit() else None


def resource_of_entry(entry_id: str) -> str | None:
    rid, sep, seq = entry_id.rpartition(ENTRY_SEP)
    return rid if sep and rid and seq.isdigit() else None
