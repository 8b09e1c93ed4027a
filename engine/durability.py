"""Durability profiles: what the server must promise for the API to write.

strict  (default for `resv serve`): every acknowledged write survives a crash
        and is never evicted. The server must run with
          appendonly yes                 the AOF is on
          appendfsync always             fsynced before the reply
          no-appendfsync-on-rewrite no   ... also during an AOF rewrite
          maxmemory-policy noeviction    no key is ever evicted (an evicted
                                         reservation, or idempotency record
                                         under volatile-*, books twice)
        Checked before anything is written to the server, again whenever the
        process meets a server it has not checked, and every
        RESV_DURABILITY_CHECK_S. A server that refuses CONFIG GET cannot be
        checked: strict refuses it.
relaxed: starts whatever the settings, with a warning naming the loss window.
See docs/guarantees.md.
"""

from __future__ import annotations

import logging

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger("resv.durability")

PROFILES = ("strict", "relaxed")

STRICT_SETTINGS = {
    "appendonly": "yes",
    "appendfsync": "always",
    "no-appendfsync-on-rewrite": "no",
    "maxmemory-policy": "noeviction",
}
"""Every server setting the strict profile requires, and its value."""


class DurabilityError(RuntimeError):
    """The server does not (or cannot be shown to) persist every write before
    replying and keep it."""


def durability_problems(config: dict[str, str]) -> list[str]:
    """One phrase per setting the strict profile does not get, naming it."""
    return [f"{name} is {config.get(name) or 'unset'} (needs {wanted})"
            for name, wanted in STRICT_SETTINGS.items() if config.get(name) != wanted]


async def read_durability(redis: Redis) -> dict[str, str]:
    """The settings of STRICT_SETTINGS, in one CONFIG GET. Raises
    DurabilityError when the server refuses CONFIG (managed services)."""
    try:
        reply = await redis.config_get(*STRICT_SETTINGS)
    except (RedisConnectionError, RedisTimeoutError):
        raise
    except ResponseError as exc:
        raise DurabilityError(
            f"RESV_DURABILITY=strict: the server refuses CONFIG GET ({exc}), so its persistence "
            "settings cannot be checked. If the provider guarantees every write is fsynced before "
            "the reply and never evicted, say so with RESV_DURABILITY=relaxed, which accepts the "
            "loss window of docs/guarantees.md (up to ~1 s of confirmations with appendfsync everysec)."
        ) from exc
    return {name: str(reply.get(name, "")).lower() for name in STRICT_SETTINGS}


async def check_durability(redis: Redis, profile: str) -> dict[str, str]:
    if profile not in PROFILES:
        raise DurabilityError(f"RESV_DURABILITY must be one of {', '.join(PROFILES)}, got {profile!r}")
    try:
        config = await read_durability(redis)
    except DurabilityError:
        if profile == "strict":
            raise
        log.warning("RESV_DURABILITY=relaxed: the server refuses CONFIG GET; its persistence is "
                    "unchecked (docs/guarantees.md)")
        return {}
    problems = durability_problems(config)
    if problems and profile == "strict":
        raise DurabilityError(
            "RESV_DURABILITY=strict: the Redis server may lose or evict acknowledged writes: "
            + "; ".join(problems)
            + ". Set " + ", ".join(f"`{k} {v}`" for k, v in STRICT_SETTINGS.items())
            + " on the server, or start with RESV_DURABILITY=relaxed to accept the loss window "
            "(docs/guarantees.md)."
        )
    if problems:
        log.warning("RESV_DURABILITY=relaxed: %s; a crash may lose recent confirmations "
                    "(docs/guarantees.md)", "; ".join(problems))
    return config
