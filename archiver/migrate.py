"""`resv migrate`: applies the numbered SQL files of archiver/migrations.

Files are `NNNN_name.sql`, applied in version order, each in its own
transaction together with its row in `schema_migrations`. The whole run holds
a session advisory lock, so archivers starting together apply each migration
once; a second run applies nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from importlib import resources

import msgspec
import psycopg

from resv.archiver.settings import ArchiverSettings

ADVISORY_LOCK_KEY = 0x7265_7376_6D69_67  # "resvmig": one lock for all resv migrations

_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


class Migration(msgspec.Struct, frozen=True):
    version: int
    name: str
    sql: str


def load_migrations() -> list[Migration]:
    """The shipped migrations, by version. Refuses a file that does not follow
    the naming rule and two files with the same version."""
    found: dict[int, Migration] = {}
    for item in resources.files("resv.archiver").joinpath("migrations").iterdir():
        if not item.name.endswith(".sql"):
            continue
        match = _FILE_NAME.match(item.name)
        if not match:
            raise ValueError(f"migration file {item.name!r} is not named NNNN_name.sql")
        version = int(match.group(1))
        if version in found:
            raise ValueError(f"two migrations with version {version}: {found[version].name}, {match.group(2)}")
        found[version] = Migration(version, match.group(2), item.read_text())
    return [found[v] for v in sorted(found)]


async def apply_migrations(database_url: str) -> list[Migration]:
    """Applies what is missing; returns what this call applied."""
    applied: list[Migration] = []
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_LOCK_KEY,))
        try:
            await conn.execute(_VERSION_TABLE)
            cur = await conn.execute("SELECT version FROM schema_migrations")
            done = {row[0] for row in await cur.fetchall()}
            for migration in load_migrations():
                if migration.version in done:
                    continue
                async with conn.transaction():
                    await conn.execute(migration.sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                        (migration.version, migration.name),
                    )
                applied.append(migration)
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (ADVISORY_LOCK_KEY,))
    return applied


# ------------------------------------------------------------------ command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database-url", help="PostgreSQL URL (default: $DATABASE_URL)")


def run(args: argparse.Namespace) -> int:
    url = args.database_url or ArchiverSettings.from_env().database_url
    if not url:
        print("resv migrate: set DATABASE_URL or pass --database-url", file=sys.stderr)
        return 2
    applied = asyncio.run(apply_migrations(url))
    for m in applied:
        print(f"applied {m.version:04d}_{m.name}")
    if not applied:
        print("schema is up to date")
    return 0
