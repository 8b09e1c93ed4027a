"""`resv keys RESOURCE_ID [--request-id ID]`: the KEYS of a resource's calls,
ready to paste into `redis-cli FCALL`."""

from __future__ import annotations

import argparse

from resv.engine import keys
from resv.engine.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("resource_id")
    parser.add_argument("--request-id", help="also print the idempotency key resv_reserve takes as KEYS[7]")


def run(args: argparse.Namespace) -> int:
    partitions = Settings.from_env().partitions
    names = list(keys.resource_keys(args.resource_id, partitions))
    if args.request_id:
        names.append(keys.request_key(args.resource_id, args.request_id, partitions))
    print(" ".join(f"'{k}'" for k in names))
    return 0
