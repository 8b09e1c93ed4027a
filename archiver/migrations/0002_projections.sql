-- Current state derived from the events, updated in the archiver's
-- transaction. Each row remembers the newest event applied (last_ms, last_seq)
-- so that a batch archived late (an entry reclaimed from a crashed archiver)
-- never overwrites newer state.

CREATE TABLE resources (
    resource_id      text        PRIMARY KEY,
    partition        integer     NOT NULL,
    resource_type    text,
    capacity         bigint,
    state            text,
    opens_at         bigint,
    closes_at        bigint,
    waitlist_enabled boolean,
    max_per_request  bigint,
    max_per_client   bigint,
    rules_version    bigint,
    rules_ms         bigint,
    rules_seq        bigint,
    version          bigint,
    remaining        bigint,
    reserved         bigint GENERATED ALWAYS AS (capacity - remaining) STORED,
    created_at       timestamptz,
    updated_at       timestamptz,
    last_ms          bigint      NOT NULL,
    last_seq         bigint      NOT NULL
);

COMMENT ON COLUMN resources.remaining IS 'From the newest event carrying it; reserved = capacity - remaining.';

CREATE TABLE reservations (
    reservation_id  text        PRIMARY KEY,
    resource_id     text        NOT NULL,
    partition       integer     NOT NULL,
    client_id       text,
    quantity        bigint,
    request_id      text,
    status          text        NOT NULL,
    version         bigint,
    confirmed_us    bigint,
    cancelled_us    bigint,
    confirmed_at    timestamptz GENERATED ALWAYS AS (resv_time(confirmed_us)) STORED,
    cancelled_at    timestamptz GENERATED ALWAYS AS (resv_time(cancelled_us)) STORED
);

CREATE INDEX reservations_resource ON reservations (resource_id);

CREATE TABLE waitlist_entries (
    entry_id        text        PRIMARY KEY,
    resource_id     text        NOT NULL,
    partition       integer     NOT NULL,
    client_id       text,
    quantity        bigint,
    status          text        NOT NULL,
    reservation_id  text,
    joined_at       timestamptz,
    notified_at     timestamptz,
    fulfilled_at    timestamptz,
    left_at         timestamptz,
    last_ms         bigint      NOT NULL,
    last_seq        bigint      NOT NULL
);

CREATE INDEX waitlist_entries_resource ON waitlist_entries (resource_id, status);
