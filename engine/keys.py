"""Key names. Every key one call touches shares its partition's hash tag.

A resource maps to partition crc32(resource_id) mod RESV_PARTITIONS; the
partition count is fixed for a deployment (changing it moves resources to
other tags). Reservation and entry ids carry their resource id, so a cancel
or a leave finds its keys without a lookup.
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


def resource_keys_in(partition: int, resource_id: str) -> tuple[str, str, str, str, str, str]:
    """The six keys every resource call takes, in the Lua contract's order,
    in a given partition (replay and verify use the logged one)."""
    p = prefix(partition)
    return (
        f"{p}res:{resource_id}",
        f"{p}bk:{resource_id}",
        f"{p}cl:{resource_id}",
        f"{p}wl:{resource_id}",
        f"{p}we:{resource_id}",
        f"{p}events",
    )


def request_key_in(partition: int, resource_id: str, request_id: str) -> str:
    """resv_reserve's idempotency record (KEYS[7]) in a given partition."""
    return f"{prefix(partition)}req:{resource_id}:{request_id}"


# Cached: every call needs them, and a resource takes many calls.
@lru_cache(maxsize=4096)
def resource_keys(resource_id: str, partitions: int) -> tuple[str, str, str, str, str, str]:
    """The six resource keys, in the resource's partition."""
    return resource_keys_in(partition_of(resource_id, partitions), resource_id)


def request_key(resource_id: str, request_id: str, partitions: int) -> str:
    return request_key_in(partition_of(resource_id, partitions), resource_id, request_id)


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
