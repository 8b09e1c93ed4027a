"""`resv keys RESOURCE_ID [--write | --request-id ID [--actor A]] [--shell]`:
the KEYS of a resource's calls, for `redis-cli FCALL`: the six resource keys
(what reads take); --write adds the waiting-list keys every write call takes
after its other keys; --request-id gives resv_reserve's keys, the request key
as KEYS[7] (with --actor, scoped to that actor, plus the unscoped key as
KEYS[11]).

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
    parser.add_argument("--request-id", help="resv_reserve's keys: with the idempotency key as KEYS[7]")
    parser.add_argument("--actor", help="with --request-id: the actor (API key id, e.g. client#1) it is scoped to")
    parser.add_argument("--write", action="store_true", help="a write call's keys: with the waiting-list keys")
    parser.add_argument("--shell", action="store_true", help="quote each key for pasting into a shell")


def run(args: argparse.Namespace) -> int:
    partitions = Settings.from_env().partitions
    if args.request_id:
        names = list(keys.reserve_keys(args.resource_id, args.request_id, partitions, args.actor))
    elif args.write:
        names = list(keys.write_keys(args.resource_id, partitions))
    else:
        names = list(keys.resource_keys(args.resource_id, partitions))
    print(" ".join(f"'{k}'" if args.shell else k for k in names))
    return 0
