"""The waiting-list sweep: expiry at server time without waiting for traffic.

A notification lapses at its deadline, but the Lua can only act when called:
any write call on the resource expires what is due first (lazily), and this
sweep calls `resv_wl_sweep` for the resources the partition's index
(`resv:{pN}:notified`, scored by earliest deadline) shows as due, so a quiet
resource's lapsed notifications expire and the next entries that fit are
notified within one sweep interval. The Lua decides (at its own clock) and
logs; the sweep only chooses which resources to ask about, reading nothing
but the index: it never scans resources without outstanding notifications.
"""

from __future__ import annotations

import logging

from resv.engine import Engine

log = logging.getLogger("resv.archiver.sweep")

DUE_PER_ROUND = 100
"""Resources asked about per partition per round; a round repeats while a
partition had this many due."""


class Sweeper:
    def __init__(self, engine: Engine, partitions: int, due_per_round: int = DUE_PER_ROUND) -> None:
        self.engine = engine
        self.partitions = partitions
        self.due_per_round = due_per_round

    async def sweep(self) -> int:
        """Sweeps every partition's due resources; returns how many
        notifications expired. Raises on a Redis failure (the caller logs)."""
        expired = 0
        for partition in range(self.partitions):
            while True:
                due = await self.engine.due_for_sweep(partition, self.due_per_round)
                for resource_id in due:
                    decision = await self.engine.sweep_waitlist(resource_id)
                    expired += decision.expired or 0
                if len(due) < self.due_per_round:
                    break
        return expired

    async def run_once(self) -> int:
        """One scheduled run; never raises."""
        try:
            return await self.sweep()
        except Exception as exc:
            log.warning("archiver: waiting-list sweep failed (%s: %s); next run retries", type(exc).__name__, exc)
            return 0
