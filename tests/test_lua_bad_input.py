"""Malformed calls at the function level: an error reply naming the argument,
and not a single write (the keyspace, streams included, is unchanged)."""

from __future__ import annotations

import pytest
import redis

from resv.engine import keys
from resv.engine.library import library_source
from tests.support import PARTITIONS, create, rkeys, snapshot, wkeys

GOOD_REQ = keys.request_key("r1", "q", PARTITIONS)


@pytest.fixture
def r(redis_url: str):
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.execute_command("FUNCTION", "LOAD", "REPLACE", library_source())
    create(client, "r1", 5, waitlist=True)
    yield client
    client.close()


def call(r, fn, ks, *args):
    return r.execute_command("FCALL", fn, len(ks), *ks, *args)


K = rkeys("r1")
W = wkeys("r1")
KW = K + W  # a write call's keys
# another resource in another partition: other keys, another hash slot
OTHER = next(rkeys(f"o{i}") for i in range(100) if rkeys(f"o{i}")[5] != rkeys("r1")[5])

CASES = [
    ("resv_reserve", K + [GOOD_REQ] + W, ["r1", "al", "0", "q"], "quantity"),
    ("resv_reserve", K + [GOOD_REQ] + W, ["r1", "al", "-3", "q"], "quantity"),
    ("resv_reserve", K + [GOOD_REQ] + W, ["r1", "al", "1.5", "q"], "quantity"),
    ("resv_reserve", K + [GOOD_REQ] + W, ["r1", "al", "1e3", "q"], "quantity"),
    ("resv_reserve", K + [GOOD_REQ] + W, ["r1", "al", "99999999999999999999", "q"], "quantity"),
    ("resv_reserve", K + [GOOD_REQ] + W, ["r1", "al", "nan", "q"], "quantity"),
    ("resv_reserve", K + [GOOD_REQ] + W, ["r1", "al", "", "q"], "quantity"),
    ("resv_reserve", K + [GOOD_REQ] + W, ["r1", "", "1", "q"], "client_id"),
    ("resv_reserve", K + [GOOD_REQ] + W, ["r1", "x" * 129, "1", "q"], "client_id"),
    ("resv_reserve", K + [GOOD_REQ] + W, ["r1", "a b", "1", "q"], "client_id"),
    ("resv_reserve", K + [GOOD_REQ] + W, ["r1", "a\x00b", "1", "q"], "client_id"),
    ("resv_reserve", K + [GOOD_REQ] + W, ["r1", "al", "1", "other"], "KEYS[7]"),
    ("resv_reserve", K + [GOOD_REQ] + W, ["r1", "al", "1"], "arguments"),
    ("resv_reserve", K + [GOOD_REQ] + W, ["r1", "al", "1", "q", "abc"], "ttl"),
    ("resv_reserve", K, ["r1", "al", "1", "q"], "keys"),
    ("resv_reserve", OTHER + [GOOD_REQ] + W, ["r1", "al", "1", "q"], "KEYS[1]"),
    ("resv_reserve", K[:5] + [OTHER[5], GOOD_REQ] + W, ["r1", "al", "1", "q"], "KEYS[6]"),
    ("resv_reserve", K + [GOOD_REQ] + W, ["", "al", "1", "q"], "resource_id"),
    ("resv_reserve", K + [GOOD_REQ] + W, ["r1~1", "al", "1", "q"], "resource_id"),
    ("resv_reserve", ["res:r1"] + K[1:] + [GOOD_REQ] + W, ["r1", "al", "1", "q"], "KEYS[1]"),
    ("resv_create", KW, ["r1", "t", "-1", "", "", "0", "", ""], "capacity"),
    ("resv_create", KW, ["r1", "t", "1", "", "", "maybe", "", ""], "waitlist_enabled"),
    ("resv_create", KW, ["r1", "t", "1", "5", "4", "0", "", ""], "opens_at"),
    ("resv_create", KW, ["r1", "t", "1", "", "", "0", "0", ""], "max_per_request"),
    ("resv_create", KW, ["r1", "", "1", "", "", "0", "", ""], "type"),
    ("resv_create", KW, ["r1", "t", "1"], "arguments"),
    ("resv_configure", KW, ["r1", "1", "capacity"], "pairs"),
    ("resv_configure", KW, ["r1", "1"], "pairs"),
    ("resv_configure", KW, ["r1", "x", "capacity", "3"], "expected_version"),
    ("resv_configure", KW, ["r1", "1", "colour", "red"], "unknown rule"),
    ("resv_configure", KW, ["r1", "1", "capacity", "3", "state", "HALF"], "state"),
    ("resv_configure", KW, ["r1", "1", "opens_at", "9", "closes_at", "3"], "opens_at"),
    ("resv_open", KW, ["r1"], "arguments"),
    ("resv_cancel", KW, ["r1"], "arguments"),
    ("resv_cancel", KW, ["r1", ""], "reservation_id"),
    ("resv_wl_join", KW, ["r1", "al", "0"], "quantity"),
    ("resv_wl_join", KW, ["r1", "al"], "arguments"),
    ("resv_wl_leave", KW, ["r1", "\xff\xfe"], "entry_id"),
    ("resv_resource", K[:3], ["r1"], "keys"),
    # the waiting-list keys: every write call checks them against the resource
    ("resv_reserve", K + [GOOD_REQ] + W[:2], ["r1", "al", "1", "q"], "keys"),
    ("resv_reserve", K + [GOOD_REQ] + [W[1], W[0], W[2]], ["r1", "al", "1", "q"], "KEYS[8]"),
    ("resv_cancel", K + W[:2] + [OTHER[5].replace("events", "notified")], ["r1", "r1~1"], "KEYS[9]"),
    ("resv_wl_join", K + wkeys("r2"), ["r1", "al", "1"], "KEYS[7]"),
    ("resv_wl_join", K, ["r1", "al", "1"], "keys"),
    # the notify window rule
    ("resv_create", KW, ["r1", "t", "1", "", "", "1", "", "", "", "0"], "notify_window_ms"),
    ("resv_create", KW, ["r1", "t", "1", "", "", "1", "", "", "", "-5"], "notify_window_ms"),
    ("resv_create", KW, ["r1", "t", "1", "", "", "1", "", "", "", "2592000001"], "notify_window_ms"),
    ("resv_create", KW, ["r1", "t", "1", "", "", "1", "", "", "", "1.5"], "notify_window_ms"),
    ("resv_create", KW, ["r1", "t", "1", "", "", "1", "", "", "", "", "x"], "arguments"),
    ("resv_configure", KW, ["r1", "1", "notify_window_ms", "0"], "notify_window_ms"),
    ("resv_configure", KW, ["r1", "1", "notify_window_ms", "soon"], "notify_window_ms"),
    ("resv_configure", KW, ["r1", "1", "capacity", "3", "notify_window_ms", "1e3"], "notify_window_ms"),
    # the sweep
    ("resv_wl_sweep", K, ["r1"], "keys"),
    ("resv_wl_sweep", KW, [], "resource_id"),
    ("resv_wl_sweep", KW, ["r1", "a:b"], "actor"),
    ("resv_wl_sweep", KW, ["r1", "ops", "more"], "argument"),
    ("resv_wl_sweep", KW, ["r1~w1"], "resource_id"),
    ("resv_wl_sweep", rkeys("r2") + W, ["r1"], "KEYS[1]"),
    ("resv_wl_sweep", K + wkeys("r2"), ["r1"], "KEYS[7]"),
    # the optional actor (trailing ARGV; a pair in resv_configure)
    ("resv_create", KW, ["r1", "t", "1", "", "", "0", "", "", "a:b"], "actor"),
    ("resv_create", KW, ["r1", "t", "1", "", "", "0", "", "", "ops", "", "more"], "arguments"),
    ("resv_configure", KW, ["r1", "1", "capacity", "3", "actor", "a b"], "actor"),
    ("resv_configure", KW, ["r1", "1", "actor", "ops", "capacity", "3", "actor", "ops"], "actor given twice"),
    ("resv_configure", KW, ["r1", "1", "actor", "ops"], "at least one rule"),
    ("resv_open", KW, ["r1", "1", "x" * 65], "actor"),
    ("resv_close", KW, ["r1", "1", "ops", "more"], "arguments"),
    ("resv_reserve", K + [GOOD_REQ] + W, ["r1", "al", "1", "q", "", "client:1"], "actor"),
    ("resv_reserve", K + [GOOD_REQ] + W, ["r1", "al", "1", "q", "", "a\x00b"], "actor"),
    ("resv_reserve", K + [GOOD_REQ] + W, ["r1", "al", "1", "q", "", "ops", "more"], "arguments"),
    ("resv_cancel", KW, ["r1", "r1~1", "\xe9"], "actor"),
    ("resv_wl_join", KW, ["r1", "al", "1", "a b"], "actor"),
    ("resv_wl_leave", KW, ["r1", "r1~w1", ":"], "actor"),
    ("resv_waitlist", K, ["r1", "0"], "arguments"),
    ("resv_waitlist", K, ["r1", "-1", "10"], "offset"),
    ("resv_waitlist", K, ["r1", "0", "0"], "count"),
    ("resv_waitlist", K, ["r1", "0", "1001"], "count"),
]


@pytest.mark.parametrize("fn, ks, args, mentions", CASES)
def test_malformed_call_is_refused_without_any_write(r, fn, ks, args, mentions):
    before = snapshot(r)
    with pytest.raises(redis.ResponseError) as err:
        call(r, fn, ks, *args)
    message = str(err.value)
    assert message.startswith("BAD_ARGUMENT"), message
    assert mentions in message
    assert snapshot(r) == before


def test_binary_garbage_arguments(r):
    before = snapshot(r)
    for junk in (b"\x00", b"\xff" * 300, b"\n\r", "é".encode()):
        with pytest.raises(redis.ResponseError):
            call(r, "resv_reserve", K + [GOOD_REQ] + W, "r1", junk, "1", "q")
        with pytest.raises(redis.ResponseError):
            call(r, "resv_wl_join", K, "r1", "al", junk)
    assert snapshot(r) == before
