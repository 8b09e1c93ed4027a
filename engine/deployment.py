"""The state-loss guard: is the engine's state in Redis at least as far as
its own audit?

Redis holds one deployment record per partition (`resv:{pN}:deployment`,
written once by lua resv_deploy: deployment id, RESV_PARTITIONS,
created_at). The archiver records in PostgreSQL, per partition, the highest
stream id it archived and the deployment it archived under (the "audit
marks", archiver/marks.py). Comparing the two tells a server that lost its
data (or came back from an older snapshot) from one that did not:

- a partition whose audit mark is beyond anything its stream ever generated
  (XINFO STREAM last-generated-id; a missing stream generated nothing) is
  behind: decisions the audit holds are not in Redis;
- a partition without a record while the audit is not empty is behind (its
  record was lost with the rest), except for an audit older than deployment
  records (no mark names a deployment) whose streams are not behind: that is
  a deployment upgraded to this version, and the record is written then;
- a record naming another deployment than the audit's is behind (someone
  started over without saying so).

A record's partition count must equal RESV_PARTITIONS: a process started with
another count would look for resources in the wrong partitions; it refuses
to start (PartitionsMismatch), naming both numbers.

When nothing is behind and records are missing (a fresh server, an empty
audit), the records are written, with the deployment id already recorded in
another partition, else the audit's, else a new one.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Mapping

import msgspec
from redis.asyncio import Redis

from resv.engine.errors import EngineError, is_missing_function
from resv.engine.keys import deployment_key, stream_key
from resv.engine.library import ensure_library

BEHIND = "engine state is behind the audit: run `resv restore`"
"""What operators are told (by /ready, the archiver, the tools)."""


class AuditMark(msgspec.Struct, frozen=True):
    stream_id: str
    """The highest stream id archived from the partition."""
    deployment_id: str | None = None
    """The deployment it was archived under; None for an audit archived
    before deployment records existed."""


class Deployment(msgspec.Struct, frozen=True):
    deployment_id: str
    partitions: int
    created_at: int
    """Server time (us) the record was written."""


class StateError(EngineError):
    """The engine's state cannot be used as it is."""


class PartitionsMismatch(StateError):
    """RESV_PARTITIONS differs from the deployment's recorded count."""


class EngineState(msgspec.Struct, kw_only=True):
    deployment_id: str | None = None
    """The deployment the records name (after writing missing ones)."""
    behind: dict[int, str] = {}
    """Partitions whose state is behind the audit, each with why."""
    missing: list[int] = []
    """Partitions without a deployment record (after this check)."""
    written: list[int] = []
    """Partitions whose record this check wrote."""
    audit_unreadable: str | None = None
    """Why the audit could not be compared (None: compared, or no audit)."""

    @property
    def problem(self) -> str | None:
        """Operator words when the state must not be used, else None."""
        if self.behind:
            return f"{BEHIND} (partitions {', '.join(map(str, sorted(self.behind)))})"
        if self.missing and self.audit_unreadable:
            return ("the deployment record is missing and the audit cannot be read "
                    f"({self.audit_unreadable}): a fresh server cannot be told from one that lost its data; "
                    "waiting for PostgreSQL")
        return None


def compare_id(a: str, b: str) -> int:
    """-1, 0 or 1 as stream id a is below, equal to or above b."""
    pa, pb = _id(a), _id(b)
    return (pa > pb) - (pa < pb)


def _id(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


async def read_records(redis: Redis, partitions: int) -> tuple[dict[int, Deployment | None], dict[int, str | None]]:
    """Each partition's record and its stream's last generated id (None: no
    stream), in one pipeline. `redis` decodes responses."""
    async with redis.pipeline(transaction=False) as pipe:
        for p in range(partitions):
            pipe.hgetall(deployment_key(p))
            pipe.xinfo_stream(stream_key(p))
        replies = await pipe.execute(raise_on_error=False)
    records: dict[int, Deployment | None] = {}
    last_ids: dict[int, str | None] = {}
    for p in range(partitions):
        record, info = replies[2 * p], replies[2 * p + 1]
        if isinstance(record, Exception):
            raise record
        records[p] = _record(record)
        if isinstance(info, Exception):
            if "no such key" not in str(info).lower():
                raise info
            last_ids[p] = None
        else:
            last_ids[p] = _text(info.get("last-generated-id")) or "0-0"
    return records, last_ids


def _record(fields: Mapping[str, str]) -> Deployment | None:
    if not fields or not fields.get("deployment_id"):
        return None
    return Deployment(deployment_id=fields["deployment_id"], partitions=int(fields.get("partitions") or 0),
                      created_at=int(fields.get("created_at") or 0))


def _text(value):
    return value.decode() if isinstance(value, bytes) else value


def check_partitions(records: Mapping[int, Deployment | None], partitions: int) -> None:
    recorded = sorted({r.partitions for r in records.values() if r is not None})
    wrong = [n for n in recorded if n != partitions]
    if wrong:
        raise PartitionsMismatch(
            f"RESV_PARTITIONS is {partitions} but this deployment was created with {wrong[0]} partitions "
            f"(its deployment record in Redis): resources live in the partitions of {wrong[0]}. "
            f"Start with RESV_PARTITIONS={wrong[0]}."
        )


def assess(records: Mapping[int, Deployment | None], last_ids: Mapping[int, str | None],
           audit: Mapping[int, AuditMark] | None, partitions: int) -> EngineState:
    """The comparison (module docstring); pure. audit None: no audit to
    compare with (only the records are looked at)."""
    check_partitions(records, partitions)
    audit = audit or {}
    legacy = bool(audit) and all(m.deployment_id is None for m in audit.values())
    named = Counter(m.deployment_id for m in audit.values() if m.deployment_id)
    audit_id = named.most_common(1)[0][0] if named else None
    behind: dict[int, str] = {}
    for p in range(partitions):
        record, last, mark = records.get(p), last_ids.get(p), audit.get(p)
        if mark is not None and (last is None or compare_id(last, mark.stream_id) < 0):
            behind[p] = (f"the audit holds decisions up to {mark.stream_id}, the stream generated "
                         + (f"up to {last}" if last else "nothing (no stream)"))
        elif record is None and audit and not legacy:
            behind[p] = "no deployment record while the audit is not empty"
        elif record is not None and mark is not None and mark.deployment_id \
                and record.deployment_id != mark.deployment_id:
            behind[p] = (f"Redis holds deployment {record.deployment_id}, the audit "
                         f"deployment {mark.deployment_id}")
    ids = Counter(r.deployment_id for r in records.values() if r is not None)
    if len(ids) > 1:  # partitions of different deployments: the odd ones are behind
        main_id = audit_id if audit_id in ids else ids.most_common(1)[0][0]
        for p, r in records.items():
            if r is not None and r.deployment_id != main_id:
                behind.setdefault(p, f"Redis holds deployment {r.deployment_id}, partition's peers {main_id}")
    deployment_id = (ids.most_common(1)[0][0] if ids else None) or audit_id
    return EngineState(deployment_id=deployment_id, behind=behind,
                       missing=[p for p in range(partitions) if records.get(p) is None])


async def check_state(redis: Redis, partitions: int, audit: Mapping[int, AuditMark] | None, *,
                      audit_unreadable: str | None = None, write: bool = True) -> EngineState:
    """Reads the records, compares them with the audit (None: no audit
    configured) and, when nothing is behind and the audit could be read (or
    there is none), writes the missing records. Raises PartitionsMismatch."""
    records, last_ids = await read_records(redis, partitions)
    state = assess(records, last_ids, None if audit_unreadable else audit, partitions)
    state.audit_unreadable = audit_unreadable
    if state.behind or not state.missing or audit_unreadable or not write:
        return state
    deployment_id = state.deployment_id or new_deployment_id()
    first, *rest = state.missing
    # The lowest missing partition decides the id, so processes racing on a
    # fresh server end up with one deployment.
    deployment_id = (await deploy(redis, first, deployment_id, partitions)).deployment_id
    for p in rest:
        await deploy(redis, p, deployment_id, partitions)
    state.written, state.missing, state.deployment_id = state.missing, [], deployment_id
    return state


def new_deployment_id() -> str:
    return uuid.uuid4().hex


async def deploy(redis: Redis, partition: int, deployment_id: str, partitions: int, *,
                 replace: bool = False) -> Deployment:
    """FCALL resv_deploy (loads the library when the server has none)."""
    command = ("FCALL", "resv_deploy", 1, deployment_key(partition), deployment_id, str(partitions),
               "replace" if replace else "")
    try:
        reply = await redis.execute_command(*command)
    except Exception as exc:
        if not is_missing_function(exc):
            raise
        await ensure_library(redis)
        reply = await redis.execute_command(*command)
    fields = {_text(reply[i]): _text(reply[i + 1]) for i in range(0, len(reply), 2)}
    return Deployment(deployment_id=fields["deployment_id"], partitions=int(fields["partitions"]),
                      created_at=int(fields["created_at"]))
