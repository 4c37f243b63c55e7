-- The process whose sandbox dialer plays a call, while the call is under way
-- (domain.calls.player; NULL otherwise): after a process stops, the calls it was playing
-- are found through the partial index, which holds only those calls, and ended.
-- Calls stored before this version carry no player: NULL is right for them all.
ALTER TABLE calls ADD COLUMN played_by text;
CREATE INDEX calls_played ON calls (played_by) WHERE played_by IS NOT NULL;
