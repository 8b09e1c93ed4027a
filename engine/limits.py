"""The Lua's limits, read from the Lua.

lua/resv.lua is the only rule book: it declares its bounds once, as
`local MAX_... = <integer>` lines at its top, and every part that checks a
value before calling it (the HTTP API's schemas, the replay) takes the bound
from here, so an HTTP client and an ops script calling FCALL are held to the
same numbers. Read when this module is imported; a missing constant fails
the import rather than letting a stale copy drift.
"""

from __future__ import annotations

import re

from resv.engine.library import library_source


def _constants(source: str) -> dict[str, int]:
    return {m.group(1): int(m.group(2))
            for m in re.finditer(r"^local ([A-Z_]+) = (\d+)\b", source, flags=re.MULTILINE)}


_LUA = _constants(library_source())


def _lua(name: str) -> int:
    try:
        return _LUA[name]
    except KeyError:
        raise ImportError(f"lua/resv.lua declares no `local {name} = <integer>`") from None


MAX_INT = _lua("MAX_INT")
"""Capacity, quantities, per-request and per-client limits: 0/1..MAX_INT."""
MAX_TIME = _lua("MAX_TIME")
"""opens_at / closes_at, microseconds since the epoch: 0..MAX_TIME."""
MAX_ID = _lua("MAX_ID")
"""Client, request, reservation and entry ids: 1..MAX_ID printable ASCII characters, no space."""
MAX_RESOURCE_ID = _lua("MAX_RESOURCE_ID")
"""Resource ids: 1..MAX_RESOURCE_ID characters of [A-Za-z0-9_.-]."""
MAX_TYPE = _lua("MAX_TYPE")
"""Resource types: 1..MAX_TYPE printable ASCII characters, no space."""
MAX_ACTOR = _lua("MAX_ACTOR")
"""Actors (who asked): 1..MAX_ACTOR printable ASCII characters, no ':' or space."""
DEFAULT_IDEMPOTENCY_TTL_MS = _lua("DEFAULT_IDEMPOTENCY_TTL_MS")
MAX_IDEMPOTENCY_TTL_MS = _lua("MAX_IDEMPOTENCY_TTL_MS")
"""The longest idempotency ttl resv_reserve accepts."""

PRINTABLE = "!-~"
"""The Lua's `[\\33-\\126]`: printable ASCII without space, as a regex range."""
RESOURCE_ID_CHARS = "A-Za-z0-9_.-"
"""The Lua's `[%w_.%-]` (C locale: %w is ASCII letters and digits)."""
