"""Restarts with AOF on (appendfsync always): confirmed reservations and the
function library survive, including a kill -9 between calls."""

from __future__ import annotations

import pytest

from resv.embedded import EmbeddedRedis
from resv.engine import Engine, ResourceSpec, Settings
from tests.conftest import BACKENDS, backend_binary


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("how", ["kill", "restart"])
async def test_confirmed_reservations_survive_restart(tmp_path, backend, how):
    with EmbeddedRedis(backend_binary(backend), data_dir=tmp_path) as server:
        settings = Settings(redis_url=server.url, partitions=16)
        async with Engine(settings) as engine:
            await engine.create_resource(ResourceSpec(resource_id="gig", type="meetup", capacity=5))
            confirmed = [await engine.reserve("gig", f"c{i}", 1, f"r{i}") for i in range(3)]
            assert all(d.confirmed for d in confirmed)
        if how == "kill":
            server.kill()  # SIGKILL: no shutdown, only what the AOF fsynced
        server.restart()
        engine = Engine(settings)  # no start(): the library must already be there
        try:
            for d in confirmed:
                got = await engine.reservation(d.reservation_id)
                assert got is not None and got.status == "CONFIRMED"
            state = await engine.resource("gig")
            assert state.reserved == 3
            replay = await engine.reserve("gig", "c0", 1, "r0")
            assert replay.replayed and replay.reservation_id == confirmed[0].reservation_id
            assert (await engine.reserve("gig", "new", 2)).confirmed
            assert (await engine.reserve("gig", "late", 1)).reason == "SOLD_OUT"
        finally:
            await engine.aclose()
