"""`make bench-api`: the HTTP API against its own ceiling, in one run.

Starts an embedded Valkey and `resv serve` with RESV_BENCH_ECHO=1, which adds
`GET /bench/echo` and `POST /bench/echo`: routes that go through the same
server, middleware, key check, operator log, parameters and body validation
as the real ones but do no engine work. Then wrk (64 connections, one thread:
on a 2-core machine a second wrk thread competes with the server for the CPU
and its scheduling delays show up as p99) measures, for each worker count:

  echo GET            the GET ceiling
  GET /availability   the cached read (one resource, so nearly all hits)
  echo POST           the POST ceiling (a reservation-shaped body, decoded)
  POST /reservations  every one CONFIRMED (capacity 1e9, distinct client ids)

and prints req/s, p50, p99 and the ratio to the matching echo ceiling. Runs
are SETTLE_S apart: a run started right as the previous one's 64 connections
close saw ~1% of its requests take up to ~230 ms (any route, the echo too;
no retransmission or event-loop stall showed), which is the previous run's
teardown, not the route under test. Like
`make bench-engine`, the table runs Valkey without AOF (RESV_DURABILITY=relaxed:
the CPU path); a last row per worker count measures POST /reservations under
the strict profile (AOF, `appendfsync always`, the default of `resv serve`),
where the disk's fsync sets the pace.

    python -m benchmarks.api [--duration 18] [--rounds 3] [--workers 1,2]

Needs wrk: install it with `apt-get install -y wrk` (Debian/Ubuntu) or
`brew install wrk` (macOS).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from resv.embedded import EmbeddedRedis, free_port

CLIENT_KEY = "bench-client"
OPERATOR_KEY = "bench-operator"
RESOURCE = "bench"
CONNECTIONS = 64
THREADS = 1
SETTLE_S = 1.0

WRK_SCRIPT = r"""
-- Distinct client ids per thread and request; JSON summary at the end.
local counter = 0
local threads = {}
local next_id = 0

function setup(thread)
  next_id = next_id + 1
  thread:set("tid", next_id)
  table.insert(threads, thread)
end

function init(args)
  method = args[1]
  headers = {}
  headers["Authorization"] = "Bearer " .. args[2]
  headers["Content-Type"] = "application/json"
end

function request()
  if method == "POST" then
    counter = counter + 1
    local body = string.format('{"resource_id":"%s","quantity":1,"client_id":"c%d-%d"}',
                               "RESOURCE", tid, counter)
    return wrk.format("POST", nil, headers, body)
  end
  return wrk.format("GET", nil, headers, nil)
end

function done(summary, latency, requests)
  local statuses = summary.errors.status
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "non2xx": %d, "socket_errors": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), statuses,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
""".replace("RESOURCE", RESOURCE)

ROWS = [
    # (label, method, path, ceiling label)
    ("echo GET (ceiling)", "GET", f"/bench/echo?resource_id={RESOURCE}", None),
    ("GET /availability (cached)", "GET", f"/availability?resource_id={RESOURCE}", "echo GET (ceiling)"),
    ("echo POST (ceiling)", "POST", "/bench/echo", None),
    ("POST /reservations", "POST", "/reservations", "echo POST (ceiling)"),
]


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.api", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=18, help="seconds per row, all rounds together (default 18)")
    parser.add_argument("--workers", default="1,2", help="worker counts to compare (default 1,2)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="split each row's time into this many runs, the rows taking turns; the median "
                             "run is shown (default 3: background load and how wrk's connections happen "
                             "to spread over the workers vary from run to run)")
    args = parser.parse_args()
    seconds = max(2, round(args.duration / args.rounds))
    wrk = shutil.which("wrk")
    if wrk is None:
        print("benchmarks.api needs wrk, which is not installed.\n"
              "  Debian/Ubuntu: apt-get install -y wrk\n  macOS: brew install wrk", file=sys.stderr)
        return 2
    workers = [int(w) for w in args.workers.split(",")]
    results: dict[int, dict[str, dict]] = {}
    with tempfile.TemporaryDirectory(prefix="resv-bench-") as tmp:
        script = Path(tmp, "bench.lua")
        script.write_text(WRK_SCRIPT)
        with EmbeddedRedis(extra_args=["--appendonly", "no"]) as server:
            for n in workers:
                with Server(server.url, n, "relaxed", Path(tmp, f"serve-{n}.log")) as api:
                    api.create_resource()
                    for _, method, path, _ in ROWS:  # warm every route up
                        run_wrk(wrk, script, api.base + path, method, 2)
                    runs: dict[str, list[dict]] = {label: [] for label, *_ in ROWS}
                    for _ in range(args.rounds):
                        for label, method, path, _ in ROWS:
                            runs[label].append(run_wrk(wrk, script, api.base + path, method, seconds))
                    results[n] = {label: median_run(r) for label, r in runs.items()}
        strict: dict[int, dict] = {}
        for n in workers:
            with EmbeddedRedis() as durable, \
                    Server(durable.url, n, "strict", Path(tmp, f"serve-strict-{n}.log")) as api:
                api.create_resource()
                run_wrk(wrk, script, api.base + "/reservations", "POST", 2)
                strict[n] = median_run([run_wrk(wrk, script, api.base + "/reservations", "POST", seconds)
                                        for _ in range(args.rounds)])
    print_table(results, strict, args)
    return 0


class Server:
    """`resv serve` as a subprocess, its operator log to a file."""

    def __init__(self, redis_url: str, workers: int, durability: str, log: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.workers = workers
        self.env = {
            **os.environ,
            "REDIS_URL": redis_url,
            "RESV_API_KEYS": f"client:{CLIENT_KEY},operator:{OPERATOR_KEY}",
            "RESV_BENCH_ECHO": "1",
            "RESV_DURABILITY": durability,
        }
        self.env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        self.env.pop("RESV_RATE_LIMIT", None)
        self.log = log
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Server:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "resv", "serve", "--host", "127.0.0.1", "--port", str(self.port),
                 "--workers", str(self.workers)],
                env=self.env, stdout=log, stderr=log, start_new_session=True,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"resv serve exited; see {self.log}:\n{self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.base + "/health", timeout=1):
                    return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("resv serve did not answer /health within 30 s")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()

    def create_resource(self) -> None:
        body = json.dumps({"resource_id": RESOURCE, "type": "bench", "capacity": 10**9}).encode()
        request = urllib.request.Request(self.base + "/resources", data=body, method="POST", headers={
            "Authorization": f"Bearer {OPERATOR_KEY}", "Content-Type": "application/json"})
        try:
            urllib.request.urlopen(request, timeout=5).close()
        except urllib.error.HTTPError as exc:
            if exc.code != 409:  # created by the previous worker count's run
                raise


def run_wrk(wrk: str, script: Path, url: str, method: str, seconds: int) -> dict:
    time.sleep(SETTLE_S)
    out = subprocess.run(
        [wrk, f"-t{THREADS}", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency", "-s", str(script), url,
         "--", method, CLIENT_KEY],
        capture_output=True, text=True, check=True,
    ).stdout
    line = next(line for line in out.splitlines() if line.startswith("WRKJSON "))
    result = json.loads(line.removeprefix("WRKJSON "))
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    return result


def median_run(runs: list[dict]) -> dict:
    return sorted(runs, key=lambda r: r["rps"])[len(runs) // 2]


def print_table(results: dict[int, dict[str, dict]], strict: dict[int, dict], args: argparse.Namespace) -> None:
    print(f"\nresv API: wrk {THREADS} thread x {CONNECTIONS} connections; each row the median of "
          f"{args.rounds} runs of {max(2, round(args.duration / args.rounds))} s, rows taking turns; "
          f"{os.cpu_count()} CPUs shared by wrk, the server and Valkey\n")
    print("| workers | route | req/s | p50 ms | p99 ms | vs ceiling | non-2xx |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for n, rows in results.items():
        for label, _, _, ceiling in ROWS:
            r = rows[label]
            ratio = f"{r['rps'] / rows[ceiling]['rps']:.0%}" if ceiling else "-"
            print(_row(n, label, r, ratio))
        ratio = f"{strict[n]['rps'] / rows['echo POST (ceiling)']['rps']:.0%}"
        print(_row(n, "POST /reservations, strict: AOF appendfsync always", strict[n], ratio))
    best = max(results, key=lambda n: results[n]["POST /reservations"]["rps"])
    print(f"\nValkey without AOF (RESV_DURABILITY=relaxed) except the strict rows, whose ratio is "
          f"to the relaxed echo ceiling. Most reservations/s with {best} worker(s).")


def _row(workers: int, label: str, r: dict, ratio: str) -> str:
    return (f"| {workers} | {label} | {r['rps']:,.0f} | {r['p50_us'] / 1000:.2f} | {r['p99_us'] / 1000:.2f} "
            f"| {ratio} | {r['non2xx'] + r['socket_errors']} |")


if __name__ == "__main__":
    sys.exit(main())
