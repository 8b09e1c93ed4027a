-- The state-loss guard's side of the audit (engine/deployment.py).

-- Per partition: the highest stream id archived, and the deployment (the
-- Redis deployment record's id) it was archived under. Updated in the
-- archiver's transaction, so it never runs ahead of `events`.
CREATE TABLE archived_marks (
    partition      integer     PRIMARY KEY,
    stream_id      text        NOT NULL,
    ms             bigint      NOT NULL,
    seq            bigint      NOT NULL,
    deployment_id  text,
    updated_at     timestamptz NOT NULL DEFAULT now()
);

COMMENT ON COLUMN archived_marks.deployment_id IS
    'NULL: archived before deployment records existed (adopted by the first process of this version).';

-- An audit archived by an earlier version: its marks, deployment unknown.
INSERT INTO archived_marks (partition, stream_id, ms, seq)
SELECT DISTINCT ON (partition) partition, stream_id, ms, seq
FROM events ORDER BY partition, ms DESC, seq DESC;

-- An operator's explicit decision to start over (`resv start-over --yes`):
-- a new deployment whose events follow `floors` (partition -> stream id);
-- what is at or below a partition's floor belongs to earlier deployments and
-- is not replayed by verify or restore. Never updated or deleted.
CREATE TABLE start_overs (
    deployment_id  text        PRIMARY KEY,
    replaced       text,
    partitions     integer     NOT NULL,
    floors         jsonb       NOT NULL,
    reason         text        NOT NULL,
    decided_by     text,
    decided_at     timestamptz NOT NULL DEFAULT now()
);
