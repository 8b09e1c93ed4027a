"""`resv partitions [--partitions N] [--shards S]`: which Redis Cluster slot
each partition's hash tag `{pN}` takes, and how many partitions each of S
shards holds when the slots are split in S even contiguous ranges (what
`redis-cli --cluster create` does). Computed here (CRC16 of the tag, as the
server does), no server asked."""

from __future__ import annotations

import argparse

from resv.embedded_cluster import slot_ranges
from resv.engine.cluster import partition_slots
from resv.engine.settings import CLUSTER_PARTITIONS, Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--partitions", type=int,
                        help=f"default: $RESV_PARTITIONS, else the cluster default {CLUSTER_PARTITIONS}")
    parser.add_argument("--shards", type=int, default=3, help="primaries, each serving an even slot range (3)")
    parser.add_argument("--summary", action="store_true", help="only the partitions per shard")


def shard_counts(partitions: int, shards: int) -> list[tuple[int, int, int]]:
    """(first slot, last slot, partitions) of each shard."""
    slots = partition_slots(partitions)
    return [(first, last, sum(first <= s <= last for s in slots)) for first, last in slot_ranges(shards)]


def run(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    partitions = args.partitions or (settings.partitions if settings.partitions_set else CLUSTER_PARTITIONS)
    ranges = slot_ranges(args.shards)
    if not args.summary:
        for p, slot in enumerate(partition_slots(partitions)):
            shard = next(i for i, (first, last) in enumerate(ranges) if first <= slot <= last)
            print(f"p{p}\tslot {slot}\tshard {shard}")
    for i, (first, last, n) in enumerate(shard_counts(partitions, args.shards)):
        print(f"shard {i}: slots {first}-{last}: {n} partitions ({100 * n / partitions:.1f}%)")
    return 0
