"""A history checker in the spirit of Jepsen's set and total-order checkers.

Input: what clients saw (one Observation per request id: the final answer
they received, or None when they gave up) and the decision log (events in
decision order, from the streams or the PostgreSQL audit). Checks:
- every request id has exactly one decision in the log (replays excluded);
- every CONFIRMED a client received is in the log, with the same reservation;
- the confirmed total never exceeds capacity at any prefix of the order;
- decisions are in non-decreasing server time.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

DECISIONS = ("RESERVATION_CONFIRMED", "RESERVATION_REJECTED")


@dataclass
class Observation:
    request_id: str
    resource_id: str
    decision: str | None  # CONFIRMED, REJECTED, or None (no answer)
    reservation_id: str | None = None


@dataclass
class Report:
    requests: int = 0
    decisions: int = 0
    confirmed_seen: int = 0
    lost: list = field(default_factory=list)
    duplicated: list = field(default_factory=list)
    missing_decision: list = field(default_factory=list)
    overbooked: list = field(default_factory=list)
    time_reversals: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.missing_decision or self.overbooked
                    or self.time_reversals)

    def summary(self) -> dict:
        return {"requests": self.requests, "decisions": self.decisions,
                "confirmed_seen": self.confirmed_seen, "lost": len(self.lost),
                "duplicated": len(self.duplicated), "missing_decision": len(self.missing_decision),
                "overbooked": len(self.overbooked), "time_reversals": len(self.time_reversals)}


def check(observations: list[Observation], events: list[dict], capacity: dict[str, int]) -> Report:
    """`events`: dicts with type, request_id, resource_id, quantity, ts,
    reservation_id, in decision order (per partition is enough: a resource
    lives in one partition)."""
    report = Report(requests=len(observations))
    decided = [e for e in events if e.get("type") in DECISIONS]
    report.decisions = len(decided)
    per_request = Counter((e["resource_id"], e["request_id"]) for e in decided)
    report.duplicated = [k for k, n in per_request.items() if n > 1]
    confirmed_in_log = {(e["resource_id"], e["request_id"]): e.get("reservation_id")
                        for e in decided if e["type"] == "RESERVATION_CONFIRMED"}
    for o in observations:
        key = (o.resource_id, o.request_id)
        if o.decision is not None and per_request[key] == 0:
            report.missing_decision.append(key)
        if o.decision == "CONFIRMED":
            report.confirmed_seen += 1
            if confirmed_in_log.get(key) != o.reservation_id:
                report.lost.append(key)
    booked: Counter = Counter()
    last_ts: dict[str, int] = {}
    for e in events:
        rid = e.get("resource_id")
        if e.get("type") == "RESERVATION_CONFIRMED":
            booked[rid] += int(e["quantity"])
        elif e.get("type") == "RESERVATION_CANCELLED":
            booked[rid] -= int(e["quantity"])
        if rid in capacity and booked[rid] > capacity[rid]:
            report.overbooked.append((rid, e.get("request_id"), booked[rid]))
        if e.get("type") in DECISIONS:
            ts = int(e["ts"])
            if ts < last_ts.get(rid, 0):
                report.time_reversals.append((rid, e.get("request_id")))
            last_ts[rid] = ts
    return report
