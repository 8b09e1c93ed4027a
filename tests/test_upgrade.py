"""Library releases across an audit: decisions made by release 1 (run on a
real server here, exactly as shipped at the time) verify and restore under
the current package, each event replayed through the release that decided
it; a live upgrade keeps the state and the replay switches release between
events."""

from __future__ import annotations

from types import SimpleNamespace

import redis as sync_redis

from resv.archiver.restore import restore
from resv.archiver.verify import verify
from resv.engine import keys
from resv.engine.library import library_source, library_version
from resv.scratch import scratch_server
from tests.archiver_support import PARTITIONS, entries_added
from tests.test_restore import state_of
from tests.test_verify import every_kind_of_decision

CURRENT = str(library_version())


class Release1Process:
    """The calls a release-1 process made, with release 1's shapes: the six
    resource keys (seven for resv_reserve), no actor, no notify window. The
    same methods as the engine, so every_kind_of_decision drives it."""

    def __init__(self, engine) -> None:
        self.redis = engine.redis

    async def _fcall(self, function: str, ks: tuple, *args: str) -> SimpleNamespace:
        flat = await self.redis.execute_command("FCALL", function, len(ks), *ks, *args)
        return SimpleNamespace(**{flat[i]: flat[i + 1] for i in range(0, len(flat), 2)})

    def _keys(self, rid: str) -> tuple:
        return keys.resource_keys(rid, PARTITIONS)

    async def create_resource(self, spec) -> SimpleNamespace:
        opt = lambda v: "" if v is None else str(v)  # noqa: E731
        return await self._fcall("resv_create", self._keys(spec.resource_id), spec.resource_id, spec.type,
                                 str(spec.capacity), opt(spec.opens_at), opt(spec.closes_at),
                                 "1" if spec.waitlist_enabled else "0", opt(spec.max_per_request),
                                 opt(spec.max_per_client))

    async def reserve(self, rid: str, client: str, qty: int, request_id: str) -> SimpleNamespace:
        req = keys.request_key(rid, request_id, PARTITIONS)
        return await self._fcall("resv_reserve", (*self._keys(rid), req), rid, client, str(qty), request_id)

    async def cancel(self, reservation_id: str) -> SimpleNamespace:
        rid = keys.resource_of_reservation(reservation_id)
        return await self._fcall("resv_cancel", self._keys(rid), rid, reservation_id)

    async def join_waitlist(self, rid: str, client: str, qty: int) -> SimpleNamespace:
        return await self._fcall("resv_wl_join", self._keys(rid), rid, client, str(qty))

    async def leave_waitlist(self, entry_id: str) -> SimpleNamespace:
        rid = keys.resource_of_entry(entry_id)
        return await self._fcall("resv_wl_leave", self._keys(rid), rid, entry_id)

    async def configure(self, rid: str, version: int, changes: dict) -> SimpleNamespace:
        pairs = [x for name, value in changes.items() for x in (name, str(value))]
        return await self._fcall("resv_configure", self._keys(rid), rid, str(version), *pairs)

    async def open(self, rid: str, version: int) -> SimpleNamespace:
        return await self._fcall("resv_open", self._keys(rid), rid, str(version))

    async def close(self, rid: str, version: int) -> SimpleNamespace:
        return await self._fcall("resv_close", self._keys(rid), rid, str(version))


async def run_release_1(engine) -> None:
    """Release 1 on the server, called as a release-1 process called it."""
    await engine.redis.execute_command("FUNCTION", "LOAD", "REPLACE", library_source(1))
    assert await engine.redis.fcall_ro("resv_version", 0) == "1"
    await every_kind_of_decision(Release1Process(engine), actors=False, release=1)


async def all_events(engine) -> dict[tuple[int, str], dict[str, str]]:
    return {(p, sid): f for p in range(PARTITIONS) for sid, f in await engine.redis.xrange(f"resv:{{p{p}}}:events")}


async def lose_redis_and_restore(engine, pool, redis_url):
    sync = sync_redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        before = state_of(sync)
        sync.flushall()
        sync.execute_command("FUNCTION", "FLUSH")
        report = await restore(engine.redis, pool, PARTITIONS, scratch_server=scratch_server)
        assert report.mismatches == [], report.mismatches[:5]
        assert state_of(sync) == before
        assert sync.fcall_ro("resv_version", 0) == CURRENT  # restore leaves the current release
    finally:
        sync.close()


async def test_an_audit_written_by_release_1_verifies_and_restores(engine, make_archiver, pool, redis_url):
    await run_release_1(engine)
    logged = await all_events(engine)
    assert logged and all("lib" not in f and "actor" not in f for f in logged.values())  # release 1's events
    await (await make_archiver()).drain()

    report = await verify(engine.redis, pool, PARTITIONS, scratch_server=scratch_server)
    assert report.mismatches == [], report.mismatches[:5]
    assert report.events == sum((await entries_added(engine.redis)).values()) == len(logged)

    await lose_redis_and_restore(engine, pool, redis_url)
    assert (await verify(engine.redis, pool, PARTITIONS, scratch_server=scratch_server)).ok


async def test_a_live_upgrade_keeps_the_state_and_replays_each_release(engine, make_archiver, pool, redis_url):
    await run_release_1(engine)
    v1_events = await all_events(engine)
    # a process of the current release starts: it upgrades the library, and
    # goes on with the state release 1 wrote
    assert await engine.load_library() is True
    assert await engine.redis.fcall_ro("resv_version", 0) == CURRENT
    # release 1's records are unscoped: a retry replays them, made with an actor too (resv_reserve
    # reads the unscoped record, KEYS[11], when it holds no `lib`), so an upgrade never books twice
    assert (await engine.reserve("a", "alice", 2, "r1")).replayed
    assert (await engine.reserve("a", "alice", 2, "r1", actor="client#1")).replayed
    await engine.open("a", 3, actor="operator#1")
    got = await engine.reserve("a", "frank", 1, "u1", actor="client#1")
    assert got.confirmed
    await engine.join_waitlist("d", "gina", 1, actor="client#1")
    await engine.cancel("d~1", actor="client#1")                        # release 1's reservation
    await engine.configure("d", 2, {"capacity": 9}, actor="operator#1")
    await engine.leave_waitlist("d~w4", actor="client#1")               # release 1's entry
    later = [f for at, f in (await all_events(engine)).items() if at not in v1_events]
    assert later and {(f["lib"], "actor" in f) for f in later if f["type"] != "RESERVATION_REPLAYED"} == {
        (CURRENT, True)}

    await (await make_archiver()).drain()
    report = await verify(engine.redis, pool, PARTITIONS, scratch_server=scratch_server)
    assert report.mismatches == [], report.mismatches[:5]
    assert report.events == len(v1_events) + len(later)
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT fields->>'lib', actor, count(*) FROM events GROUP BY 1, 2 ORDER BY 1, 2")
        by_release = await cur.fetchall()
    assert {(lib, actor) for lib, actor, _ in by_release} == {
        (None, None), (CURRENT, None), (CURRENT, "client#1"), (CURRENT, "operator#1")}  # None: the unscoped retry

    await lose_redis_and_restore(engine, pool, redis_url)
    assert (await verify(engine.redis, pool, PARTITIONS, scratch_server=scratch_server)).ok

    # an event from a release this package does not ship is named, not guessed
    async with pool.connection() as conn:
        await conn.execute("UPDATE events SET fields = fields || '{\"lib\": \"99\"}' WHERE request_id = 'u1'")
    report = await verify(engine.redis, pool, PARTITIONS, scratch_server=scratch_server)
    assert any("version 99, which this package does not ship" in m.what for m in report.mismatches)
