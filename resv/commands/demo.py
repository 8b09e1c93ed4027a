"""`resv demo` (what `make run` starts): the whole engine on embedded defaults.

When REDIS_URL / DATABASE_URL are unset it starts a private Valkey (AOF,
appendfsync always) and a private PostgreSQL, each on a free loopback port
with its data under .resv/; generates API keys when RESV_API_KEYS is unset;
then runs `resv serve`, `resv archiver` and `resv notifier` as child
processes and prints how to use them (webhooks to a `resv listen` receiver on
this machine included: RESV_WEBHOOK_ALLOW_PRIVATE=1). Ctrl-C stops everything.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="API port (a free one if taken)")
    parser.add_argument("--data-dir", default=".resv", help="where embedded servers keep their data")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--cluster", action="store_true",
                        help="a temporary local Valkey cluster (3 primaries, 1 replica each) instead of one server")


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((host, port)) != 0


def _wait_http(url: str, timeout: float = 30.0) -> bool:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                return response.status == 200
        except OSError:
            time.sleep(0.2)
    return False


def run(args: argparse.Namespace) -> int:
    from resv.embedded import EmbeddedRedis, free_port

    env = dict(os.environ)
    data = Path(args.data_dir).resolve()
    notes: list[str] = []
    with ExitStack() as stack:
        temporary = False
        if env.get("REDIS_URL") and args.cluster:
            notes.append("REDIS_URL is set: --cluster starts no cluster (the engine finds a cluster by itself)")
        if not env.get("REDIS_URL") and args.cluster:
            from resv.embedded_cluster import EmbeddedCluster

            print("resv demo: forming a local Valkey cluster (3 primaries, 1 replica each)...", flush=True)
            cluster = stack.enter_context(EmbeddedCluster(primaries=3, replicas=1))
            env["REDIS_URL"] = cluster.url
            temporary = True
            ports = ", ".join(str(n.port) for n in cluster.nodes[:cluster.primaries])
            notes.append(f"embedded Valkey cluster, primaries on 127.0.0.1 ports {ports}, one replica each "
                         "(AOF, appendfsync always; temporary: removed when the demo stops)")
        elif not env.get("REDIS_URL"):
            server = stack.enter_context(EmbeddedRedis(data_dir=_mkdir(data / "redis")))
            env["REDIS_URL"] = server.url
            notes.append(f"embedded Valkey at {server.url} (AOF, appendfsync always; data in {server.data_dir})")
        if not env.get("DATABASE_URL"):
            from resv.embedded_pg import EmbeddedPostgres

            pg = stack.enter_context(EmbeddedPostgres(data_dir=None if temporary else data / "postgres"))
            env["DATABASE_URL"] = pg.url
            notes.append(f"embedded PostgreSQL at {pg.url} "
                         + ("(temporary, like the cluster)" if temporary else f"(data in {pg.data_dir})"))
        if not env.get("RESV_API_KEYS"):
            env["RESV_API_KEYS"] = f"operator:op-{secrets.token_hex(8)},client:web-{secrets.token_hex(8)}"
            notes.append("generated API keys (set RESV_API_KEYS to choose your own)")
        # The embedded server fsyncs every write, so the strict profile holds.
        env.setdefault("RESV_DURABILITY", "strict")
        # Webhooks to a receiver on this machine (`resv listen`).
        env.setdefault("RESV_WEBHOOK_ALLOW_PRIVATE", "1")
        port = args.port if _port_free(args.host, args.port) else free_port()
        cli = [sys.executable, "-m", "resv"]
        children = [
            subprocess.Popen([*cli, "serve", "--host", args.host, "--port", str(port),
                              "--workers", str(args.workers)], env=env),
            subprocess.Popen([*cli, "archiver"], env=env),
            subprocess.Popen([*cli, "notifier"], env=env),
        ]
        stack.callback(_stop_all, children)
        base = f"http://{args.host}:{port}"
        if not _wait_http(base + "/health"):
            print("resv demo: the API did not come up; see the messages above", file=sys.stderr)
            return 1
        print(_usage(base, env, notes, data, cluster=temporary), flush=True)
        return _wait(children)


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _wait(children: list[subprocess.Popen]) -> int:
    stop = {"now": False}

    def on_signal(*_):
        stop["now"] = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    while not stop["now"]:
        for child in children:
            if child.poll() is not None:
                print(f"resv demo: {child.args[3]} exited with {child.returncode}", file=sys.stderr)
                return child.returncode or 1
        time.sleep(0.3)
    print("\nresv demo: stopping", flush=True)
    return 0


def _stop_all(children: list[subprocess.Popen]) -> None:
    for child in children:
        if child.poll() is None:
            child.terminate()
    for child in children:
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            child.kill()


def _usage(base: str, env: dict[str, str], notes: list[str], data: Path, cluster: bool = False) -> str:
    keys = dict(pair.split(":", 1) for pair in env["RESV_API_KEYS"].split(",") if ":" in pair)
    op, client = keys.get("operator", "OPERATOR_KEY"), keys.get("client", "CLIENT_KEY")
    lines = "\n".join(f"  - {n}" for n in notes)
    cluster_note = "; a cluster: redis-cli -c, and `resv partitions` for the slots" if cluster else ""
    kept = ("Nothing persists: the cluster and its PostgreSQL are removed when the demo stops." if cluster else
            f"Data persists in {data}; set RESV_API_KEYS as above before the next\n"
            "`make run` to keep the same keys (the embedded servers' ports may change).")
    return f"""
resv is running.
{lines}

  API        {base}
  console    {base}/console  (sign in with the operator key)
  OpenAPI    {base}/schema  (JSON: {base}/schema/openapi.json)
  metrics    {base}/metrics (operator key)
  operator key: {op}
  client key:   {client}

Try it (and watch the decisions arrive on {base}/console/resources/meetup-1):
  curl -s -X POST {base}/resources -H 'Authorization: Bearer {op}' \\
       -H 'Content-Type: application/json' \\
       -d '{{"resource_id": "meetup-1", "type": "meetup", "capacity": 20, "waitlist_enabled": true}}'
  curl -s '{base}/availability?resource_id=meetup-1' -H 'Authorization: Bearer {client}'
  curl -s -X POST {base}/reservations -H 'Authorization: Bearer {client}' \\
       -H 'Content-Type: application/json' -H 'Idempotency-Key: order-1' \\
       -d '{{"resource_id": "meetup-1", "quantity": 2, "client_id": "alice"}}'
  curl -s '{base}/ops/resources/meetup-1/timeline' -H 'Authorization: Bearer {op}'

Webhooks (signed, from the audit; `resv listen` verifies and prints each event):
  curl -s -X POST {base}/webhooks -H 'Authorization: Bearer {op}' \\
       -H 'Content-Type: application/json' \\
       -d '{{"url": "http://127.0.0.1:9000/", "event_types": ["*"]}}'
  {sys.executable} -m resv listen --port 9000 --secret <the "secret" it answered>

Audit in PostgreSQL: psql "{env['DATABASE_URL']}" -c 'select * from events order by ms, seq'
Redis functions directly: see lua/README.md (server {env['REDIS_URL']}{cluster_note}).

The resv command is {Path(sys.executable).parent / 'resv'}. In another shell, for
`resv timeline`, `resv verify` and the others against these servers:
  export REDIS_URL='{env['REDIS_URL']}'
  export DATABASE_URL='{env['DATABASE_URL']}'
  export RESV_API_KEYS='{env['RESV_API_KEYS']}'
{kept}
Ctrl-C stops everything.
"""
