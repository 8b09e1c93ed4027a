-- Who asked for each decision: the `actor` field the Lua records (the API's
-- key id, e.g. client#1, or an ops script's name; NULL when none was given).
-- Generated from the verbatim fields, so every archiver fills it, whatever
-- its release (one of the previous release during a rolling upgrade too),
-- and it can never disagree with `fields`.
ALTER TABLE events ADD COLUMN actor text GENERATED ALWAYS AS (fields->>'actor') STORED;

COMMENT ON COLUMN events.actor IS 'Who asked (fields.actor): an API key id or an ops script''s name.';
