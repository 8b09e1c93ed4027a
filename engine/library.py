"""The Lua library: its source, shipped in the package, and its loading."""

from __future__ import annotations

from functools import cache
from importlib import resources
from pathlib import Path

from redis.asyncio import Redis

LIBRARY_NAME = "resv"


@cache
def library_source() -> str:
    try:
        return resources.files("resv.lua").joinpath("resv.lua").read_text()
    except ModuleNotFoundError:  # running from a source tree that is not installed
        return (Path(__file__).resolve().parent.parent / "lua" / "resv.lua").read_text()


async def ensure_library(redis: Redis) -> bool:
    """Loads the library unless the server already runs this exact code.
    Returns True when it (re)loaded. Safe to race: FUNCTION LOAD is atomic."""
    source = library_source()
    listing = await redis.execute_command("FUNCTION", "LIST", "LIBRARYNAME", LIBRARY_NAME, "WITHCODE")
    for lib in listing or []:
        info = _as_dict(lib)
        if _text(info.get("library_name")) == LIBRARY_NAME and _text(info.get("library_code")) == source:
            return False
    await redis.execute_command("FUNCTION", "LOAD", "REPLACE", source)
    return True


def _as_dict(entry) -> dict:
    if isinstance(entry, dict):
        return {_text(k): v for k, v in entry.items()}
    return {_text(entry[i]): entry[i + 1] for i in range(0, len(entry), 2)}


def _text(value) -> str | None:
    return value.decode() if isinstance(value, bytes) else value
