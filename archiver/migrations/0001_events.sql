-- The decision log: one row per stream entry, keyed by where it was appended.
-- Columns are parsed from `fields` (kept verbatim) by the archiver's INSERT;
-- (ms, seq) is the stream id as numbers, the canonical order within a partition.

-- Integer from text, or NULL when it is not one: an odd entry (someone's
-- manual XADD) must never make a batch fail forever.
CREATE FUNCTION resv_int(value text) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT CASE WHEN value ~ '^-?[0-9]{1,18}$' THEN value::bigint END $$;

-- Server time (microseconds since the epoch) as a timestamp, exactly. Adding
-- microseconds does not depend on the time zone, hence IMMUTABLE.
CREATE FUNCTION resv_time(us bigint) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT timestamptz 'epoch' + us * interval '1 microsecond' $$;

CREATE TABLE events (
    partition       integer     NOT NULL,
    stream_id       text        NOT NULL,
    ms              bigint      NOT NULL,
    seq             bigint      NOT NULL,
    ts_us           bigint,
    server_time     timestamptz GENERATED ALWAYS AS (resv_time(ts_us)) STORED,
    type            text,
    decision        text,
    code            text,
    reason          text,
    resource_id     text,
    client_id       text,
    quantity        bigint,
    request_id      text,
    reservation_id  text,
    entry_id        text,
    version         bigint,
    remaining       bigint,
    fields          jsonb       NOT NULL,
    archived_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (partition, stream_id)
);

COMMENT ON TABLE events IS 'Every entry of the resv:{p<N>}:events streams, once, verbatim in fields.';
COMMENT ON COLUMN events.ts_us IS 'Server time of the decision, microseconds since the epoch (fields.ts).';

-- A resource's timeline, in stream order (a resource lives in one partition).
CREATE INDEX events_resource_order ON events (resource_id, ms, seq);
-- A request's decision(s).
CREATE INDEX events_request ON events (request_id) WHERE request_id IS NOT NULL;
