"""The parts import downwards only (resv/__init__.py): read from the source
with ast, so an import hidden in a function or behind importlib counts too."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PARTS = {"engine": "resv.engine", "api": "resv.api", "archiver": "resv.archiver", "notifier": "resv.notifier"}
COMPOSITION = ("resv.cli", "resv.commands", "resv.embedded", "resv.embedded_pg", "resv.embedded_cluster", "resv.scratch", "resv.demo")
ENGINE_PUBLIC = {"resv.engine", "resv.engine.types", "resv.engine.codes", "resv.engine.errors",
                 "resv.engine.keys", "resv.engine.limits", "resv.engine.settings"}


def imported(path: Path) -> set[str]:
    """Every module name the file imports, plus every dotted `resv.` string
    (importlib.import_module, app factory paths)."""
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names |= set(re.findall(r"\bresv(?:\.[a-z_]+)+", node.value))
    return names


def sources(part: str) -> list[Path]:
    return sorted((ROOT / part).rglob("*.py"))


def under(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_the_rules_see_every_kind_of_import(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("import importlib\n"
                     "def f():\n    from resv.api import app\n"
                     "    importlib.import_module('resv.archiver.drain')\n")
    assert {"resv.api", "resv.archiver.drain"} <= imported(probe)


@pytest.mark.parametrize("path", sources("engine"), ids=lambda p: p.name)
def test_engine_imports_no_other_part(path: Path) -> None:
    bad = {n for n in imported(path)
           if under(n, "resv.api") or under(n, "resv.archiver") or under(n, "resv.notifier")
           or any(under(n, c) for c in COMPOSITION)}
    assert not bad, f"{path.name} imports {bad}"


@pytest.mark.parametrize("path", sources("archiver"), ids=lambda p: p.name)
def test_archiver_imports_neither_the_api_nor_engine_internals(path: Path) -> None:
    names = imported(path)
    assert not {n for n in names if under(n, "resv.api") or under(n, "resv.notifier")
                or any(under(n, c) for c in COMPOSITION)}
    internals = {n for n in names if under(n, "resv.engine") and not _engine_public(n)}
    assert not internals, f"{path.name} reaches engine internals {internals}"


@pytest.mark.parametrize("path", sources("notifier"), ids=lambda p: p.name)
def test_notifier_imports_neither_the_api_nor_engine_internals(path: Path) -> None:
    """The notifier works from the audit: it may use the archiver (pools,
    migrations, the NOTIFY channel) and the engine's public modules."""
    names = imported(path)
    assert not {n for n in names if under(n, "resv.api") or any(under(n, c) for c in COMPOSITION)}
    internals = {n for n in names if under(n, "resv.engine") and not _engine_public(n)}
    assert not internals, f"{path.name} reaches engine internals {internals}"


@pytest.mark.parametrize("path", sources("api"), ids=lambda p: p.name)
def test_api_reads_the_archiver_through_its_read_side_only(path: Path) -> None:
    names = imported(path)
    archiver = {n for n in names if under(n, "resv.archiver") and not under(n, "resv.archiver.reads")}
    assert not archiver, f"{path.name} imports {archiver}"
    notifier = {n for n in names if under(n, "resv.notifier") and not under(n, "resv.notifier.manage")}
    assert not notifier, f"{path.name} reaches the notifier past resv.notifier.manage: {notifier}"
    assert not {n for n in names if any(under(n, c) for c in COMPOSITION)}
    internals = {n for n in names if under(n, "resv.engine") and not _engine_public(n)}
    assert not internals, f"{path.name} reaches engine internals {internals}"


@pytest.mark.parametrize("path", sources("api") + sources("archiver") + sources("notifier"), ids=lambda p: p.name)
def test_no_part_reaches_into_the_engines_connections(path: Path) -> None:
    text = path.read_text()
    assert not re.search(r"engine\.(redis|_\w+)\b", text), f"{path.name} uses the engine's internals"


def _engine_public(name: str) -> bool:
    # `from resv.engine.types import Decision` lists both the module and the name
    return name in ENGINE_PUBLIC or name.rpartition(".")[0] in ENGINE_PUBLIC
