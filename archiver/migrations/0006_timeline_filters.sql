-- The console filters a resource's timeline by client id or by event type
-- and pages it by (ms, seq) both ways. Without these, such a page was a
-- sequential scan of the whole table (~95 ms at 200,000 events, growing with
-- it); with them it is an index range scan (under 1 ms at 100,000 events of
-- one resource). Filters by request id use events_request; by outcome, the
-- resource's order index (most events decide something).
CREATE INDEX events_resource_client_order ON events (resource_id, client_id, ms, seq);
CREATE INDEX events_resource_type_order ON events (resource_id, type, ms, seq);
