"""Each entry point's reply decodes into the Struct of its shape, on a real
server: the class says which fields a decision has."""

from __future__ import annotations

import pytest

from resv.engine import (
    CancelRejected,
    CancelReplayed,
    Engine,
    EventType,
    ReservationCancelled,
    ReservationConfirmed,
    ReservationRejected,
    ResourceCreated,
    ResourceRejected,
    ResourceSpec,
    RulesChanged,
    RulesRejected,
    Settings,
    WaitlistJoined,
    WaitlistJoinReplayed,
    WaitlistLeaveRejected,
    WaitlistLeaveReplayed,
    WaitlistLeft,
    WaitlistRejected,
)
from resv.engine.codes import Outcome, PublicCode, Reason
from resv.engine.types import ReplyDecoder, UnexpectedReply


@pytest.fixture
async def engine(redis_url):
    async with Engine(Settings(redis_url=redis_url)) as e:
        yield e


async def test_every_entry_point_decodes_into_its_shape(engine):
    spec = ResourceSpec(resource_id="gig", type="meetup", capacity=2, waitlist_enabled=True)
    created = await engine.create_resource(spec)
    assert isinstance(created, ResourceCreated) and created.type == EventType.RESOURCE_CREATED
    assert (created.version, created.remaining, created.capacity, created.state, created.waitlist_enabled) == (
        1, 2, 2, "OPEN", True)
    again = await engine.create_resource(spec)
    assert isinstance(again, ResourceRejected) and again.reason == Reason.ALREADY_EXISTS

    changed = await engine.configure("gig", 1, {"max_per_request": 2})
    assert isinstance(changed, RulesChanged) and (changed.version, changed.max_per_request) == (2, 2)
    stale = await engine.configure("gig", 1, {"capacity": 3})
    assert isinstance(stale, RulesRejected) and (stale.reason, stale.expected_version) == (
        Reason.VERSION_MISMATCH, 1)
    assert stale.requested == '["capacity","3"]'

    confirmed = await engine.reserve("gig", "ann", 2, "q1")
    assert isinstance(confirmed, ReservationConfirmed) and not confirmed.replayed
    assert confirmed.reservation_id == "gig~1" and confirmed.idempotency_ttl_ms == 86_400_000
    retried = await engine.reserve("gig", "ann", 2, "q1")
    assert isinstance(retried, ReservationConfirmed) and retried.replayed
    assert retried.reservation_id == confirmed.reservation_id and retried.ts == confirmed.ts
    full = await engine.reserve("gig", "bob", 1, "q2")
    assert isinstance(full, ReservationRejected)
    assert (full.decision, full.code, full.reason, full.remaining) == (
        Outcome.REJECTED, PublicCode.RESOURCE_FULL, Reason.SOLD_OUT, 0)

    joined = await engine.join_waitlist("gig", "bob", 1)
    assert type(joined) is WaitlistJoined and joined.created and (joined.status, joined.position) == ("WAITING", 1)
    rejoined = await engine.join_waitlist("gig", "bob", 1)
    assert isinstance(rejoined, WaitlistJoinReplayed) and not rejoined.created
    assert rejoined.entry_id == joined.entry_id
    too_many = await engine.join_waitlist("gig", "cy", 3)
    assert isinstance(too_many, WaitlistRejected) and too_many.reason == Reason.OVER_REQUEST_LIMIT

    cancelled = await engine.cancel(confirmed.reservation_id)
    assert type(cancelled) is ReservationCancelled and cancelled.status == "CANCELLED"
    assert cancelled.confirmed_at == confirmed.ts and cancelled.cancelled_at == cancelled.ts
    assert isinstance(await engine.cancel(confirmed.reservation_id), CancelReplayed)
    unknown = await engine.cancel("gig~9")
    assert isinstance(unknown, CancelRejected) and unknown.reason == Reason.UNKNOWN_RESERVATION

    left = await engine.leave_waitlist(joined.entry_id)
    assert type(left) is WaitlistLeft and left.status == "LEFT" and left.position is None
    assert isinstance(await engine.leave_waitlist(joined.entry_id), WaitlistLeaveReplayed)
    nobody = await engine.leave_waitlist("gig~w9")
    assert isinstance(nobody, WaitlistLeaveRejected) and nobody.reason == Reason.UNKNOWN_ENTRY

    closed = await engine.close("gig", 2)
    assert isinstance(closed, RulesChanged) and closed.state == "CLOSED"


def test_a_reply_of_another_shape_is_refused():
    decode = ReplyDecoder(ReservationConfirmed, ReservationRejected)
    cancel_reply = ["type", "CANCEL_REJECTED", "decision", "REJECTED", "code", "INVALID_STATE",
                    "reason", "UNKNOWN_RESERVATION", "resource_id", "gig", "reservation_id", "gig~1", "ts", "1"]
    with pytest.raises(UnexpectedReply):
        decode(cancel_reply)
    assert isinstance(ReplyDecoder(CancelRejected)(cancel_reply), CancelRejected)
