"""resv engine: typed async Python over the Lua commits."""

from engine.engine import Engine
from engine.durability import DurabilityError
from engine.errors import BadArgument, EngineError, EngineUnavailable, NotReplicated, PUBLIC_MESSAGES
from engine.settings import Settings
from engine.types import Decision, Event, Reservation, Resource, ResourceSpec, WaitlistEntry

__all__ = [
    "BadArgument",
    "Decision",
    "DurabilityError",
    "NotReplicated",
    "Engine",
    "EngineError",
    "EngineUnavailable",
    "Event",
    "PUBLIC_MESSAGES",
    "Reservation",
    "Resource",
    "ResourceSpec",
    "Settings",
    "WaitlistEntry",
]
