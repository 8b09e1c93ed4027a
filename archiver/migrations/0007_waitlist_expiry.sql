-- Waiting lists with a notify window (issue 14): the rule, and the entry's
-- deadline and expiry (status EXPIRED, from WAITLIST_EXPIRED events).

ALTER TABLE resources ADD COLUMN notify_window_ms bigint;

ALTER TABLE waitlist_entries ADD COLUMN expires_at timestamptz;
ALTER TABLE waitlist_entries ADD COLUMN expired_at timestamptz;

COMMENT ON COLUMN waitlist_entries.expires_at IS 'When the notification lapses (notified_at + the notify window then in force).';

-- Webhooks deliver the waiting list's new events (notifier/events.py).
INSERT INTO webhook_event_types (stream_type, event_type) VALUES
    ('WAITLIST_EXPIRED', 'waitlist.expired'),
    ('WAITLIST_SWEPT', 'waitlist.swept');
