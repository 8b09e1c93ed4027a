"""resv engine: typed async Python over the Lua commits.

What other parts may use: this package's names, and the modules types
(wire types), codes (every code the Lua emits), errors, keys (the key
layout) and settings. The rest (engine, pipeline, lane, library,
durability) is the engine's own (tests/test_layering.py).
"""

from resv.engine.durability import DurabilityError
from resv.engine.engine import Engine
from resv.engine.errors import (
    PUBLIC_MESSAGES,
    BadArgument,
    EngineError,
    EngineUnavailable,
    LibraryVersionError,
    NotReplicated,
)
from resv.engine.library import ensure_library, library_source, library_version
from resv.engine.settings import Settings
from resv.engine.types import (
    Decision,
    Event,
    Reservation,
    Resource,
    ResourceSpec,
    WaitlistEntry,
)

__all__ = [
    "PUBLIC_MESSAGES",
    "BadArgument",
    "Decision",
    "DurabilityError",
    "Engine",
    "EngineError",
    "EngineUnavailable",
    "Event",
    "LibraryVersionError",
    "NotReplicated",
    "Reservation",
    "Resource",
    "ResourceSpec",
    "Settings",
    "WaitlistEntry",
    "ensure_library",
    "library_source",
    "library_version",
]
