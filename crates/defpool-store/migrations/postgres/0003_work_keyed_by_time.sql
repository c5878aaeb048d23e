-- Work rows keyed by time: (coin, minute, user, worker, epoch, upstream). A batch's rows then
-- land next to each other at the right edge of the key's index (a few pages per batch) instead
-- of one page per worker spread over the whole index, which made a batch's cost grow with the
-- table. The accounting reads (per coin and minute) use the key directly, so `work_by_coin`
-- goes.
--
-- A worker's lifetime figures and a user's per-minute rollup can no longer be read from work
-- rows by key. They are folded instead: `work_fold.folded_before_ms` says which minutes (those
-- before it) are already added to the `folded_*` columns of `workers` and to `user_minute`.
-- Reads take the folded figures plus the work rows from that minute on, a window of an hour
-- or two that they walk minute by minute. A batch then writes one row per record, and the
-- user rollup only for minutes already folded.
ALTER TABLE work DROP CONSTRAINT work_pkey;
ALTER TABLE work ADD PRIMARY KEY (coin, minute_ms, user_name, worker, epoch, upstream);
DROP INDEX work_by_coin;

ALTER TABLE workers ADD COLUMN folded_accepted_shares BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN folded_late_shares BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN folded_rejected_shares BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN folded_last_seen_ms BIGINT,
    ADD COLUMN folded_last_share_ms BIGINT;

-- One row. Existing work starts unfolded; the first batch past the fold horizon folds it.
-- `user_minute` held every minute; the fold rebuilds it from the work rows (it is their sum
-- per user, minute and coin), so it starts empty rather than counted twice.
DELETE FROM user_minute;
CREATE TABLE work_fold (
    id SMALLINT PRIMARY KEY CHECK (id = 1),
    folded_before_ms BIGINT NOT NULL
);
INSERT INTO work_fold (id, folded_before_ms) VALUES (1, 0);
