-- A key per event, chosen by the node that records it, so that storing an
-- event twice keeps one row: a write the audit writer gave up on (timed out,
-- then spooled) may still land, and a spooled batch may be replayed after a
-- crash between its commit and the spool file's removal. Rows written before
-- this migration have none (NULLs never conflict).
ALTER TABLE events ADD COLUMN event_key TEXT;
CREATE UNIQUE INDEX events_event_key ON events (event_key);
