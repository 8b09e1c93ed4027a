"""The engine's errors, and the one mapping from Lua replies to them."""

from __future__ import annotations

from typing import Any

from redis import exceptions as redis_errors

from resv.engine.codes import PublicCode


class EngineError(Exception):
    """Base class. Messages are for operators' logs, never for clients."""


class BadArgument(EngineError):
    """The call was malformed; the Lua refused it before any write."""


class EngineUnavailable(EngineError):
    """The server could not be reached, timed out, or refused for lack of
    memory. For a commit, the outcome may be unknown: retry with the same
    request id, which can never book twice."""


class LibraryVersionError(EngineError):
    """The server runs a Lua library this process must not replace: a newer
    release, other code under the same release number, or not ours. Raised
    at start, before anything is loaded (docs/guarantees.md, Upgrades)."""


class EngineRefused(EngineUnavailable):
    """The engine refuses the call without sending it: its state is behind
    the audit (reads and writes), or the server lost a setting the strict
    profile requires (writes). `Engine.refusal` says why, for operators."""


class NotReplicated(EngineUnavailable):
    """The decision was made and recorded, but fewer replicas than
    RESV_WAIT_REPLICAS acknowledged it in time. `reply` is the raw decision;
    a retry with the same request id returns it."""

    def __init__(self, reply: Any, acked: Any, wanted: int) -> None:
        super().__init__(f"decision recorded but acknowledged by {acked} of {wanted} replicas")
        self.reply = reply


# One generic message per public code: clients see this, operators see reason.
PUBLIC_MESSAGES: dict[PublicCode, str] = {
    PublicCode.RESOURCE_FULL: "Not enough capacity left for this request.",
    PublicCode.RESOURCE_CLOSED: "This resource is not open for reservations.",
    PublicCode.INVALID_STATE: "This request cannot be accepted in the resource's current state.",
}

_UNAVAILABLE = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.BusyLoadingError,
    redis_errors.OutOfMemoryError,  # functions declare flags: refused before running
    redis_errors.ReadOnlyError,
    OSError,
)


def is_missing_function(exc: BaseException) -> bool:
    return isinstance(exc, redis_errors.ResponseError) and "function not found" in str(exc).lower()


def translate(exc: BaseException) -> EngineError:
    """Maps a redis-py failure to an engine error (caused by it)."""
    if isinstance(exc, EngineError):
        return exc
    error = _translated(exc)
    error.__cause__ = exc
    return error


def _translated(exc: BaseException) -> EngineError:
    if isinstance(exc, _UNAVAILABLE):
        return EngineUnavailable(f"{type(exc).__name__}: {exc}")  # class names the cause (OOM...)
    message = str(exc)
    if isinstance(exc, redis_errors.ResponseError):
        if message.startswith("BAD_ARGUMENT"):
            return BadArgument(message.removeprefix("BAD_ARGUMENT").strip())
        if message.startswith(("BUSY", "MASTERDOWN", "NOREPLICAS", "CLUSTERDOWN", "TRYAGAIN")):
            return EngineUnavailable(message)
    return EngineError(f"{type(exc).__name__}: {message}")
