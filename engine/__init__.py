"""resv engine: typed async Python over the Lua commits.

What other parts may use: this package's names, and the modules types
(wire types), codes (every code the Lua emits), errors, keys (the key
layout), limits (the Lua's bounds, read from it) and settings. The rest
(engine, pipeline, lane, library, durability) is the engine's own
(tests/test_layering.py).
"""

from resv.engine.codes import EventType, Outcome, PublicCode, Reason
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
    Cancellation,
    CancelRejected,
    CancelReplayed,
    CreateDecision,
    Decision,
    DecisionBase,
    Event,
    JoinDecision,
    LeaveDecision,
    Reservation,
    ReservationCancelled,
    ReservationConfirmed,
    ReservationDecision,
    ReservationRejected,
    Resource,
    ResourceCreated,
    ResourceRejected,
    ResourceSpec,
    RulesChanged,
    RulesDecision,
    RulesRejected,
    WaitlistEntry,
    WaitlistJoined,
    WaitlistJoinReplayed,
    WaitlistLeaveRejected,
    WaitlistLeaveReplayed,
    WaitlistLeft,
    WaitlistRejected,
)

__all__ = [
    "PUBLIC_MESSAGES",
    "BadArgument",
    "CancelRejected",
    "CancelReplayed",
    "Cancellation",
    "CreateDecision",
    "Decision",
    "DecisionBase",
    "DurabilityError",
    "Engine",
    "EngineError",
    "EngineUnavailable",
    "Event",
    "EventType",
    "JoinDecision",
    "LeaveDecision",
    "LibraryVersionError",
    "NotReplicated",
    "Outcome",
    "PublicCode",
    "Reason",
    "Reservation",
    "ReservationCancelled",
    "ReservationConfirmed",
    "ReservationDecision",
    "ReservationRejected",
    "Resource",
    "ResourceCreated",
    "ResourceRejected",
    "ResourceSpec",
    "RulesChanged",
    "RulesDecision",
    "RulesRejected",
    "Settings",
    "WaitlistEntry",
    "WaitlistJoinReplayed",
    "WaitlistJoined",
    "WaitlistLeaveRejected",
    "WaitlistLeaveReplayed",
    "WaitlistLeft",
    "WaitlistRejected",
    "ensure_library",
    "library_source",
    "library_version",
]
