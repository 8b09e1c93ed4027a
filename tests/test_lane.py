"""The engine's lane (engine/lane.py): many batches in flight on one
connection, replies matched to calls in order, and its failures
handing its calls to the retrying path without booking twice. A server that
stops answering is in tests/test_faults_engine.py (the paused server)."""

from __future__ import annotations

import asyncio

import pytest
import redis

from resv.embedded import EmbeddedRedis
from resv.engine import Engine, EngineError, EngineUnavailable, ResourceSpec, Settings
from tests.history import Observation, check
from tests.report import record
from tests.support import events, open_lane

PARTITIONS = 16


async def test_replies_reach_their_own_callers(redis_url: str) -> None:
    async with Engine(Settings(redis_url=redis_url, partitions=PARTITIONS)) as engine:
        resources = [f"order-{i}" for i in range(5)]
        for rid in resources:
            await engine.create_resource(ResourceSpec(resource_id=rid, type="t", capacity=1000))
        lane = await open_lane(engine, resources[0])
        calls = [(resources[i % 5], f"client-{i}", 1 + i % 3, f"req-{i}") for i in range(600)]
        decisions = await asyncio.gather(*[engine.reserve(*call) for call in calls])
        for (rid, client, qty, request_id), d in zip(calls, decisions):
            assert (d.resource_id, d.client_id, d.quantity, d.request_id) == (rid, client, qty, request_id)
            assert d.confirmed
        assert engine._pipe._lane is lane and lane.ready  # it carried them all
        for rid in resources:
            booked = sum(qty for r, _, qty, _ in calls if r == rid)
            assert (await engine.resource(rid)).reserved == booked


async def test_lane_lost_with_calls_in_flight_resends_them_once(redis_url: str) -> None:
    async with Engine(Settings(redis_url=redis_url, partitions=PARTITIONS)) as engine:
        await engine.create_resource(ResourceSpec(resource_id="cut", type="t", capacity=5000))
        lane = await open_lane(engine, "cut")
        # 250 batches in flight: more than the pool's connections, were each sent again alone
        calls = [asyncio.create_task(engine.reserve("cut", f"c{i}", 1, f"cut-{i}")) for i in range(2000)]
        await asyncio.sleep(0)  # the calls are made and written; the replies are not read yet
        assert not lane.idle
        lane._transport.abort()  # the connection drops with batches in flight
        decisions = await asyncio.wait_for(asyncio.gather(*calls), 10)
        assert all(d.confirmed for d in decisions)
        assert len({d.reservation_id for d in decisions}) == 2000
        assert (await engine.resource("cut")).reserved == 2000
        sync = redis.Redis.from_url(redis_url, decode_responses=True)
        log = events(sync, "cut")
        sync.close()
        confirmed = [e for e in log if e["type"] == "RESERVATION_CONFIRMED"]
        assert len(confirmed) == 2000  # a call the server ran before the cut was replayed, not rebooked
        report = check([Observation(d.request_id, "cut", d.decision, d.reservation_id) for d in decisions],
                       log, {"cut": 5000})
        s = report.summary()
        record("engine: lane connection cut with 2,000 calls in flight", faults=1, requests=s["requests"],
               decisions=s["decisions"], lost=s["lost"], duplicated=s["duplicated"], overbooked=s["overbooked"])
        assert report.ok, s
        assert await open_lane(engine, "cut") is not lane  # and a new lane took over


class RefusingTransport:
    """A transport whose writes fail (a socket closed under it)."""

    def __init__(self, transport) -> None:
        self._transport = transport

    def write(self, data: bytes) -> None:
        raise RuntimeError("transport refused the write")

    def __getattr__(self, name: str):
        return getattr(self._transport, name)


async def test_a_refused_write_sends_the_calls_the_retrying_way(redis_url: str) -> None:
    async with Engine(Settings(redis_url=redis_url, partitions=PARTITIONS)) as engine:
        await engine.create_resource(ResourceSpec(resource_id="refused", type="t", capacity=100))
        lane = await open_lane(engine, "refused")
        lane._transport = RefusingTransport(lane._transport)
        decisions = await asyncio.wait_for(
            asyncio.gather(*[engine.reserve("refused", f"c{i}", 1, f"r-{i}") for i in range(20)]), 10)
        assert all(d.confirmed for d in decisions)
        assert (await engine.resource("refused")).reserved == 20
        assert await open_lane(engine, "refused") is not lane


async def test_lane_signs_in_with_the_urls_user_and_database() -> None:
    # The default user may only PING; everything else needs the URL's user.
    acl = ["--user", "default", "on", "nopass", "-@all", "+ping",
           "--user", "booker", "on", ">s3cret", "~*", "&*", "+@all"]
    with EmbeddedRedis(extra_args=acl) as server:
        url = f"redis://booker:s3cret@127.0.0.1:{server.port}/3"
        async with Engine(Settings(redis_url=url, partitions=PARTITIONS)) as engine:
            await engine.create_resource(ResourceSpec(resource_id="acl", type="t", capacity=5))
            await open_lane(engine, "acl")
            decisions = await asyncio.gather(*[engine.reserve("acl", f"c{i}", 1, f"a{i}") for i in range(5)])
            assert all(d.confirmed for d in decisions)
        for db, expected_keys in ((3, True), (0, False)):
            admin = redis.Redis(port=server.port, username="booker", password="s3cret", db=db)
            assert (admin.dbsize() > 0) is expected_keys
            admin.close()


async def test_close_settles_every_call_then_refuses_new_ones(redis_url: str) -> None:
    engine = Engine(Settings(redis_url=redis_url, partitions=PARTITIONS))
    await engine.start()
    await engine.create_resource(ResourceSpec(resource_id="closing", type="t", capacity=1000))
    await open_lane(engine, "closing")
    calls = [asyncio.create_task(engine.reserve("closing", f"c{i}", 1, f"k-{i}")) for i in range(301)]
    await asyncio.sleep(0)  # 296 calls written, not answered; the last 5 queued for the end of the tick
    assert engine._pipe._pending and not engine._pipe._lane.idle
    await engine.aclose()
    await asyncio.sleep(0)  # the callers' tasks take their settled results
    assert all(c.done() and c.result().confirmed for c in calls)  # nothing left in flight
    with pytest.raises(EngineUnavailable, match="closed"):
        await engine.reserve("closing", "after", 1, "k-after")


async def test_a_server_push_is_not_taken_for_a_reply(redis_url: str) -> None:
    async with Engine(Settings(redis_url=redis_url, partitions=PARTITIONS)) as engine:
        await engine.create_resource(ResourceSpec(resource_id="push", type="t", capacity=10))
        lane = await open_lane(engine, "push")
        call = asyncio.create_task(engine.reserve("push", "al", 1, "p-1"))
        await asyncio.sleep(0)  # written, not answered
        lane.data_received(b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n")  # RESP3 push
        decision = await asyncio.wait_for(call, 5)
        assert decision.confirmed and decision.request_id == "p-1"
        assert engine._pipe._lane is lane and lane.ready


async def test_a_call_that_cannot_be_encoded_fails_alone(redis_url: str) -> None:
    async with Engine(Settings(redis_url=redis_url, partitions=PARTITIONS)) as engine:
        await engine.create_resource(ResourceSpec(resource_id="enc", type="t", capacity=10))
        lane = await open_lane(engine, "enc")
        clients = ["a", "b", "c", "bad\ud800", "d", "e", "f", "g"]  # a lone surrogate: no UTF-8
        results = await asyncio.gather(*[engine.reserve("enc", c, 1, f"e-{i}") for i, c in enumerate(clients)],
                                       return_exceptions=True)
        assert isinstance(results[3], EngineError)
        assert all(r.confirmed for i, r in enumerate(results) if i != 3)
        assert engine._pipe._lane is lane and lane.ready  # the lane carried on


# The default user may only PING (the fixture's readiness probe); the rest
# needs the URL's user.
ACL = ("--user", "default", "on", "nopass", "-@all", "+ping",
       "--user", "booker", "on", ">s3cret", "~*", "&*", "+@all")


async def test_lane_opens_its_own_connection_from_a_tcp_or_unix_url(tmp_path) -> None:
    sock = tmp_path / "valkey.sock"
    with EmbeddedRedis(extra_args=(*ACL, "--unixsocket", str(sock), "--unixsocketperm", "700")) as server:
        for url in (f"redis://booker:s3cret@127.0.0.1:{server.port}/2?client_name=resv-api",
                    f"unix://booker:s3cret@{sock}?db=2&client_name=resv-api"):
            async with Engine(Settings(redis_url=url, partitions=PARTITIONS)) as engine:
                await engine.create_resource(ResourceSpec(resource_id=f"n{len(url)}", type="t", capacity=5))
                lane = await open_lane(engine, f"n{len(url)}")
                decision = await engine.reserve(f"n{len(url)}", "c", 1, "r-1")
                assert decision.confirmed and engine._pipe._lane is lane
                if url.startswith("redis://"):  # find the lane's own connection on the server
                    host, port = lane._transport.get_extra_info("sockname")[:2]
                    admin = redis.Redis(port=server.port, username="booker", password="s3cret")
                    (mine,) = [c for c in admin.client_list() if c["addr"] == f"{host}:{port}"]
                    admin.close()
                    assert (mine["name"], mine["user"], mine["db"], mine["resp"]) == ("resv-api", "booker", "2", "3")
        admin = redis.Redis(port=server.port, username="booker", password="s3cret", db=2)
        assert admin.dbsize() > 0
        admin.close()


async def test_a_refused_sign_in_opens_no_lane() -> None:
    with EmbeddedRedis(extra_args=ACL) as server:
        from resv.engine.lane import Lane, Target

        target = Target.from_url(f"redis://booker:wrong@127.0.0.1:{server.port}/0")
        with pytest.raises(redis.exceptions.AuthenticationError):
            await Lane.open(target, 1.0, lambda *_: None, lambda *_: None)
        no_such_db = Target.from_url(f"redis://booker:s3cret@127.0.0.1:{server.port}/99")
        with pytest.raises(redis.exceptions.ResponseError, match="DB index"):
            await Lane.open(no_such_db, 1.0, lambda *_: None, lambda *_: None)
        admin = redis.Redis(port=server.port, username="booker", password="s3cret")
        for _ in range(200):  # the server sees the closes a moment later
            if len(admin.client_list()) == 1:
                break
            await asyncio.sleep(0.01)
        assert len(admin.client_list()) == 1  # only this one: the refused connections were closed
        admin.close()


def test_the_target_reads_the_url_as_redis_py_does() -> None:
    from resv.engine.lane import Target

    t = Target.from_url("rediss://booker:s3cret@db.example:6380/4?ssl_cert_reqs=none&client_name=api")
    assert (t.host, t.port, t.db, t.tls, t.verify, t.username, t.client_name) == (
        "db.example", 6380, 4, True, "none", "booker", "api")
    assert t.handshake() == [("HELLO", 3, "AUTH", "booker", "s3cret", "SETNAME", "api"), ("SELECT", 4)]
    context = t.ssl_context()
    assert context is not None and not context.check_hostname
    plain = Target.from_url("redis://127.0.0.1:7000")
    assert plain.ssl_context() is None and plain.handshake() == [("HELLO", 3)]
