-- Webhook delivery retention (RESV_WEBHOOK_RETENTION_DAYS, notifier/retention.py):
-- finished deliveries are deleted some days after they finished, so the
-- delivery log stops growing with every event ever delivered.

-- When a delivery last left PENDING (DELIVERED, FAILED or CANCELLED); NULL
-- while it is PENDING. A trigger keeps it rather than each statement that
-- changes a status, so every path (the notifier's results, 410 Gone, a
-- deleted endpoint, an operator's retry, and a notifier of the previous
-- release still running during an upgrade) keeps it right.
ALTER TABLE webhook_deliveries ADD COLUMN finished_at timestamptz;

COMMENT ON COLUMN webhook_deliveries.finished_at IS 'When the delivery last left PENDING; NULL while PENDING.';

-- Deliveries finished before this migration: their last known moment (the
-- delivery, else the last attempt's planned time, else the creation).
UPDATE webhook_deliveries SET finished_at = greatest(created_at, next_attempt_at, delivered_at)
WHERE status <> 'PENDING';

CREATE FUNCTION resv_webhook_finished() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.finished_at := CASE WHEN NEW.status = 'PENDING' THEN NULL ELSE now() END;
    RETURN NEW;
END $$;

-- Fires only when the status really changes (a failed attempt writes
-- PENDING over PENDING: no cost on that path).
CREATE TRIGGER webhook_deliveries_finished BEFORE UPDATE OF status ON webhook_deliveries
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION resv_webhook_finished();

-- What retention deletes next: finished deliveries, oldest first. PENDING
-- rows are not in it, so they can never be picked.
CREATE INDEX webhook_deliveries_finished ON webhook_deliveries (finished_at) WHERE status <> 'PENDING';

-- The deliveries retention deleted, by status: /metrics adds them to the
-- rows still there, so resv_webhook_deliveries and resv_webhook_attempts_total
-- do not drop when old rows go.
CREATE TABLE webhook_delivery_totals (
    status     text   PRIMARY KEY CHECK (status IN ('DELIVERED', 'FAILED', 'CANCELLED')),
    deliveries bigint NOT NULL,
    attempts   bigint NOT NULL
);
