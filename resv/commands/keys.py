"""`resv keys RESOURCE_ID [--request-id ID] [--write]`: the KEYS of a
resource's calls, ready to paste into `redis-cli FCALL`: the six resource keys
(what reads take); --write adds the waiting-list keys every write call takes
after its other keys; --request-id gives resv_reserve's ten, the request key
as KEYS[7]."""

from __future__ import annotations

import argparse

from resv.engine import keys
from resv.engine.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("resource_id")
    parser.add_argument("--request-id", help="resv_reserve's keys: with the idempotency key as KEYS[7]")
    parser.add_argument("--write", action="store_true", help="a write call's keys: with the waiting-list keys")


def run(args: argparse.Namespace) -> int:
    partitions = Settings.from_env().partitions
    names = list(keys.resource_keys(args.resource_id, partitions))
    if args.request_id:
        names.append(keys.request_key(args.resource_id, args.request_id, partitions))
    if args.request_id or args.write:
        names += keys.waitlist_keys(args.resource_id, partitions)
    print(" ".join(f"'{k}'" for k in names))
    return 0
