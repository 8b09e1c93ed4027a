"""`resv demo --cluster`: a temporary local Valkey cluster from the same
binary, and the whole product on it (API, archiver, notifier); Ctrl-C
stops everything and leaves no server behind."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from resv.embedded import free_port
from tests.procs import API_KEYS, CLIENT_KEY, OPERATOR_KEY, ROOT

pytestmark = pytest.mark.slow

OP = {"Authorization": f"Bearer {OPERATOR_KEY}"}
CL = {"Authorization": f"Bearer {CLIENT_KEY}"}


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_resv_demo_cluster(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    env.update(RESV_API_KEYS=API_KEYS, PYTHONPATH=str(ROOT))
    port = free_port()
    out = tmp_path / "demo.out"
    with open(out, "wb") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "resv", "demo", "--cluster", "--port", str(port),
                                 "--data-dir", str(tmp_path / "data")],
                                cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while "resv is running." not in out.read_text(errors="replace"):
            assert proc.poll() is None, out.read_text()[-3000:]
            assert time.monotonic() < deadline, out.read_text()[-3000:]
            time.sleep(0.2)
        text = out.read_text()
        ports = [int(p) for p in re.search(r"primaries on 127\.0\.0\.1 ports (\d+), (\d+), (\d+)", text).groups()]
        assert len(ports) == 3 and all(listening(p) for p in ports)
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=30) as http:
            assert http.post("/resources", headers=OP, json={
                "resource_id": "meetup-1", "type": "meetup", "capacity": 20}).status_code == 201
            r = http.post("/reservations", headers={**CL, "Idempotency-Key": "order-1"},
                          json={"resource_id": "meetup-1", "quantity": 2, "client_id": "alice"})
            assert r.status_code == 201, r.text
            # the archiver drains the cluster's streams into the demo's PostgreSQL
            deadline = time.monotonic() + 60
            while True:
                ready = http.get("/ready", headers=OP)
                body = ready.json()
                if ready.status_code == 200 and body["archiver_lag"]["entries"] == 0:
                    break
                assert time.monotonic() < deadline, body
                time.sleep(0.3)
            assert body["checks"]["audit"] == "up"
            events = http.get("/ops/resources/meetup-1/timeline", headers=OP).json()["events"]
            assert [e["type"] for e in events] == ["RESOURCE_CREATED", "RESERVATION_CONFIRMED"]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole group
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    assert proc.returncode == 0, out.read_text()[-3000:]
    assert not any(listening(p) for p in ports)
