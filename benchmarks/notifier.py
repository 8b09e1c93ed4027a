"""`make bench-notifier`: webhooks, drained from a backlog and under a steady
decision rate.

Starts an embedded Valkey (no AOF: the CPU path, like bench-api) and
PostgreSQL, then `resv serve`, `resv archiver` (default interval), and a
`resv listen` receiver, all as separate processes, and registers the
receiver for `reservation.confirmed`. Each round:

1. backlog: with the notifier (`resv notifier`) stopped
   (SIGSTOP), wrk sends POST /reservations as fast as it can for --backlog
   seconds; once the archiver has created every delivery row, the notifier
   goes on (SIGCONT), and the receiver's rate from its first receipt to its
   last is the notifier's deliveries/s to a local receiver;
2. steady: for each rate of --rates, wrk offers POST /reservations at that
   rate for --duration seconds (a paced schedule over 64 connections: each
   request takes the next 1/rate slot, slots missed by more than 100 ms are
   dropped rather than sent in a burst), then up to --drain seconds for the
   deliveries still queued. Commit-to-receipt latency: the receiver's clock
   at receipt minus the decision's server time (the body's `timestamp`),
   over every decision of that row, the queued ones included.

Both for each RESV_WEBHOOK_CONCURRENCY of --concurrency (a notifier each).

"sent" counts the answers wrk saw; the requests in flight when it stops
still commit, so a few more may be received. Figures are medians over
--rounds rounds ("retried": deliveries that took more than one attempt, over
all rounds). Notifier (and receiver) CPU per delivery is that
process's utime+stime (/proc) over the deliveries it made (received).

    python -m benchmarks.notifier [--rates 1000,50] [--concurrency 4,16] [--duration 10] [--drain 120]
                                  [--backlog 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import datetime
from pathlib import Path

import psycopg

from resv.embedded import EmbeddedRedis, free_port
from resv.embedded_pg import EmbeddedPostgres

OPERATOR_KEY = "bench-operator"
CLIENT_KEY = "bench-client"
CONNECTIONS = 64

# wrk's LuaJIT has the FFI: the schedule needs a clock finer than os.time().
WRK_SCRIPT = r"""
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } resv_timespec;
int clock_gettime(int clk_id, resv_timespec *tp);
]]
local ts = ffi.new("resv_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, ts)  -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end
local counter = 0
local next_id = 0
local due = nil
function setup(thread) next_id = next_id + 1; thread:set("tid", next_id) end
function init(args)
  interval = 1000 / tonumber(args[1])
  headers = {["Authorization"] = "Bearer " .. args[2], ["Content-Type"] = "application/json"}
  prefix = args[3]
end
function delay()
  local now = now_ms()
  if due == nil or due < now - 100 then due = now end
  due = due + interval
  return math.max(0, math.floor(due - now))
end
function request()
  counter = counter + 1
  local body = string.format('{"resource_id":"bench","quantity":1,"client_id":"%s%d-%d"}', prefix, tid, counter)
  return wrk.format("POST", nil, headers, body)
end
function done(summary, latency, requests)
  io.write(string.format('WRKJSON {"requests": %d, "duration_us": %d, "non2xx": %d, "errors": %d}\n',
    summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
"""


def _call(base: str, method: str, path: str, body: dict | None = None) -> dict:
    request = urllib.request.Request(base + path, method=method, data=json.dumps(body).encode() if body else None,
                                     headers={"Authorization": f"Bearer {OPERATOR_KEY}",
                                              "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read() or b"{}")


def _wait(url: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


class Stack:
    """The processes of one run and what the receiver got."""

    def __init__(self, wrk: str, tmp: Path) -> None:
        self.wrk, self.tmp = wrk, tmp
        self.receipts: list[tuple[float, float]] = []  # (receipt time, decision time)
        self.lock = threading.Lock()
        self.procs: list[subprocess.Popen] = []
        self.script = tmp / "bench.lua"
        self.script.write_text(WRK_SCRIPT)
        self.loads = 0

    def start(self, redis: EmbeddedRedis, pg: EmbeddedPostgres) -> None:
        port, hook_port = free_port(), free_port()
        self.database_url = pg.url
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RESV_")}
        self.env.update(REDIS_URL=redis.url, DATABASE_URL=pg.url, RESV_DURABILITY="relaxed",
                        RESV_API_KEYS=f"operator:{OPERATOR_KEY},client:{CLIENT_KEY}", RESV_WEBHOOK_ALLOW_PRIVATE="1")
        self.cli = [sys.executable, "-m", "resv"]
        self.logs = open(self.tmp / "procs.log", "w")
        subprocess.run([*self.cli, "migrate"], env=self.env, stdout=self.logs, stderr=self.logs, timeout=60, check=True)
        self.procs = [subprocess.Popen([*self.cli, name, *extra], env=self.env, stdout=self.logs, stderr=self.logs)
                      for name, extra in (("serve", ["--host", "127.0.0.1", "--port", str(port)]), ("archiver", []))]
        self.base = f"http://127.0.0.1:{port}"
        _wait(self.base + "/health")
        _call(self.base, "POST", "/resources", {"resource_id": "bench", "type": "meetup", "capacity": 10**9})
        hook = _call(self.base, "POST", "/webhooks", {"url": f"http://127.0.0.1:{hook_port}/",
                                                      "event_types": ["reservation.confirmed"]})
        listener = subprocess.Popen([*self.cli, "listen", "--port", str(hook_port), "--secret", hook["secret"]],
                                    env=self.env, stdout=subprocess.PIPE, stderr=self.logs, text=True)
        self.procs.append(listener)
        self.listener = listener
        threading.Thread(target=self._read, args=(listener,), daemon=True).start()
        self.notifier: subprocess.Popen | None = None

    def start_notifier(self, concurrency: int) -> None:
        """(Re)starts the notifier, last in procs."""
        if self.notifier is not None:
            self.notifier.terminate()
            self.notifier.wait(30)
            self.procs.remove(self.notifier)
        self.notifier = subprocess.Popen([*self.cli, "notifier"], env={**self.env,
                                         "RESV_WEBHOOK_CONCURRENCY": str(concurrency)},
                                         stdout=self.logs, stderr=self.logs)
        self.procs.append(self.notifier)
        time.sleep(2.0)

    def _read(self, listener: subprocess.Popen) -> None:
        for line in listener.stdout:  # type: ignore[union-attr]
            now = time.time()
            decided = datetime.fromisoformat(json.loads(line)["timestamp"].replace("Z", "+00:00")).timestamp()
            with self.lock:
                self.receipts.append((now, decided))

    def received(self, since: float = 0.0) -> list[tuple[float, float]]:
        """Receipts of the decisions made from `since` on."""
        with self.lock:
            return [r for r in self.receipts if r[1] >= since]

    def load(self, rate: float, seconds: int) -> tuple[int, float, float]:
        """wrk at `rate` (0: as fast as it goes); (confirmed, started, ended)."""
        self.loads += 1
        started = time.time()
        out = subprocess.run([self.wrk, "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "-s", str(self.script),
                              self.base + "/reservations", "--", str(rate or 10**7), CLIENT_KEY, f"l{self.loads}-"],
                             capture_output=True, text=True, check=True).stdout
        ended = time.time()
        summary = json.loads(out.split("WRKJSON ", 1)[1].splitlines()[0])
        return summary["requests"] - summary["non2xx"], started, ended

    def retried(self, since: float) -> int:
        """Deliveries of the decisions from `since` on that took more than one attempt."""
        with psycopg.connect(self.database_url) as conn:
            return conn.execute("SELECT count(*) FROM webhook_deliveries WHERE attempts > 1 "
                                "AND decided_at >= to_timestamp(%s)", (since,)).fetchone()[0]

    def deliveries_created(self) -> int:
        with psycopg.connect(self.database_url) as conn:
            return conn.execute("SELECT count(*) FROM webhook_deliveries").fetchone()[0]

    def cpu_s(self) -> float:
        return _cpu_s(self.procs[-1].pid)  # the notifier

    def receiver_cpu_s(self) -> float:
        return _cpu_s(self.listener.pid)

    def close(self) -> None:
        if self.notifier is not None:
            os.kill(self.notifier.pid, signal.SIGCONT)
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        self.logs.close()


def backlog(stack: Stack, seconds: int, drain: int) -> dict:
    """Deliveries queued while the notifier is stopped, then drained by it."""
    notifier = stack.procs[-1].pid
    before = stack.deliveries_created()
    os.kill(notifier, signal.SIGSTOP)
    try:
        sent, started, _ = stack.load(0, seconds)
        deadline = time.time() + 60
        while stack.deliveries_created() < before + sent and time.time() < deadline:
            time.sleep(0.2)
        cpu0, rcpu0 = stack.cpu_s(), stack.receiver_cpu_s()
    finally:
        os.kill(notifier, signal.SIGCONT)
    deadline = time.time() + drain
    while len(stack.received(started)) < sent and time.time() < deadline:
        time.sleep(0.2)
    cpu, rcpu = stack.cpu_s() - cpu0, stack.receiver_cpu_s() - rcpu0
    got = sorted(t for t, _ in stack.received(started))
    span = got[-1] - got[0] if len(got) > 1 else float("nan")
    return {"queued": sent, "received": len(got), "per_s": (len(got) - 1) / span,
            "cpu_ms": cpu * 1000 / max(1, len(got)), "receiver_cpu_ms": rcpu * 1000 / max(1, len(got))}


def steady(stack: Stack, rate: int, duration: int, drain: int) -> dict:
    """`rate` decisions/s for `duration` s; then up to `drain` s for the
    deliveries still queued (their latency counts: it is the queueing)."""
    cpu0, rcpu0 = stack.cpu_s(), stack.receiver_cpu_s()
    sent, started, ended = stack.load(rate, duration)
    during = sum(1 for t, _ in stack.received(started) if t <= ended)
    deadline = time.time() + drain
    while len(stack.received(started)) < sent and time.time() < deadline:
        time.sleep(0.2)
    got = stack.received(started)
    cpu, rcpu = stack.cpu_s() - cpu0, stack.receiver_cpu_s() - rcpu0
    latencies = [t - d for t, d in got]
    caught_up = len(got) >= sent
    return {"rate": rate, "retried": stack.retried(started), "confirmed_per_s": sent / (ended - started),
            "delivered_during_per_s": during / (ended - started), "sent": sent, "received": len(got),
            "catch_up_s": max(0.0, max(t for t, _ in got) - ended) if caught_up else float("nan"),
            "p50_s": _pct(latencies, 0.50), "p99_s": _pct(latencies, 0.99),
            "cpu_ms": cpu * 1000 / max(1, len(got)), "receiver_cpu_ms": rcpu * 1000 / max(1, len(got))}


def _median(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def _ms(seconds: float) -> str:
    return "-" if seconds != seconds else f"{seconds * 1000:,.0f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.notifier", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="1000,50", help="decisions per second to offer (default 1000,50)")
    parser.add_argument("--concurrency", default="4,16",
                        help="RESV_WEBHOOK_CONCURRENCY values, a notifier each (default 4,16; 4 is the default)")
    parser.add_argument("--duration", type=int, default=10, help="seconds of load per rate (default 10)")
    parser.add_argument("--drain", type=int, default=120,
                        help="seconds to wait for what is still queued after a row's load (default 120)")
    parser.add_argument("--backlog", type=int, default=5, help="seconds of unpaced load queued for the backlog row")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; figures are medians (default 3)")
    args = parser.parse_args()
    wrk = shutil.which("wrk")
    if wrk is None:
        print("benchmarks.notifier needs wrk: apt-get install -y wrk", file=sys.stderr)
        return 2
    rates = [int(r) for r in args.rates.split(",")]
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    backlogs: dict[int, list[dict]] = {c: [] for c in concurrencies}
    steadies: dict[tuple[int, int], list[dict]] = {(c, r): [] for c in concurrencies for r in rates}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="resv-bench-notifier-") as tmp, \
            EmbeddedRedis(extra_args=["--appendonly", "no"]) as redis, EmbeddedPostgres() as pg:
        stack = Stack(wrk, Path(tmp))
        try:
            stack.start(redis, pg)
            for n in range(args.rounds):
                for c in concurrencies:
                    stack.start_notifier(c)
                    backlogs[c].append(backlog(stack, args.backlog, args.drain))
                    print(f"round {n + 1}, concurrency {c}: backlog {backlogs[c][-1]}", file=sys.stderr, flush=True)
                    for rate in rates:
                        steadies[c, rate].append(steady(stack, rate, args.duration, args.drain))
                        print(f"round {n + 1}, concurrency {c}: steady {steadies[c, rate][-1]}", file=sys.stderr,
                              flush=True)
        finally:
            stack.close()
            warnings = [line for line in (Path(tmp) / "procs.log").read_text().splitlines() if "WARNING" in line]
            print(f"{len(warnings)} warnings in the processes' logs", *warnings[:20], sep="\n", file=sys.stderr)
    load_after = os.getloadavg()
    print(f"\nbench-notifier: {os.cpu_count()} CPUs, load average {load_before[0]:.1f} before and "
          f"{load_after[0]:.1f} after; one notifier, archiver every 200 ms, receiver `resv listen` on loopback, "
          f"all on this machine; medians of {args.rounds} rounds\n")
    print("| RESV_WEBHOOK_CONCURRENCY | backlog queued | delivered / queued | deliveries/s to the receiver "
          "| notifier CPU per delivery | receiver CPU per delivery |")
    print("|---|---|---|---|---|---|")
    for c, rows in backlogs.items():
        print(f"| {c} | {_median(rows, 'queued'):,.0f} | {sum(b['received'] for b in rows):,} / "
              f"{sum(b['queued'] for b in rows):,} | {_median(rows, 'per_s'):,.0f} "
              f"| {_median(rows, 'cpu_ms'):.2f} ms | {_median(rows, 'receiver_cpu_ms'):.2f} ms |")
    print(f"\n{args.duration} s of paced load per row, then up to {args.drain} s for what is queued:\n")
    print("| RESV_WEBHOOK_CONCURRENCY | offered decisions/s | confirmed/s (API) | delivered/s during load "
          "| received / sent | retried | queue cleared after the load | commit-to-receipt p50 | p99 "
          "| notifier CPU per delivery | receiver CPU per delivery |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for (c, rate), rows in steadies.items():
        print(f"| {c} | {rate:,} | {_median(rows, 'confirmed_per_s'):,.0f} "
              f"| {_median(rows, 'delivered_during_per_s'):,.0f} "
              f"| {sum(r['received'] for r in rows):,} / {sum(r['sent'] for r in rows):,} "
              f"| {sum(r['retried'] for r in rows):,} "
              f"| {_ms(_median(rows, 'catch_up_s'))} | {_ms(_median(rows, 'p50_s'))} "
              f"| {_ms(_median(rows, 'p99_s'))} "
              f"| {_median(rows, 'cpu_ms'):.2f} ms | {_median(rows, 'receiver_cpu_ms'):.2f} ms |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
