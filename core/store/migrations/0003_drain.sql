-- Draining a host: no new placements there until undrained; runs in flight go on.
ALTER TABLE hosts ADD COLUMN drained_by VARCHAR;
ALTER TABLE hosts ADD COLUMN drain_reason VARCHAR;
