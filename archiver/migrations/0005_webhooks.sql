-- Webhooks: endpoints, and one delivery row per (endpoint, event).
--
-- The audit is the outbox: a statement trigger on `events` creates the
-- delivery rows in the archiver's own transaction, from the rows that
-- transaction really inserted (a re-delivered entry, ON CONFLICT DO NOTHING,
-- is not in the transition table). So every archived event is fanned out
-- exactly once, to the endpoints enabled when it was committed, and a new
-- endpoint receives the events committed after its creation.

-- The delivered event types: a stream type and its public name. Replays of
-- an earlier decision (*_REPLAYED) are not delivered, so they are not here.
-- resv.notifier.events.EVENT_TYPES is the same table (a test compares them).
CREATE TABLE webhook_event_types (
    stream_type text PRIMARY KEY,
    event_type  text NOT NULL UNIQUE
);

INSERT INTO webhook_event_types (stream_type, event_type) VALUES
    ('RESERVATION_CONFIRMED', 'reservation.confirmed'),
    ('RESERVATION_REJECTED', 'reservation.rejected'),
    ('RESERVATION_CANCELLED', 'reservation.cancelled'),
    ('CANCEL_REJECTED', 'reservation.cancel_rejected'),
    ('WAITLIST_JOINED', 'waitlist.joined'),
    ('WAITLIST_REJECTED', 'waitlist.join_rejected'),
    ('WAITLIST_NOTIFIED', 'waitlist.notified'),
    ('WAITLIST_FULFILLED', 'waitlist.fulfilled'),
    ('WAITLIST_LEFT', 'waitlist.left'),
    ('WAITLIST_LEAVE_REJECTED', 'waitlist.leave_rejected'),
    ('RESOURCE_CREATED', 'resource.created'),
    ('RESOURCE_REJECTED', 'resource.create_rejected'),
    ('RULES_CHANGED', 'resource.changed'),
    ('RULES_REJECTED', 'resource.change_rejected');

CREATE TABLE webhooks (
    webhook_id            text        PRIMARY KEY,
    url                   text        NOT NULL,
    event_types           text[]      NOT NULL,
    resource_ids          text[],
    description           text,
    enabled               boolean     NOT NULL DEFAULT true,
    disabled_reason       text,
    -- Kept so deliveries can be signed (HMAC needs the secret itself); only
    -- ever returned at creation and rotation.
    secret                text        NOT NULL,
    previous_secret       text,
    previous_secret_until timestamptz,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    deleted_at            timestamptz,
    -- The notifier delivering to this endpoint (one at a time: stream order,
    -- a concurrency bound over all notifiers) and until when it holds it.
    owner                 text,
    owner_until           timestamptz
);

COMMENT ON COLUMN webhooks.event_types IS 'Public event type names, or {*} for every delivered type.';
COMMENT ON COLUMN webhooks.resource_ids IS 'NULL: every resource.';

CREATE INDEX webhooks_live ON webhooks (created_at) WHERE deleted_at IS NULL;

CREATE TABLE webhook_deliveries (
    -- The webhook-id header: the same on every attempt, so a receiver
    -- deduplicates on it.
    delivery_id     text        PRIMARY KEY DEFAULT 'msg_' || replace(gen_random_uuid()::text, '-', ''),
    webhook_id      text        NOT NULL REFERENCES webhooks,
    -- The event (NULL for webhook.test deliveries, whose body is `payload`).
    partition       integer,
    stream_id       text,
    ms              bigint,
    seq             bigint,
    resource_id     text,
    event_type      text        NOT NULL,
    payload         jsonb,
    decided_at      timestamptz,
    status          text        NOT NULL DEFAULT 'PENDING'
                    CHECK (status IN ('PENDING', 'DELIVERED', 'FAILED', 'CANCELLED')),
    attempts        integer     NOT NULL DEFAULT 0,
    last_status_code integer,
    last_error      text,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    -- An attempt in flight: no other attempt before this (the attempt's
    -- timeout plus a margin).
    lease_until     timestamptz,
    delivered_at    timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (webhook_id, partition, stream_id)
);

COMMENT ON COLUMN webhook_deliveries.decided_at IS 'Server time of the decision: commit-to-delivery latency.';

-- What a notifier takes next for an endpoint, in stream order.
CREATE INDEX webhook_deliveries_pending ON webhook_deliveries (webhook_id, ms, seq) WHERE status = 'PENDING';
-- Whether an endpoint has something due (a notifier's poll).
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (webhook_id, next_attempt_at) WHERE status = 'PENDING';
-- An endpoint's delivery log, newest first.
CREATE INDEX webhook_deliveries_log ON webhook_deliveries (webhook_id, created_at DESC, delivery_id DESC);
CREATE INDEX webhook_deliveries_delivered ON webhook_deliveries (delivered_at) WHERE delivered_at IS NOT NULL;

CREATE FUNCTION resv_webhook_fanout() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- The common case costs one index probe.
    IF NOT EXISTS (SELECT 1 FROM webhooks WHERE enabled AND deleted_at IS NULL) THEN
        RETURN NULL;
    END IF;
    INSERT INTO webhook_deliveries (webhook_id, partition, stream_id, ms, seq, resource_id,
                                    event_type, decided_at)
    SELECT w.webhook_id, i.partition, i.stream_id, i.ms, i.seq, i.resource_id, t.event_type, i.server_time
    FROM inserted i
    JOIN webhook_event_types t ON t.stream_type = i.type
    JOIN webhooks w ON w.enabled AND w.deleted_at IS NULL
         AND ('*' = ANY (w.event_types) OR t.event_type = ANY (w.event_types))
         AND (w.resource_ids IS NULL OR i.resource_id = ANY (w.resource_ids))
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END $$;

CREATE TRIGGER events_webhook_fanout AFTER INSERT ON events
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION resv_webhook_fanout();
