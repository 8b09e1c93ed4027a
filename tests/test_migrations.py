"""The SQL migrations: numbered, applied once, under a lock."""

from __future__ import annotations

import asyncio
import re
from importlib import resources

import psycopg

from resv.archiver.migrate import apply_migrations, load_migrations
from resv.cli import main


def test_versions_are_unique_and_increasing() -> None:
    files = sorted(f.name for f in resources.files("resv.archiver").joinpath("migrations").iterdir()
                   if f.name.endswith(".sql"))
    assert files, "no migration shipped"
    assert all(re.fullmatch(r"\d{4}_[a-z0-9_]+\.sql", name) for name in files), files
    versions = [int(name[:4]) for name in files]
    assert len(set(versions)) == len(versions)
    assert versions == list(range(1, len(versions) + 1))
    assert [m.version for m in load_migrations()] == versions


async def test_applying_twice_is_a_no_op(empty_database: str) -> None:
    first = await apply_migrations(empty_database)
    assert [m.version for m in first] == [m.version for m in load_migrations()]
    assert await apply_migrations(empty_database) == []
    with psycopg.connect(empty_database) as conn:
        rows = conn.execute("SELECT version, name, applied_at FROM schema_migrations ORDER BY version").fetchall()
        tables = {r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'").fetchall()}
    assert [(v, n) for v, n, _ in rows] == [(m.version, m.name) for m in load_migrations()]
    assert all(applied_at is not None for _, _, applied_at in rows)
    assert {"events", "resources", "reservations", "waitlist_entries", "schema_migrations"} <= tables


async def test_concurrent_runs_apply_each_migration_once(empty_database: str) -> None:
    results = await asyncio.gather(*[apply_migrations(empty_database) for _ in range(4)])
    applied = [m.version for result in results for m in result]
    assert sorted(applied) == [m.version for m in load_migrations()]


def test_resv_migrate_command(empty_database: str, capsys) -> None:
    assert main(["migrate", "--database-url", empty_database]) == 0
    assert "applied 0001_events" in capsys.readouterr().out
    assert main(["migrate", "--database-url", empty_database]) == 0
    assert "up to date" in capsys.readouterr().out
