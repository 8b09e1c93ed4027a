"""The deployment record (lua resv_deploy) and the comparison of the engine
state with the audit (engine/deployment.py), on a real server."""

from __future__ import annotations

import pytest
import redis
from redis.asyncio import Redis

from resv.engine import AuditMark, PartitionsMismatch, assess, check_state, read_records
from resv.engine.library import library_source
from tests.support import as_dict, snapshot

KEY = "resv:{p3}:deployment"


@pytest.fixture
def r(redis_url):
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.execute_command("FUNCTION", "LOAD", "REPLACE", library_source())
    yield client
    client.close()


def deploy(r, *args, key=KEY):
    return as_dict(r.execute_command("FCALL", "resv_deploy", 1, key, *args))


def test_resv_deploy_writes_once_and_replaces_only_when_asked(r):
    first = deploy(r, "dep-a", "16", "")
    assert (first["deployment_id"], first["partitions"], first["written"]) == ("dep-a", "16", "1")
    again = deploy(r, "dep-b", "16", "")
    assert again == {**first, "written": "0"}  # the first one stays, unchanged
    assert r.hget(KEY, "deployment_id") == "dep-a"
    replaced = deploy(r, "dep-b", "16", "replace")
    assert replaced["deployment_id"] == "dep-b" and replaced["written"] == "1"
    assert r.xlen("resv:{p3}:events") == 0  # not a decision: no event


@pytest.mark.parametrize(("key", "args", "named"), [
    (KEY, ("dep", "16"), "expected 3 arguments"),
    ("resv:{p3}:res:x", ("dep", "16", ""), "KEYS[1]"),
    (KEY, ("bad id", "16", ""), "deployment_id"),
    (KEY, ("dep", "0", ""), "partitions"),
    (KEY, ("dep", "3", ""), "beyond partitions"),
    (KEY, ("dep", "16", "overwrite"), "mode"),
])
def test_resv_deploy_refuses_a_malformed_call_and_writes_nothing(r, key, args, named):
    before = snapshot(r)
    with pytest.raises(redis.ResponseError) as err:
        deploy(r, *args, key=key)
    assert str(err.value).startswith("BAD_ARGUMENT") and named in str(err.value)
    assert snapshot(r) == before


async def test_a_fresh_server_gets_one_deployment_and_a_second_check_changes_nothing(redis_url):
    async with Redis.from_url(redis_url, decode_responses=True) as a:
        state = await check_state(a, 4, {})
        assert state.written == [0, 1, 2, 3] and state.problem is None
        again = await check_state(a, 4, {})
        assert again.written == [] and again.deployment_id == state.deployment_id
        with pytest.raises(PartitionsMismatch, match="RESV_PARTITIONS is 8 but .* created with 4"):
            await check_state(a, 8, {})


async def test_the_comparison(redis_url):
    async with Redis.from_url(redis_url, decode_responses=True) as a:
        records, last_ids = await read_records(a, 2)
        assert records == {0: None, 1: None} and last_ids == {0: None, 1: None}
        mark = {0: AuditMark("5-0", "dep")}
        # an empty server under an audit: behind, nothing written
        state = await check_state(a, 2, mark)
        assert state.problem and sorted(state.behind) == [0, 1] and await a.keys("*") == []
        # the audit cannot be read: missing records are not written either
        state = await check_state(a, 2, None, audit_unreadable="OperationalError")
        assert "cannot be read" in state.problem and await a.keys("*") == []
        # an audit older than deployment records, streams not behind: adopted
        await a.xadd("resv:{p0}:events", {"type": "X"}, id="5-0")
        state = await check_state(a, 2, {0: AuditMark("5-0", None)})
        assert state.problem is None and state.written == [0, 1]
        records, last_ids = await read_records(a, 2)
        assert last_ids == {0: "5-0", 1: None}
        # a record of another deployment than the audit's is behind
        assert assess(records, last_ids, {0: AuditMark("5-0", "other")}, 2).behind.keys() == {0}
        # a stream that generated less than the audit holds is behind
        assert assess(records, last_ids, {0: AuditMark("6-0", None)}, 2).behind.keys() == {0}
        # a record missing while the audit is not empty is behind
        await a.delete("resv:{p1}:deployment")
        records, last_ids = await read_records(a, 2)
        dep = records[0].deployment_id
        assert assess(records, last_ids, {0: AuditMark("5-0", dep)}, 2).behind.keys() == {1}
