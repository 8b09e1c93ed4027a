"""Where a delivery's time goes: the notifier alone, no API, no archiver.

1. HTTP client CPU per POST (httpx, httpcore, aiohttp: each that is
   installed), 4 in flight, to a minimal keep-alive receiver in another
   process (asyncio, answers 204, no verification): what one attempt costs
   the client library alone.
2. One in-process `Notifier` (autocommit pool, as `resv notifier`) draining
   --deliveries queued `webhook.test` deliveries to one endpoint on that
   receiver, on asyncio's event loop and on uvloop's; the variants take
   turns, --rounds rounds, medians. CPU is this process's utime+stime over
   the drain.

    python -m benchmarks.notifier_costs [--deliveries 3000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

from resv.archiver.db import open_pool
from resv.archiver.migrate import apply_migrations
from resv.embedded import free_port
from resv.embedded_pg import EmbeddedPostgres
from resv.notifier.manage import WebhookStore
from resv.notifier.settings import NotifierSettings
from resv.notifier.worker import Notifier

RECEIVER = r"""
import asyncio, sys
async def handle(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            n = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:")), 0)
            await reader.readexactly(n)
            writer.write(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
    except Exception:
        writer.close()
async def main():
    await (await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]))).serve_forever()
asyncio.run(main())
"""

BODY = (b'{"type":"reservation.confirmed","timestamp":"2026-01-01T00:00:00.000000Z","data":{"stream_id":"1-0",'
        b'"resource_id":"bench","client_id":"c1","quantity":1}}')
HEADERS = {"webhook-id": "msg_0123456789abcdef", "webhook-timestamp": "1767225600",
           "webhook-signature": "v1,abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG=",
           "content-type": "application/json", "user-agent": "resv/bench"}


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def _clients(url: str, n: int) -> list[tuple[str, float, float]]:
    async def measure(post) -> tuple[float, float]:
        gate = asyncio.Semaphore(4)

        async def one() -> None:
            async with gate:
                await post()
        for _ in range(200):  # warm: connections made, code paths loaded
            await post()
        cpu0, t0 = _cpu(), time.monotonic()
        await asyncio.gather(*(one() for _ in range(n)))
        return n / (time.monotonic() - t0), (_cpu() - cpu0) * 1e6 / n

    out = []
    if importlib.util.find_spec("httpx"):
        import httpx
        client = httpx.AsyncClient(follow_redirects=False, trust_env=False)

        async def via_httpx() -> None:
            response = await client.send(client.build_request("POST", url, headers=HEADERS, content=BODY),
                                         stream=True)
            async for _ in response.aiter_raw():
                pass
            await response.aclose()
        out.append(("httpx", *await measure(via_httpx)))
        await client.aclose()
    if importlib.util.find_spec("httpcore"):
        import httpcore
        pool = httpcore.AsyncConnectionPool(max_connections=16)

        async def via_httpcore() -> None:
            async with pool.stream("POST", url, headers=list(HEADERS.items()), content=BODY) as response:
                async for _ in response.aiter_stream():
                    pass
        out.append(("httpcore", *await measure(via_httpcore)))
        await pool.aclose()
    import aiohttp
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=16), auto_decompress=False)

    async def via_aiohttp() -> None:
        async with session.post(url, data=BODY, headers=HEADERS, allow_redirects=False) as response:
            await response.read()
    out.append(("aiohttp", *await measure(via_aiohttp)))
    await session.close()
    return out


async def _drain(database_url: str, url: str, n: int) -> tuple[float, float]:
    pool = await open_pool(database_url, max_size=4)
    try:
        hook, _ = await WebhookStore(pool, NotifierSettings(allow_private=True)).create(url, ["*"], None, None)
        async with pool.connection() as conn:
            await conn.execute(
                """INSERT INTO webhook_deliveries (webhook_id, event_type, payload, ms, seq)
                   SELECT %s, 'webhook.test', jsonb_build_object('type', 'webhook.test', 'timestamp',
                          '2026-01-01T00:00:00.000000Z', 'data', jsonb_build_object('n', g)), g, 0
                   FROM generate_series(1, %s) g""", (hook.webhook_id, n))
        settings = NotifierSettings(allow_private=True, database_url=database_url, name="costs", poll_s=0.05)
        notifier_pool = await open_pool(database_url, max_size=4, check=False, autocommit=True)
        stop = asyncio.Event()
        cpu0, t0 = _cpu(), time.monotonic()
        task = asyncio.create_task(Notifier(notifier_pool, settings, database_url=database_url).run(stop))
        while True:
            async with pool.connection() as conn:
                cur = await conn.execute("SELECT count(*) FROM webhook_deliveries WHERE webhook_id = %s "
                                         "AND status = 'PENDING'", (hook.webhook_id,))
                if (await cur.fetchone())[0] == 0:
                    break
            await asyncio.sleep(0.05)
        elapsed, cpu = time.monotonic() - t0, _cpu() - cpu0
        stop.set()
        await task
        await notifier_pool.close()
        return n / elapsed, cpu * 1000 / n
    finally:
        await pool.close()


def _loops() -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    loops: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {"asyncio": asyncio.new_event_loop}
    if importlib.util.find_spec("uvloop"):
        import uvloop
        loops["uvloop"] = uvloop.new_event_loop
    return loops


def run(args: argparse.Namespace) -> None:
    port = free_port()
    receiver = subprocess.Popen([sys.executable, "-c", RECEIVER, str(port)])
    url = f"http://127.0.0.1:{port}/"
    try:
        time.sleep(0.5)
        print("| client | POST/s | client CPU per POST |\n|---|---:|---:|")
        for name, per_s, us in asyncio.run(_clients(url, args.deliveries)):
            print(f"| {name} | {per_s:,.0f} | {us:,.0f} us |")
        loops = _loops()
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in loops}
        with EmbeddedPostgres() as pg:
            asyncio.run(apply_migrations(pg.url))
            for _ in range(args.rounds):
                for name, factory in loops.items():
                    with asyncio.Runner(loop_factory=factory) as runner:
                        results[name].append(runner.run(_drain(pg.url, url, args.deliveries)))
        print(f"\n{args.deliveries} queued deliveries, one notifier (4 in flight), medians of {args.rounds} rounds\n")
        print("| event loop | deliveries/s | CPU per delivery |\n|---|---:|---:|")
        for name, rows in results.items():
            print(f"| {name} | {statistics.median(r[0] for r in rows):,.0f} "
                  f"| {statistics.median(r[1] for r in rows):.2f} ms |")
    finally:
        receiver.kill()
        receiver.wait()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.notifier_costs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--deliveries", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    run(parser.parse_args())
    return 0


if __name__ == "__main__":
    sys.exit(main())
