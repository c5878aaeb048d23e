-- What changes with every batch about a worker (last sighting, last share, share counts) moves
-- from `workers` onto the work rows a batch writes anyway, so a batch writes one row per record
-- instead of a work row and a worker row. `workers` stays the registry (who exists, since
-- when); a worker's figures are aggregates over its work rows. A user's last sighting is kept
-- on its per-minute rollup rows.

ALTER TABLE work ADD COLUMN first_seen_ms INTEGER NOT NULL DEFAULT 0;
ALTER TABLE work ADD COLUMN last_seen_ms INTEGER NOT NULL DEFAULT 0;
ALTER TABLE work ADD COLUMN last_share_ms INTEGER;
ALTER TABLE user_minute ADD COLUMN last_seen_ms INTEGER NOT NULL DEFAULT 0;

-- Existing rows: the worker's stored extremes, bounded by the row's minute, so the aggregates
-- over a worker's rows (MIN first, MAX last) equal what `workers` held, and the latest row of
-- a worker carries its exact last sighting.
UPDATE work SET
    first_seen_ms = COALESCE((SELECT w.first_seen_ms FROM workers w
        WHERE w.user_name = work.user_name AND w.worker = work.worker), minute_ms),
    last_seen_ms = min(minute_ms + 60000, COALESCE((SELECT w.last_seen_ms FROM workers w
        WHERE w.user_name = work.user_name AND w.worker = work.worker), minute_ms)),
    last_share_ms = CASE WHEN accepted_shares + late_shares > 0 THEN
        min(minute_ms + 60000, COALESCE((SELECT w.last_share_ms FROM workers w
        WHERE w.user_name = work.user_name AND w.worker = work.worker), minute_ms)) END;
UPDATE user_minute SET last_seen_ms = min(minute_ms + 60000, COALESCE((SELECT MAX(w.last_seen_ms)
    FROM workers w WHERE w.user_name = user_minute.user_name), minute_ms));

ALTER TABLE workers DROP COLUMN last_seen_ms;
ALTER TABLE workers DROP COLUMN last_share_ms;
ALTER TABLE workers DROP COLUMN accepted_shares;
ALTER TABLE workers DROP COLUMN late_shares;
ALTER TABLE workers DROP COLUMN rejected_shares;
