"""The Lua library: its releases, shipped in the package, and its loading.

Each release has a number, `LIBRARY_VERSION` in the Lua. `lua/resv.lua` is
the current one; every earlier release is kept verbatim as
`lua/releases/resv_<N>.lua`, so an audit replays each event through the
library that decided it (`resv verify`, `resv restore`).

The library only moves forward: a process loads its own release over an
older one, never over a newer one, and never over other code with its own
number (docs/guarantees.md, "Upgrades").
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from pathlib import Path

from redis.asyncio import Redis

from resv.engine.errors import LibraryVersionError

LIBRARY_NAME = "resv"
_VERSION = re.compile(r"^local LIBRARY_VERSION = '([^']*)'$", re.M)
_RELEASE = re.compile(r"^resv_(\d+)\.lua$")


def _read(relative: str) -> str:
    try:
        return resources.files("resv.lua").joinpath(relative).read_text()
    except ModuleNotFoundError:  # running from a source tree that is not installed
        return (Path(__file__).resolve().parent.parent / "lua" / relative).read_text()


def version_of(source: str) -> int | None:
    """A library's release number, from its `LIBRARY_VERSION` line; None
    when it has none that is a number (not one of ours)."""
    match = _VERSION.search(source)
    return int(match.group(1)) if match and match.group(1).isdigit() else None


@cache
def library_source(version: int | None = None) -> str:
    """The source of a release (default: the current one). KeyError for a
    number this package does not ship."""
    current = _read("resv.lua")
    if version is None or version == version_of(current):
        return current
    if version not in released_versions():
        raise KeyError(f"this package does not ship Lua library version {version}")
    return _read(f"releases/resv_{version}.lua")


def library_version() -> int:
    """The current release's number."""
    version = version_of(library_source())
    assert version is not None, "lua/resv.lua has no numeric LIBRARY_VERSION"
    return version


@cache
def released_versions() -> tuple[int, ...]:
    """The earlier releases the package keeps, in order."""
    try:
        folder = resources.files("resv.lua").joinpath("releases")
        names = [item.name for item in folder.iterdir()]
    except ModuleNotFoundError:
        names = [p.name for p in (Path(__file__).resolve().parent.parent / "lua" / "releases").iterdir()]
    return tuple(sorted(int(m.group(1)) for m in map(_RELEASE.match, names) if m))


async def loaded_library(redis: Redis) -> str | None:
    """The code of the library the server runs, None when there is none."""
    listing = await redis.execute_command("FUNCTION", "LIST", "LIBRARYNAME", LIBRARY_NAME, "WITHCODE")
    for lib in listing or []:
        info = _as_dict(lib)
        if _text(info.get("library_name")) == LIBRARY_NAME:
            return _text(info.get("library_code"))
    return None


async def ensure_library(redis: Redis) -> bool:
    """Loads the current release unless the server already runs it. Returns
    True when it loaded (none loaded, or an older release: the upgrade).
    Raises LibraryVersionError, loading nothing, when the server runs a newer
    release, other code under this release's number, or a library `resv`
    that is not one of ours.

    Two processes of different releases starting together may both find an
    older library and load theirs in turn; the newer one loads it again at
    its next readiness check (Engine.library_ready), so the race cannot stick.
    """
    source = library_source()
    mine = version_of(source)
    code = await loaded_library(redis)
    if code == source:
        return False
    if code is not None:
        theirs = version_of(code)
        if theirs is None:
            raise LibraryVersionError(
                f"the server runs a Lua library named {LIBRARY_NAME!r} with no release number; "
                f"this process brings version {mine} and will not replace it (docs/guarantees.md, Upgrades)")
        if theirs > mine:
            raise LibraryVersionError(
                f"the server runs Lua library version {theirs}, newer than this process's version {mine}: "
                f"an older process never replaces a newer library; run version {theirs} or later "
                "(docs/guarantees.md, Upgrades)")
        if theirs == mine:
            raise LibraryVersionError(
                f"the server runs Lua library version {mine} with code that differs from this process's "
                f"version {mine}: a code change needs a new LIBRARY_VERSION (docs/guarantees.md, Upgrades)")
    await redis.execute_command("FUNCTION", "LOAD", "REPLACE", source)
    return True


def _as_dict(entry) -> dict:
    if isinstance(entry, dict):
        return {_text(k): v for k, v in entry.items()}
    return {_text(entry[i]): entry[i + 1] for i in range(0, len(entry), 2)}


def _text(value) -> str | None:
    return value.decode() if isinstance(value, bytes) else value
