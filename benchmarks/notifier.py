"""`make bench-notifier`: webhooks under a steady decision rate.

Starts an embedded Valkey (no AOF: the CPU path, like bench-api) and
PostgreSQL, then `resv serve`, `resv archiver` (default interval),
`resv notifier` (defaults) and a `resv listen` receiver, all as separate
processes, registers the receiver for `reservation.confirmed`, and has wrk
send POST /reservations at a steady rate (each connection pauses between
requests) for --duration seconds. The receiver prints each verified event;
its receipt time minus the decision's server time (the body's `timestamp`)
is the commit-to-receipt latency. After the load, up to --drain seconds
for the notifier to catch up.

    python -m benchmarks.notifier [--rates 1000,50] [--duration 20] [--drain 20]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import datetime
from pathlib import Path

from resv.embedded import EmbeddedRedis, free_port
from resv.embedded_pg import EmbeddedPostgres

OPERATOR_KEY = "bench-operator"
CLIENT_KEY = "bench-client"
CONNECTIONS = 16

WRK_SCRIPT = r"""
local counter = 0
local next_id = 0
function setup(thread) next_id = next_id + 1; thread:set("tid", next_id) end
function init(args)
  pause = tonumber(args[1])
  headers = {["Authorization"] = "Bearer " .. args[2], ["Content-Type"] = "application/json"}
end
function delay() return pause end
function request()
  counter = counter + 1
  local body = string.format('{"resource_id":"bench","quantity":1,"client_id":"c%d-%d"}', tid, counter)
  return wrk.format("POST", nil, headers, body)
end
function done(summary, latency, requests)
  io.write(string.format('WRKJSON {"requests": %d, "duration_us": %d, "non2xx": %d}\n',
    summary.requests, summary.duration, summary.errors.status))
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


def run_rate(wrk: str, rate: int, duration: int, drain: int, tmp: Path) -> dict:
    with EmbeddedRedis(extra_args=["--appendonly", "no"]) as redis, EmbeddedPostgres() as pg:
        port, hook_port = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("RESV_")}
        env.update(REDIS_URL=redis.url, DATABASE_URL=pg.url, RESV_DURABILITY="relaxed",
                   RESV_API_KEYS=f"operator:{OPERATOR_KEY},client:{CLIENT_KEY}", RESV_WEBHOOK_ALLOW_PRIVATE="1")
        cli = [sys.executable, "-m", "resv"]
        logs = open(tmp / f"procs-{rate}.log", "w")
        procs = [subprocess.Popen([*cli, "migrate"], env=env, stdout=logs, stderr=logs)]
        procs[0].wait(60)
        procs = [subprocess.Popen([*cli, name, *extra], env=env, stdout=logs, stderr=logs)
                 for name, extra in (("serve", ["--host", "127.0.0.1", "--port", str(port)]),
                                     ("archiver", []), ("notifier", []))]
        base = f"http://127.0.0.1:{port}"
        listener = None
        try:
            _wait(base + "/health")
            _call(base, "POST", "/resources", {"resource_id": "bench", "type": "meetup", "capacity": 10**9})
            hook = _call(base, "POST", "/webhooks", {"url": f"http://127.0.0.1:{hook_port}/",
                                                     "event_types": ["reservation.confirmed"]})
            listener = subprocess.Popen([*cli, "listen", "--port", str(hook_port), "--secret", hook["secret"]],
                                        env=env, stdout=subprocess.PIPE, stderr=logs, text=True)
            latencies: list[float] = []
            receipts: list[float] = []

            def read() -> None:
                for line in listener.stdout:  # type: ignore[union-attr]
                    now = time.time()
                    decided = datetime.fromisoformat(json.loads(line)["timestamp"].replace("Z", "+00:00"))
                    latencies.append(now - decided.timestamp())
                    receipts.append(now)

            threading.Thread(target=read, daemon=True).start()
            time.sleep(1.0)
            script = tmp / "bench.lua"
            script.write_text(WRK_SCRIPT)
            pause_ms = max(1, round(CONNECTIONS * 1000 / rate))
            started = time.time()
            out = subprocess.run([wrk, "-t1", f"-c{CONNECTIONS}", f"-d{duration}s", "-s", str(script),
                                  base + "/reservations", "--", str(pause_ms), CLIENT_KEY],
                                 capture_output=True, text=True, check=True).stdout
            ended = time.time()
            summary = json.loads(out.split("WRKJSON ", 1)[1].splitlines()[0])
            sent = summary["requests"] - summary["non2xx"]
            during = sum(1 for t in receipts if t <= ended)
            deadline = time.time() + drain
            while len(receipts) < sent and time.time() < deadline:
                time.sleep(0.2)
            caught_up = len(receipts) >= sent
            last = receipts[-1] if receipts else ended
            ordered = sorted(latencies)

            def pct(q: float) -> float:
                return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")

            return {
                "rate": rate, "decisions_per_s": sent / (ended - started),
                "delivered_during_per_s": during / (ended - started),
                "delivered_per_s": len(receipts) / max(0.001, last - started),
                "sent": sent, "received": len(receipts), "caught_up": caught_up,
                "p50_s": pct(0.50), "p99_s": pct(0.99),
            }
        finally:
            for p in [*procs, *([listener] if listener else [])]:
                p.terminate()
            for p in [*procs, *([listener] if listener else [])]:
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
            logs.close()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.notifier", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="1000,50", help="decisions per second to offer (default 1000,50)")
    parser.add_argument("--duration", type=int, default=20, help="seconds of load per rate (default 20)")
    parser.add_argument("--drain", type=int, default=20, help="seconds to wait for the backlog after the load")
    args = parser.parse_args()
    wrk = shutil.which("wrk")
    if wrk is None:
        print("benchmarks.notifier needs wrk: apt-get install -y wrk", file=sys.stderr)
        return 2
    rows = []
    with tempfile.TemporaryDirectory(prefix="resv-bench-notifier-") as tmp:
        for rate in (int(r) for r in args.rates.split(",")):
            rows.append(run_rate(wrk, rate, args.duration, args.drain, Path(tmp)))
    print(f"\nbench-notifier: {os.cpu_count()} CPUs, {args.duration} s of load per row, one notifier "
          "(RESV_WEBHOOK_CONCURRENCY=4), archiver every 200 ms, receiver `resv listen` on loopback\n")
    print("| offered decisions/s | confirmed/s (API) | delivered/s during load | delivered/s overall "
          "| received / sent | caught up | commit-to-receipt p50 | p99 |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['rate']} | {r['decisions_per_s']:.0f} | {r['delivered_during_per_s']:.0f} "
              f"| {r['delivered_per_s']:.0f} | {r['received']} / {r['sent']} "
              f"| {'yes' if r['caught_up'] else 'no'} | {r['p50_s'] * 1000:.0f} ms | {r['p99_s'] * 1000:.0f} ms |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
