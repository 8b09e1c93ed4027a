"""The state-loss guard, end to end on real servers and real processes: the
scenario of issue 15 (a demo-like run, then the Redis data lost) must never
sell again what was confirmed before the loss.

`resv serve` and `resv archiver` run as processes on an embedded Valkey whose
AOF is deleted while they run; `resv verify`, `resv restore` run as the
operator would run them (docs/guarantees.md, recovery)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time

import httpx
import pytest
import redis

from resv.embedded import EmbeddedRedis
from tests.procs import CLIENT_KEY, OPERATOR_KEY, ROOT, resv_env, resv_serve

pytestmark = pytest.mark.slow

OP = {"Authorization": f"Bearer {OPERATOR_KEY}"}
CL = {"Authorization": f"Bearer {CLIENT_KEY}"}
BEHIND = "engine state is behind the audit: run `resv restore`"


def eventually(probe, what: str, timeout: float = 30.0):
    """probe() until it returns something truthy (no sleep-and-assert: the
    wait ends as soon as the condition holds)."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.1)


def resv(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "resv", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=180)


def test_a_redis_that_lost_its_data_sells_nothing_twice(database_url, tmp_path):
    data = tmp_path / "redis"
    with EmbeddedRedis(data_dir=data) as server:
        env = resv_env(server.url, DATABASE_URL=database_url, RESV_DURABILITY_CHECK_S="0.5",
                       RESV_ARCHIVER_INTERVAL_MS="50", RESV_ARCHIVER_MAX_BACKOFF_S="0.5")
        archiver_log = tmp_path / "archiver.log"
        with open(archiver_log, "wb") as out:
            archiver = subprocess.Popen([sys.executable, "-m", "resv", "archiver"], env=env, cwd=ROOT,
                                        stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            with resv_serve(server.url, DATABASE_URL=database_url, RESV_DURABILITY_CHECK_S="0.5") as base:
                http = httpx.Client(base_url=base, timeout=10)
                # the demo's steps: a meetup, sold out
                for rid, capacity in (("meetup-1", 3), ("room-2", 5)):
                    assert http.post("/resources", headers=OP, json={
                        "resource_id": rid, "type": "meetup", "capacity": capacity}).status_code == 201
                sold = {}
                for n in range(3):
                    r = http.post("/reservations", headers={**CL, "Idempotency-Key": f"order-{n}"},
                                  json={"resource_id": "meetup-1", "quantity": 1, "client_id": f"c{n}"})
                    assert r.status_code == 201, r.text
                    sold[f"order-{n}"] = r.json()["reservation_id"]
                eventually(lambda: _archived(database_url) >= 5, "the archiver archived the demo")

                # the Redis data is lost: the server dies, its AOF is deleted,
                # it comes back empty on the same port
                server.kill()
                shutil.rmtree(data / "appendonlydir")
                server.restart()
                sync = redis.Redis.from_url(server.url, decode_responses=True)

                def refused() -> bool:
                    r = http.post("/reservations", headers={**CL, "Idempotency-Key": "after-loss-1"},
                                  json={"resource_id": "meetup-1", "quantity": 1, "client_id": "late"})
                    return r.status_code == 503 and r.json() == {"error": "UNAVAILABLE"}

                eventually(refused, "writes answer 503 after the loss")
                # a lost resource cannot be re-created, nor read, nor its availability
                again = http.post("/resources", headers=OP, json={
                    "resource_id": "meetup-1", "type": "meetup", "capacity": 3})
                assert again.status_code == 503 and again.json() == {"error": "UNAVAILABLE"}
                assert http.get("/resources/meetup-1", headers=OP).status_code == 503
                assert http.get("/availability", params={"resource_id": "meetup-1"}, headers=CL).status_code == 503
                ready = http.get("/ready", headers=OP)
                assert ready.status_code == 503
                assert ready.json()["checks"]["state"] == "down"
                assert any(BEHIND in p for p in ready.json()["problems"])
                metrics = http.get("/metrics", headers=OP).text
                assert "resv_engine_state_behind_audit 1.0" in metrics

                # the archiver refuses and creates nothing: no stream, no group
                eventually(lambda: "refusing to archive" in archiver_log.read_text(), "the archiver refuses")
                assert BEHIND in archiver_log.read_text()
                assert sync.keys("resv:*") == []

                # verify compares the whole audit: the lost partitions, exit 1
                verified = resv("verify", env=env)
                assert verified.returncode == 1, verified.stdout + verified.stderr
                assert BEHIND in verified.stdout and "(partitions " in verified.stdout
                assert "in the log, absent from live Redis" in verified.stdout

                # the documented recovery: restore into that server, verify
                restored = resv("restore", env=env)
                assert restored.returncode == 0, restored.stdout + restored.stderr
                verified = resv("verify", env=env)
                assert verified.returncode == 0, verified.stdout + verified.stderr

                # the running API and archiver resume on their own
                eventually(lambda: http.get("/ready", headers=OP).status_code == 200, "/ready is 200 again")
                eventually(lambda: "archiving again" in archiver_log.read_text(), "the archiver resumes")
                # nothing confirmed before the loss is sold again
                late = http.post("/reservations", headers={**CL, "Idempotency-Key": "after-restore-1"},
                                 json={"resource_id": "meetup-1", "quantity": 1, "client_id": "late"})
                assert late.status_code == 409 and late.json()["code"] == "RESOURCE_FULL", late.text
                for key, reservation_id in sold.items():
                    retry = http.post("/reservations", headers={**CL, "Idempotency-Key": key},
                                      json={"resource_id": "meetup-1", "quantity": 1,
                                            "client_id": f"c{key[-1]}"})
                    assert retry.status_code == 201 and retry.json()["reservation_id"] == reservation_id
                other = http.post("/reservations", headers={**CL, "Idempotency-Key": "room-1"},
                                  json={"resource_id": "room-2", "quantity": 2, "client_id": "new"})
                assert other.status_code == 201, other.text
                assert http.get("/resources/meetup-1", headers=OP).json()["reserved"] == 3
                eventually(lambda: resv("verify", env=env).returncode == 0, "verify agrees after new writes")
                sync.close()
                http.close()
        finally:
            archiver.terminate()
            archiver.wait(15)


def _archived(database_url: str) -> int:
    import psycopg

    with psycopg.connect(database_url) as conn:
        return conn.execute("SELECT count(*) FROM events").fetchone()[0]


def test_a_process_with_another_partition_count_refuses_to_start(database_url):
    with EmbeddedRedis() as server:
        with resv_serve(server.url, DATABASE_URL=database_url):  # records 16 partitions
            pass
        env = resv_env(server.url, DATABASE_URL=database_url, RESV_PARTITIONS="8")
        served = resv("serve", "--port", "1", env=env)
        assert served.returncode == 2
        assert "RESV_PARTITIONS is 8" in served.stderr and "created with 16 partitions" in served.stderr
        archived = resv("archiver", env=env)
        assert archived.returncode == 2 and "RESV_PARTITIONS is 8" in archived.stderr
        verified = resv("verify", env=env)
        assert verified.returncode == 2 and "created with 16 partitions" in verified.stderr
        restored = resv("restore", env=env)
        assert restored.returncode == 2 and "RESV_PARTITIONS is 8" in restored.stderr


def test_start_over_is_explicit_and_recorded(database_url):
    import psycopg

    with EmbeddedRedis() as server:
        env = resv_env(server.url, DATABASE_URL=database_url)
        with resv_serve(server.url, DATABASE_URL=database_url) as base:
            with httpx.Client(base_url=base, timeout=10) as http:
                assert http.post("/resources", headers=OP, json={
                    "resource_id": "old", "type": "meetup", "capacity": 1}).status_code == 201
        assert resv("archiver", "--once", env=env).returncode == 0
        sync = redis.Redis.from_url(server.url, decode_responses=True)
        old_id = sync.hget("resv:{p0}:deployment", "deployment_id")
        sync.flushall()  # lost
        refused = resv("archiver", "--once", env=env)
        assert refused.returncode == 1 and BEHIND in refused.stderr
        assert sync.keys("*") == []

        assert resv("start-over", env=env).returncode == 2  # needs --yes
        assert sync.keys("*") == []
        done = resv("start-over", "--yes", "--reason", "test data", env=env)
        assert done.returncode == 0, done.stderr
        with psycopg.connect(database_url) as conn:
            row = conn.execute("SELECT deployment_id, replaced, reason FROM start_overs").fetchone()
        assert row[1] == old_id and row[2] == "test data"
        assert sync.hget("resv:{p0}:deployment", "deployment_id") == row[0] != old_id
        # a new deployment: the old resource is gone, new work archives and verifies
        with resv_serve(server.url, DATABASE_URL=database_url) as base:
            with httpx.Client(base_url=base, timeout=10) as http:
                assert http.get("/resources/old", headers=OP).status_code == 404
                assert http.post("/resources", headers=OP, json={
                    "resource_id": "old", "type": "meetup", "capacity": 1}).status_code == 201
        assert resv("archiver", "--once", env=env).returncode == 0
        verified = resv("verify", env=env)
        assert verified.returncode == 0, verified.stdout + verified.stderr
        with psycopg.connect(database_url) as conn:
            assert conn.execute("SELECT count(*) FROM events WHERE resource_id = 'old'").fetchone()[0] == 2
        sync.close()
