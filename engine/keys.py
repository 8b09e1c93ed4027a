"""Key names. Every key one call touches shares its partition's hash tag.

A resource maps to partition crc32(resource_id) mod RESV_PARTITIONS; the
partition count is fixed for a deployment (changing it moves resources to
other tags). Reservation and entry ids carry their resource id, so a cancel
or a leave finds its keys without a lookup.
"""

from __future__ import annotations

import zlib
from functools import lru_cache

RESERVATION_SEP = "~"
ENTRY_SEP = "~w"


def partition_of(resource_id: str, partitions: int) -> int:
    return zlib.crc32(resource_id.encode()) % partitions


def prefix(partition: int) -> str:
    return f"resv:{{p{partition}}}:"


def stream_key(partition: int) -> str:
    return prefix(partition) + "events"


# Cached: every call needs them, and a resource takes many calls.
@lru_cache(maxsize=4096)
def resource_prefix(resource_id: str, partitions: int) -> str:
    return prefix(partition_of(resource_id, partitions))


@lru_cache(maxsize=4096)
def resource_keys(resource_id: str, partitions: int) -> tuple[str, str, str, str, str, str]:
    """The six keys every resource call takes, in the Lua contract's order."""
    p = resource_prefix(resource_id, partitions)
    return (
        f"{p}res:{resource_id}",
        f"{p}bk:{resource_id}",
        f"{p}cl:{resource_id}",
        f"{p}wl:{resource_id}",
        f"{p}we:{resource_id}",
        f"{p}events",
    )


def request_key(resource_id: str, request_id: str, partitions: int, actor: str | None = None) -> str:
    """The idempotency record of a reservation request. With an actor (the
    API passes its key id), request ids are scoped to it: two applications'
    equal Idempotency-Keys never meet. Without, the scope is the resource
    alone (ops scripts calling the Lua directly)."""
    scope = f"{actor}:" if actor else ""
    return f"{resource_prefix(resource_id, partitions)}req:{resource_id}:{scope}{request_id}"


def request_key_at(partition: int, resource_id: str, request_id: str, actor: str | None = None) -> str:
    """`request_key` in a given partition (a logged one, for replay)."""
    scope = f"{actor}:" if actor else ""
    return f"{prefix(partition)}req:{resource_id}:{scope}{request_id}"


def resource_of_reservation(reservation_id: str) -> str | None:
    rid, sep, seq = reservation_id.rpartition(RESERVATION_SEP)
    return rid if sep and rid and seq.isdigit() else None


def resource_of_entry(entry_id: str) -> str | None:
    rid, sep, seq = entry_id.rpartition(ENTRY_SEP)
    return rid if sep and rid and seq.isdigit() else None
