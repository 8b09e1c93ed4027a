"""Durability profiles: what the server must promise before the API starts.

strict  (default for `resv serve`): every write is on disk before the reply:
        `appendonly yes` and `appendfsync always`. Refuses to start otherwise.
relaxed: starts whatever the settings, with a warning naming the loss window.
See docs/guarantees.md.
"""

from __future__ import annotations

import logging

from redis.asyncio import Redis

log = logging.getLogger("resv.durability")

PROFILES = ("strict", "relaxed")


class DurabilityError(RuntimeError):
    """The server does not persist every write before replying."""


async def check_durability(redis: Redis, profile: str) -> dict[str, str]:
    if profile not in PROFILES:
        raise DurabilityError(f"RESV_DURABILITY must be one of {', '.join(PROFILES)}, got {profile!r}")
    config = {}
    for name in ("appendonly", "appendfsync"):
        reply = await redis.config_get(name)
        config[name] = str(reply.get(name, "")).lower()
    problems = []
    if config["appendonly"] != "yes":
        problems.append(f"appendonly is {config['appendonly'] or 'unset'} (needs yes)")
    if config["appendfsync"] != "always":
        problems.append(f"appendfsync is {config['appendfsync'] or 'unset'} (needs always)")
    if problems and profile == "strict":
        raise DurabilityError(
            "RESV_DURABILITY=strict: the Redis server does not persist every write before replying: "
            + "; ".join(problems)
            + ". Set `appendonly yes` and `appendfsync always` on the server, or start with "
            "RESV_DURABILITY=relaxed to accept the loss window (docs/guarantees.md)."
        )
    if problems:
        log.warning("RESV_DURABILITY=relaxed: %s; a crash may lose recent confirmations "
                    "(docs/guarantees.md)", "; ".join(problems))
    return config
