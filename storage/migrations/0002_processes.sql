-- Several server processes on one database (storage/postgres_presence.py).
--
-- Each serving process takes a number from this sequence and holds a session advisory lock
-- on (PRESENCE, number) while it runs: pg_locks is then the list of live processes, and a
-- process that dies (even by kill -9) leaves it as soon as its connection closes.
CREATE SEQUENCE server_processes AS integer CYCLE;

-- The delivering process follows the outbox by the transactions that queued its events:
-- `queued_tx` is set when an event is recorded or queued again, and the delivering process
-- reads the pending events of transactions at or past the oldest one still running at its
-- previous read (pg_snapshot_xmin), so that none committed late is missed.
ALTER TABLE webhook_events ADD COLUMN queued_tx xid8 NOT NULL DEFAULT pg_current_xact_id();
CREATE INDEX webhook_events_queued ON webhook_events (queued_tx) WHERE status = 'pending';
