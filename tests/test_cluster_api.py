"""The HTTP API on a Redis Cluster (the session cluster: 3 primaries, one
replica each): the operator reads (/ops, /ready's archiver lag) find every
partition on the primary holding it, and a second API with another
RESV_PARTITIONS refuses to start."""

from __future__ import annotations

import subprocess
import sys

from resv.embedded import free_port
from resv.engine import Engine
from resv.engine.keys import partition_of
from resv.engine.settings import CLUSTER_PARTITIONS
from resv.engine.settings import Settings as EngineSettings
from litestar.testing import AsyncTestClient

from resv.api.app import create_app
from tests.api_support import CL, OP, create_resource, settings as api_settings
from tests.cluster_support import shards_taken, spread_ids, stream_lengths
from tests.procs import ROOT, resv_env


async def test_ops_and_the_archiver_lag_read_every_shard(redis_cluster, redis_cluster_url):
    # RESV_PARTITIONS unset: the engine and the audit reader both take the cluster's default
    settings = EngineSettings.from_env({"REDIS_URL": redis_cluster_url})
    rids = spread_ids("ops", 6, CLUSTER_PARTITIONS)
    assert set(shards_taken(rids, CLUSTER_PARTITIONS)) == {0, 1, 2}
    app = create_app(api_settings(redis_cluster_url, engine=settings))
    async with AsyncTestClient(app, raise_server_exceptions=False) as client:
        for rid in rids:
            await create_resource(client, rid, capacity=5)
            for n in range(3):
                r = await client.post("/reservations", headers={**CL, "Idempotency-Key": f"{rid}-k{n}"},
                                      json={"resource_id": rid, "quantity": 1, "client_id": f"c{n}"})
                assert r.status_code == 201, r.text

        for rid in rids:
            page = (await client.get(f"/ops/resources/{rid}/timeline", headers=OP)).json()
            assert [e["type"] for e in page["events"]] == ["RESOURCE_CREATED"] + ["RESERVATION_CONFIRMED"] * 3
            assert {e["partition"] for e in page["events"]} == {partition_of(rid, CLUSTER_PARTITIONS)}

            # no resource given: the request is looked for in every partition, on every primary
            found = await client.get(f"/ops/requests/{rid}-k1", headers=OP)
            assert found.status_code == 200, found.text
            [decision] = found.json()["decisions"]
            assert (decision["partition"], decision["position"]) == (partition_of(rid, CLUSTER_PARTITIONS), 3)

        ready = await client.get("/ready", headers=OP)
        assert ready.status_code == 200, ready.text
        lag = ready.json()["archiver_lag"]
    # no archiver ran: every entry of every stream is behind the audit
    assert lag is not None and lag["entries"] == sum(stream_lengths(redis_cluster, CLUSTER_PARTITIONS).values())
    assert lag["entries"] == len(rids) * 4


def serve_exits(url: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "resv", "serve", "--host", "127.0.0.1", "--port", str(free_port())],
        cwd=ROOT, env=resv_env(url, **env), capture_output=True, text=True, timeout=60)


async def test_a_second_api_with_another_partition_count_refuses_to_start(redis_cluster_url):
    # the first deployment: the cluster default, recorded in every partition
    async with Engine(EngineSettings.from_env({"REDIS_URL": redis_cluster_url})) as first:
        assert first.cluster and first.settings.partitions == CLUSTER_PARTITIONS
        assert await first.check_guard(None) is None
    done = serve_exits(redis_cluster_url, RESV_PARTITIONS="64")
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"RESV_PARTITIONS is 64 but this deployment was created with {CLUSTER_PARTITIONS} partitions" \
        in done.stderr, done.stderr[-2000:]


async def test_the_cluster_default_refuses_a_deployment_made_with_16(redis_cluster_url):
    """The single server's default (16) written on a cluster, then an API
    with RESV_PARTITIONS unset (the cluster's default, 256)."""
    async with Engine(EngineSettings.from_env({"REDIS_URL": redis_cluster_url, "RESV_PARTITIONS": "16"})) as first:
        assert await first.check_guard(None) is None
    done = serve_exits(redis_cluster_url)
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"RESV_PARTITIONS is {CLUSTER_PARTITIONS} but this deployment was created with 16 partitions" \
        in done.stderr, done.stderr[-2000:]


async def test_the_audit_reader_opens_its_client_when_redis_comes_back():
    from resv.archiver.reads import AuditReader
    from resv.embedded import EmbeddedRedis

    port = free_port()
    url = f"redis://127.0.0.1:{port}"
    reader = await AuditReader.open(url, None, EngineSettings(redis_url=url, partitions=4), timeout_s=0.5)
    try:
        try:
            await reader.lag()
        except Exception as exc:  # noqa: BLE001 - nothing listens yet
            assert "Connect" in type(exc).__name__ or isinstance(exc, OSError), exc
        else:
            raise AssertionError("read a server that is not there")
        with EmbeddedRedis(port=port):
            assert await reader.lag() == {p: {"entries": 0, "seconds": 0.0} for p in range(4)}
    finally:
        await reader.aclose()
