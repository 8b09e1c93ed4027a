"""`make bench-api`: what the HTTP API costs per request, against a bare app.

The baseline is `benchmarks/bare_app.py`: a bare Litestar echo app that
shares nothing with resv but the server settings (it is run through the same
`resv.api.serve.serve` code path: same server, event loop, HTTP parser,
worker count). For each worker count, one run starts an embedded
Valkey without AOF, one with AOF `appendfsync always`, and three servers side
by side: the bare app, `resv serve` on the first Valkey (RESV_DURABILITY=
relaxed, with RESV_BENCH_ECHO=1) and `resv serve` on the second (strict).
Only the server under test has work; the rows take turns, round after round,
so that the machine's background load falls on all of them alike.

Rows:
  bare echo GET / POST        the baseline (no middleware, no key, no log)
  GET /availability (cached)  one resource, so nearly all hits
  POST /reservations          every one CONFIRMED (capacity 1e9, distinct client ids)
  POST /reservations, strict  the same under AOF `appendfsync always`
  in-app echo GET / POST      (--in-app) our server, middleware, key check, operator
                              log and validation, but no engine work: where the
                              rest of the time goes

Per row: req/s, p50 and p99 latency (wrk), the CPU time of the server's
processes per request (utime+stime of its process tree, from /proc via
psutil), the Redis server's CPU per request (INFO cpu), and the multiple of
the API CPU per request over the matching bare echo, computed within each
round and then the median taken. CPU per request is the figure to compare:
req/s and latency depend on how the 2 cores are shared with wrk, Valkey and
whatever else runs on the machine.

    python -m benchmarks.api [--seconds 3] [--rounds 5] [--workers 1] [--in-app]

Needs wrk: `apt-get install -y wrk` (Debian/Ubuntu) or `brew install wrk`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import redis

from resv.embedded import EmbeddedRedis, free_port

CLIENT_KEY = "bench-client"
OPERATOR_KEY = "bench-operator"
RESOURCE = "bench"
CONNECTIONS = 64
THREADS = 1
SETTLE_S = 1.0
"""Pause before each run: a run started as the previous one's 64 connections
close saw ~1% of its requests take up to ~230 ms (any route), the previous
run's teardown rather than the route under test."""

TARGETS = {"GET /availability (cached)": 1.3, "POST /reservations": 1.5}
"""Issue 13's targets: API CPU per request over the bare echo."""

WRK_SCRIPT = r"""
-- Distinct client ids per thread and request; JSON summary at the end.
local counter = 0
local next_id = 0

function setup(thread)
  next_id = next_id + 1
  thread:set("tid", next_id)
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
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "non2xx": %d, "socket_errors": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
""".replace("RESOURCE", RESOURCE)


@dataclass(frozen=True)
class Row:
    label: str
    server: str  # which of the three: bare, relaxed, strict
    method: str
    path: str
    baseline: str | None  # the row whose CPU per request this one is compared with
    in_app: bool = False


ROWS = [
    Row("bare echo GET", "bare", "GET", f"/echo?resource_id={RESOURCE}", None),
    Row("GET /availability (cached)", "relaxed", "GET", f"/availability?resource_id={RESOURCE}", "bare echo GET"),
    Row("in-app echo GET", "relaxed", "GET", f"/bench/echo?resource_id={RESOURCE}", "bare echo GET", True),
    Row("bare echo POST", "bare", "POST", "/echo", None),
    Row("POST /reservations", "relaxed", "POST", "/reservations", "bare echo POST"),
    Row("POST /reservations, strict (AOF always)", "strict", "POST", "/reservations", "bare echo POST"),
    Row("in-app echo POST", "relaxed", "POST", "/bench/echo", "bare echo POST", True),
]


@dataclass
class Run:
    rps: float
    p50_ms: float
    p99_ms: float
    api_us: float
    redis_us: float
    errors: int


@dataclass
class Result:
    runs: list[Run] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.api", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=3, help="seconds per run (default 3)")
    parser.add_argument("--rounds", type=int, default=5,
                        help="runs per row, the rows taking turns; medians are shown (default 5)")
    parser.add_argument("--workers", default="1", help="worker counts, comma-separated (default 1)")
    parser.add_argument("--in-app", action="store_true", help="add the in-app echo rows (RESV_BENCH_ECHO)")
    parser.add_argument("--serve-bare", nargs=2, metavar=("PORT", "WORKERS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bare:
        return serve_bare(*args.serve_bare)
    wrk = shutil.which("wrk")
    if wrk is None:
        print("benchmarks.api needs wrk, which is not installed.\n"
              "  Debian/Ubuntu: apt-get install -y wrk\n  macOS: brew install wrk", file=sys.stderr)
        return 2
    rows = [row for row in ROWS if args.in_app or not row.in_app]
    tables: dict[int, dict[str, Result]] = {}
    with tempfile.TemporaryDirectory(prefix="resv-bench-") as tmp:
        script = Path(tmp, "bench.lua")
        script.write_text(WRK_SCRIPT)
        for workers in (int(w) for w in args.workers.split(",")):
            tables[workers] = measure(wrk, script, Path(tmp), workers, rows, args)
    print_tables(tables, rows, args)
    return 0


def measure(wrk: str, script: Path, tmp: Path, workers: int, rows: list[Row],
            args: argparse.Namespace) -> dict[str, Result]:
    with EmbeddedRedis(extra_args=["--appendonly", "no"]) as fast, EmbeddedRedis() as durable, \
            Server.bare(workers, tmp) as bare, \
            Server.resv(workers, fast.url, "relaxed", tmp) as relaxed, \
            Server.resv(workers, durable.url, "strict", tmp) as strict:
        servers = {"bare": bare, "relaxed": relaxed, "strict": strict}
        redis_of = {"bare": fast.url, "relaxed": fast.url, "strict": durable.url}
        relaxed.create_resource()
        strict.create_resource()
        for row in rows:  # warm every route up
            run_wrk(wrk, script, servers[row.server].base + row.path, row.method, 1)
        results = {row.label: Result() for row in rows}
        for _ in range(args.rounds):
            this_round: dict[str, Run] = {}
            for row in rows:
                server = servers[row.server]
                with redis.Redis.from_url(redis_of[row.server]) as r:
                    api_before, redis_before = server.cpu_seconds(), redis_cpu_seconds(r)
                    out = run_wrk(wrk, script, server.base + row.path, row.method, args.seconds)
                    api_after, redis_after = server.cpu_seconds(), redis_cpu_seconds(r)
                n = max(out["requests"], 1)
                run = Run(rps=out["requests"] / (out["duration_us"] / 1e6), p50_ms=out["p50_us"] / 1000,
                          p99_ms=out["p99_us"] / 1000, api_us=(api_after - api_before) / n * 1e6,
                          redis_us=(redis_after - redis_before) / n * 1e6,
                          errors=out["non2xx"] + out["socket_errors"])
                this_round[row.label] = run
                results[row.label].runs.append(run)
            for row in rows:
                if row.baseline:
                    results[row.label].ratios.append(this_round[row.label].api_us / this_round[row.baseline].api_us)
    return results


class Server:
    """A server under test as a subprocess, its output to a file, and the CPU
    time of its process tree (the supervisor and its workers)."""

    def __init__(self, command: list[str], env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.command = [part.replace("{port}", str(self.port)) for part in command]
        self.env = env
        self.log = log
        self.proc: subprocess.Popen | None = None
        self.tree: list[psutil.Process] = []

    @classmethod
    def bare(cls, workers: int, tmp: Path) -> Server:
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
        return cls([sys.executable, "-m", "benchmarks.api", "--serve-bare", "{port}", str(workers)],
                   env, tmp / f"bare-{workers}.log")

    @classmethod
    def resv(cls, workers: int, redis_url: str, durability: str, tmp: Path) -> Server:
        env = {
            **os.environ,
            "REDIS_URL": redis_url,
            "RESV_API_KEYS": f"client:{CLIENT_KEY},operator:{OPERATOR_KEY}",
            "RESV_BENCH_ECHO": "1",
            "RESV_DURABILITY": durability,
        }
        for name in ("PROMETHEUS_MULTIPROC_DIR", "RESV_RATE_LIMIT", "DATABASE_URL"):
            env.pop(name, None)
        return cls([sys.executable, "-m", "resv", "serve", "--host", "127.0.0.1", "--port", "{port}",
                    "--workers", str(workers)], env, tmp / f"resv-{workers}-{durability}.log")

    def __enter__(self) -> Server:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.command, env=self.env, stdout=log, stderr=log,
                                         start_new_session=True)
        deadline = time.monotonic() + 60
        path = "/health" if "resv" in self.command else f"/echo?resource_id={RESOURCE}"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.command} exited; see {self.log}:\n{self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.base + path, timeout=1):
                    break
            except OSError:
                time.sleep(0.1)
        else:
            raise RuntimeError(f"{self.command} did not answer within 60 s")
        top = psutil.Process(self.proc.pid)
        self.tree = [top, *top.children(recursive=True)]
        return self

    def cpu_seconds(self) -> float:
        total = 0.0
        for process in self.tree:
            times = process.cpu_times()
            total += times.user + times.system
        return total

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
            if exc.code != 409:
                raise


def serve_bare(port: str, workers: str) -> int:
    """The bare app under resv's own server code path (nothing else of resv)."""
    from resv.api.serve import serve

    serve("benchmarks.bare_app:app", factory=False, host="127.0.0.1", port=int(port), workers=int(workers),
          log_level="warning", http="httptools")  # plain httptools: the edge protocol is resv's code
    return 0


def redis_cpu_seconds(client: redis.Redis) -> float:
    cpu = client.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def run_wrk(wrk: str, script: Path, url: str, method: str, seconds: int) -> dict:
    time.sleep(SETTLE_S)
    out = subprocess.run(
        [wrk, f"-t{THREADS}", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency", "-s", str(script), url,
         "--", method, CLIENT_KEY],
        capture_output=True, text=True, check=True,
    ).stdout
    line = next(line for line in out.splitlines() if line.startswith("WRKJSON "))
    return json.loads(line.removeprefix("WRKJSON "))


def print_tables(tables: dict[int, dict[str, Result]], rows: list[Row],
                 args: argparse.Namespace) -> None:
    print(f"\nresv API vs a bare Litestar echo app: wrk {THREADS} thread x {CONNECTIONS} connections; "
          f"medians of {args.rounds} runs of {args.seconds} s, rows taking turns; {os.cpu_count()} CPUs shared "
          "by wrk, the servers and Valkey. CPU = utime+stime per request; x bare = API CPU over the bare echo's, "
          "within each round (median, and the range over rounds).\n")
    print("| workers | route | req/s | p50 ms | p99 ms | API CPU us/req | x bare (range) | target "
          "| Redis CPU us/req | errors |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for workers, results in tables.items():
        for row in rows:
            r = results[row.label]
            med = lambda attr: statistics.median(getattr(run, attr) for run in r.runs)  # noqa: E731
            if r.ratios:
                ratio = f"{statistics.median(r.ratios):.2f}x ({min(r.ratios):.2f}-{max(r.ratios):.2f})"
            else:
                ratio = "1"
            target = f"<= {TARGETS[row.label]}x" if row.label in TARGETS else ""
            label = row.label + (" *" if row.in_app else "")
            print(f"| {workers} | {label} | {med('rps'):,.0f} | {med('p50_ms'):.2f} | {med('p99_ms'):.2f} "
                  f"| {med('api_us'):.0f} | {ratio} | {target} | {med('redis_us'):.1f} "
                  f"| {sum(run.errors for run in r.runs)} |")
    if any(row.in_app for row in rows):
        print("\n* in-app echo: routes inside resv (RESV_BENCH_ECHO=1) with all of its middleware but no engine "
              "work; they show what our layers cost, not a ceiling.")
    spread = [max(run.api_us for run in r.runs) / min(run.api_us for run in r.runs)
              for results in tables.values() for r in results.values()]
    print(f"\nNoise: a row's API CPU per request varied by up to {max(spread) - 1:.0%} between rounds "
          f"(median {statistics.median(spread) - 1:.0%}).")


if __name__ == "__main__":
    sys.exit(main())
