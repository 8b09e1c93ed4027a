"""Packaging: one import package `resv`, with lua/ as `resv.lua` and the
migrations inside `resv.archiver`."""

from __future__ import annotations

import importlib.resources
import importlib.util
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SOURCES = ["pyproject.toml", "resv", "engine", "api", "archiver", "notifier", "lua"]


def test_every_subpackage_is_listed() -> None:
    # The package list is explicit (auto-discovery cannot express the
    # lua/ -> engine.lua mapping), so a new subpackage must be added by hand.
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    mapped = PYPROJECT["tool"]["setuptools"]["package-dir"]
    for package, folder in mapped.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder).parts
            name = ".".join((package, *rel))
            assert name in listed, f"add {name!r} to [tool.setuptools] packages"
    assert set(mapped) == {"resv", "resv.engine", "resv.api", "resv.archiver", "resv.notifier", "resv.lua"}


def test_resources_resolve_from_the_import_system() -> None:
    lua = importlib.resources.files("resv.lua").joinpath("resv.lua")
    if (ROOT / "lua" / "resv.lua").exists():
        assert lua.read_text() == (ROOT / "lua" / "resv.lua").read_text()
    assert importlib.resources.files("resv.archiver").joinpath("migrations").is_dir()


def _setuptools_has_bdist_wheel() -> bool:
    if importlib.util.find_spec("setuptools") is None:
        return False
    from importlib.metadata import version

    major, minor = (int(x) for x in version("setuptools").split(".")[:2])
    return (major, minor) >= (70, 1)


@pytest.mark.skipif(
    not _setuptools_has_bdist_wheel(), reason="needs setuptools>=70.1 (the test extra)"
)
def test_wheel_contains_lua_and_migrations(tmp_path: Path) -> None:
    # Build from a copy: an in-tree build would leave build/ and *.egg-info behind.
    src = tmp_path / "src"
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            src.mkdir(exist_ok=True)
            shutil.copy(path, src / name)
    (src / "lua" / "resv.lua").touch()  # no-op when the real library is there
    (src / "archiver" / "migrations" / "9999_probe.sql").write_text("SELECT 1;\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
         "--no-build-isolation", "--wheel-dir", str(tmp_path / "dist"), str(src)],
        check=True,
    )
    (wheel,) = (tmp_path / "dist").glob("resv-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"resv/lua/__init__.py", "resv/lua/resv.lua", "resv/lua/releases/resv_1.lua",
            "resv/archiver/migrations/9999_probe.sql",
            "resv/engine/engine.py", "resv/api/app.py", "resv/embedded.py", "resv/cli.py",
            # the console's templates and assets ship inside the package (no CDN)
            "resv/api/console/templates/resource.html", "resv/api/console/static/console.css",
            "resv/api/console/static/console.js"} <= names
    from resv.api.docs import REDOC_VERSION  # the OpenAPI page's assets, served from the package
    assert f"resv/api/static/redoc-{REDOC_VERSION}/redoc.standalone.js" in names
    # One top-level import package: nothing else that an application's own
    # `api` or `engine` module could shadow or be shadowed by.
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"resv"}, tops
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "resv = resv.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
