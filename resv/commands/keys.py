"""`resv keys RESOURCE_ID [--request-id ID [--actor A]] [--shell]`: the KEYS of
a resource's calls, for `redis-cli FCALL`.

Plain by default, space-separated, so `K=$(resv keys concert-42)` then
`redis-cli FCALL resv_resource 6 $K concert-42` works as is (key names have
no spaces; the shell's word splitting is what separates them). `--shell`
quotes each key, for pasting into a command line (the `{pN}` braces)."""

from __future__ import annotations

import argparse

from resv.engine import keys
from resv.engine.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("resource_id")
    parser.add_argument("--request-id", help="also print the idempotency key resv_reserve takes as KEYS[7]")
    parser.add_argument("--actor", help="the actor (API key id, e.g. client#1) the request id is scoped to")
    parser.add_argument("--shell", action="store_true", help="quote each key for pasting into a shell")


def run(args: argparse.Namespace) -> int:
    partitions = Settings.from_env().partitions
    names = list(keys.resource_keys(args.resource_id, partitions))
    if args.request_id:
        names.append(keys.request_key(args.resource_id, args.request_id, partitions, args.actor))
    print(" ".join(f"'{k}'" if args.shell else k for k in names))
    return 0
