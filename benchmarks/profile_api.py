"""Where a request's time goes: `resv serve`'s app under a profiler, loaded by wrk.

Starts an embedded Valkey (no AOF), runs the app in this process under
uvicorn with `resv serve`'s settings (`resv.api.serve.serve`, 1 worker)
inside pyinstrument (a sampling profiler: little distortion; `pip install
pyinstrument`) or, without it, cProfile, loads one route with wrk for
`--seconds`, and prints the profile when the server stops. The profile
includes the start-up (under a second): read the request path's share.

    python -m benchmarks.profile_api [--route availability|reserve|echo-get|echo-post] [--seconds 10]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from benchmarks.api import CLIENT_KEY, OPERATOR_KEY, RESOURCE, WRK_SCRIPT, Server
from resv.embedded import EmbeddedRedis, free_port

ROUTES = {
    "availability": ("GET", f"/availability?resource_id={RESOURCE}"),
    "reserve": ("POST", "/reservations"),
    "echo-get": ("GET", f"/bench/echo?resource_id={RESOURCE}"),
    "echo-post": ("POST", "/bench/echo"),
}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_api", description=__doc__.split("\n\n")[0])
    parser.add_argument("--route", choices=ROUTES, default="availability")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--profiler", choices=["pyinstrument", "cprofile"], default=None)
    args = parser.parse_args()
    wrk = shutil.which("wrk")
    if wrk is None:
        print("needs wrk: apt-get install -y wrk", file=sys.stderr)
        return 2
    profiler = args.profiler or ("pyinstrument" if _has("pyinstrument") else "cprofile")
    method, path = ROUTES[args.route]
    port = free_port()
    with EmbeddedRedis(extra_args=["--appendonly", "no"]) as server, \
            tempfile.TemporaryDirectory(prefix="resv-profile-") as tmp:
        os.environ.update({"REDIS_URL": server.url, "RESV_DURABILITY": "relaxed", "RESV_BENCH_ECHO": "1",
                           "RESV_API_KEYS": f"client:{CLIENT_KEY},operator:{OPERATOR_KEY}"})
        script = Path(tmp, "bench.lua")
        script.write_text(WRK_SCRIPT)
        base = f"http://127.0.0.1:{port}"

        def load() -> None:
            _wait(base)
            helper = Server.__new__(Server)
            helper.base = base
            helper.create_resource()
            subprocess.run([wrk, "-t1", "-c64", f"-d{args.seconds}s", "-s", str(script), base + path, "--",
                            method, CLIENT_KEY], capture_output=True, check=True)
            os.kill(os.getpid(), signal.SIGINT)  # uvicorn stops on SIGINT

        if profiler == "pyinstrument":
            from pyinstrument import Profiler

            prof = Profiler(interval=0.0005, async_mode="disabled")
            prof.start()  # on the event loop's thread: pyinstrument samples the thread that started it
        else:
            import cProfile

            prof = cProfile.Profile()
            prof.enable()
        threading.Thread(target=load, daemon=True).start()
        from resv.api.serve import serve

        serve("resv.api.app:app_from_env", factory=True, host="127.0.0.1", port=port, workers=1,
              log_level="info")
        if profiler == "pyinstrument":
            prof.stop()
            print(prof.output_text(unicode=False, color=False, show_all=os.environ.get("PROFILE_ALL") == "1", timeline=False))
        else:
            import pstats

            prof.disable()
            pstats.Stats(prof).sort_stats("tottime").print_stats(40)
    return 0


def _wait(base: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(base + "/health", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("server did not start")


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


if __name__ == "__main__":
    sys.exit(main())
