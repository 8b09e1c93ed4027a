"""The history checker must catch what it claims to catch."""

from tests.history import Observation, check


def ev(t, rq, q=1, ts=1, rid="r", res=None):
    return {"type": t, "request_id": rq, "quantity": str(q), "ts": str(ts), "resource_id": rid,
            "reservation_id": res}


def test_clean_history_passes():
    events = [ev("RESERVATION_CONFIRMED", "a", ts=1, res="r~1"), ev("RESERVATION_REJECTED", "b", ts=2),
              ev("RESERVATION_REPLAYED", "a", ts=3)]
    obs = [Observation("a", "r", "CONFIRMED", "r~1"), Observation("b", "r", "REJECTED"),
           Observation("c", "r", None)]
    report = check(obs, events, {"r": 1})
    assert report.ok, report.summary()


def test_each_anomaly_is_reported():
    events = [ev("RESERVATION_CONFIRMED", "a", ts=5, res="r~1"), ev("RESERVATION_CONFIRMED", "b", ts=4, res="r~2"),
              ev("RESERVATION_CONFIRMED", "b", ts=6, res="r~3")]
    obs = [Observation("a", "r", "CONFIRMED", "r~1"), Observation("x", "r", "CONFIRMED", "r~9"),
           Observation("y", "r", "REJECTED")]
    s = check(obs, events, {"r": 2}).summary()
    assert s["lost"] == 1 and s["duplicated"] == 1 and s["overbooked"] == 1
    assert s["time_reversals"] == 1 and s["missing_decision"] == 2
