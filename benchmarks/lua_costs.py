"""Where resv_reserve's server time goes (confirm path), by subtraction.

Redis has no profiler for Lua, so this loads copies of the library, each with
one part of the confirm path taken out (they are wrong on purpose: never
load them anywhere else), under another library name on a private Valkey,
and measures each one's server microseconds per FCALL (INFO commandstats,
reset before each run), the variants taking turns round after round. The
difference from the full function is what that part costs. The minimal
booking script of `make bench-engine` is the floor.

    python -m benchmarks.lua_costs [--calls 20000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import uuid
from importlib import resources

import redis.asyncio as aioredis

from benchmarks.engine import MINIMAL_LIBRARY
from resv.embedded import EmbeddedRedis
from resv.engine import keys

PARTITIONS = 16


def library_text() -> str:
    return resources.files("resv.lua").joinpath("resv.lua").read_text()


def variant(source: str, name: str, cuts: list[tuple[str, str]]) -> str:
    """The library as `name`, its functions renamed `<name>_*`, with each
    (pattern, replacement) applied once (it must match)."""
    text = source.replace("#!lua name=resv", f"#!lua name={name}", 1)
    text = re.sub(r"function_name = 'resv_", f"function_name = '{name}_", text)
    for pattern, replacement in cuts:
        text, n = re.subn(pattern, replacement, text, count=1, flags=re.DOTALL)
        if n != 1:
            raise SystemExit(f"variant {name}: pattern not found: {pattern[:60]}")
    return text


VARIANTS: dict[str, list[tuple[str, str]]] = {
    "full resv_reserve": [],
    "- idempotency record (GET + SET of the record line)": [
        (r"local prior = redis\.call\('GET', keys\[7\]\)", "local prior = nil"),
        (r"  remember\(ev, '', 'CONFIRMED', reservation_id, ts, version_s, remaining_of\(r\)\)\n", ""),
    ],
    "- booking record JSON (a plain string instead)": [
        (r"redis\.call\('HSET', K\.bk, reservation_id, cjson\.encode\(\{.*?\}\)\)",
         "redis.call('HSET', K.bk, reservation_id, client)"),
    ],
    "- key checks (KEYS[2..7] not compared)": [
        (r"  local expected = \{K\.res, K\.bk, K\.cl, K\.wl, K\.we, K\.events\}\n  for i = 2, 6 do\n.*?  end\n  return K",
         "  return K"),
        (r"  if keys\[7\] ~= req_key then return bad\('KEYS\[7\] must be ' \.\. req_key\) end\n", ""),
    ],
    "- waiting-list lookup (HGET we c:<client>)": [
        (r"local entry_id = redis\.call\('HGET', K\.we, 'c:' \.\. client\)", "local entry_id = false"),
    ],
    "- HGETALL (resource read as HMGET of 5 fields)": [
        (r"local flat = redis\.call\('HGETALL', K\.res\)\n  if #flat == 0 then return nil end\n  local r = \{\}\n"
         r"  for i = 1, #flat, 2 do r\[flat\[i\]\] = flat\[i \+ 1\] end",
         "local v = redis.call('HMGET', K.res, 'capacity', 'reserved', 'version', 'state', 'seq')\n"
         "  if not v[1] then return nil end\n"
         "  local r = {capacity = v[1], reserved = v[2], version = v[3], state = v[4], seq = v[5]}"),
    ],
    "- argument checks (client, quantity, request id patterns)": [
        (r"  if not valid_id\(client\) then return bad_id\('client_id'\) end\n", ""),
        (r"  if not valid_id\(request_id\) then return bad_id\('request_id'\) end\n", ""),
    ],
}


async def run(url: str, fcall: str, calls: int, nkeys_fn, args_fn) -> float:
    r = aioredis.Redis.from_url(url, decode_responses=True)
    await r.config_resetstat()
    for base in range(0, calls, 500):
        pipe = r.pipeline(transaction=False)
        for i in range(base, min(base + 500, calls)):
            ks = nkeys_fn(i)
            pipe.execute_command("FCALL", fcall, len(ks), *ks, *args_fn(i))
        await pipe.execute()
    stats = await r.info("commandstats")
    await r.aclose()
    return float(stats["cmdstat_fcall"]["usec_per_call"])


async def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.lua_costs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    source = library_text()
    with EmbeddedRedis(appendfsync="no", extra_args=["--appendonly", "no"]) as server:
        admin = aioredis.Redis.from_url(server.url, decode_responses=True)
        await admin.function_load(source, replace=True)
        await admin.function_load(MINIMAL_LIBRARY, replace=True)
        names = {}
        for n, (label, cuts) in enumerate(VARIANTS.items()):
            name = f"var{n}"
            await admin.function_load(variant(source, name, cuts), replace=True)
            names[label] = name
        results: dict[str, list[float]] = {label: [] for label in [*VARIANTS, "minimal booking script"]}
        for _ in range(args.rounds):
            for label, name in names.items():
                rid = "cost-" + uuid.uuid4().hex[:8]
                await admin.fcall("resv_create", 9, *keys.write_keys(rid, PARTITIONS), rid, "t", str(10**9),
                                  "", "", "0", "", "")
                results[label].append(await run(
                    server.url, f"{name}_reserve", args.calls,
                    lambda i, rid=rid: keys.reserve_keys(rid, f"r{i}", PARTITIONS),
                    lambda i: (rid, f"c{i}", "1", f"r{i}")))
            tag = uuid.uuid4().hex[:8]
            mks = [f"resv:{{p0}}:res:{tag}", f"resv:{{p0}}:bk:{tag}", "resv:{p0}:benchevents"]
            await admin.hset(mks[0], mapping={"capacity": 10**9, "reserved": 0})
            results["minimal booking script"].append(
                await run(server.url, "bench_book", args.calls, lambda i: mks, lambda i: (f"c{i}", "1", f"r{i}")))
        await admin.aclose()
    full = statistics.median(results["full resv_reserve"])
    floor = statistics.median(results["minimal booking script"])
    print(f"\nresv_reserve confirm path, server us per FCALL (INFO commandstats), median of {args.rounds} rounds "
          f"of {args.calls} calls, variants taking turns\n")
    print("| variant | us/call | saves | x minimal |")
    print("|---|---:|---:|---:|")
    for label, values in results.items():
        us = statistics.median(values)
        saves = "" if label in ("full resv_reserve", "minimal booking script") else f"{full - us:.1f}"
        print(f"| {label} | {us:.1f} | {saves} | {us / floor:.2f}x |")


if __name__ == "__main__":
    asyncio.run(main())
