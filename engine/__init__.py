"""resv engine: typed async Python over the Lua commits.

What other parts may use: this package's names, and the modules types
(wire types), codes (every code the Lua emits), errors, keys (the key
layout) and settings. The rest (engine, pipeline, lane, library,
durability, deployment) is the engine's own (tests/test_layering.py); the
state-loss guard's functions (deployment records, the comparison with the
audit) are exported here for the archiver and the tools.
"""

from resv.engine.deployment import (
    BEHIND,
    AuditMark,
    Deployment,
    EngineState,
    PartitionsMismatch,
    StateError,
    assess,
    check_partitions,
    check_state,
    compare_id,
    deploy,
    new_deployment_id,
    read_records,
)
from resv.engine.cluster import open_client
from resv.engine.durability import STRICT_SETTINGS, DurabilityError
from resv.engine.engine import AuditMarks, Engine, Refusal
from resv.engine.errors import (
    PUBLIC_MESSAGES,
    BadArgument,
    EngineError,
    EngineRefused,
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
    WaitingList,
    WaitlistEntry,
)

__all__ = [
    "open_client",
    "BEHIND",
    "PUBLIC_MESSAGES",
    "STRICT_SETTINGS",
    "AuditMark",
    "AuditMarks",
    "Deployment",
    "EngineRefused",
    "EngineState",
    "PartitionsMismatch",
    "Refusal",
    "StateError",
    "assess",
    "check_partitions",
    "check_state",
    "compare_id",
    "deploy",
    "new_deployment_id",
    "read_records",
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
    "WaitingList",
    "WaitlistEntry",
    "ensure_library",
    "library_source",
    "library_version",
]
