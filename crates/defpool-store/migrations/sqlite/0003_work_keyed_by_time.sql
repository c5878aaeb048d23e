-- Work rows keyed by time: (coin, minute, user, worker, epoch, upstream). A batch's rows then
-- land next to each other at the end of the table (a few pages per batch) instead of one page
-- per worker spread over the whole table, which made a batch's cost grow with the table. The
-- accounting reads (per coin and minute) use the key directly, so `work_by_coin` goes.
--
-- A worker's lifetime figures and a user's per-minute rollup can no longer be read from work
-- rows by key. They are folded instead: `work_fold.folded_before_ms` says which minutes (those
-- before it) are already added to the `folded_*` columns of `workers` and to `user_minute`.
-- Reads take the folded figures plus the work rows from that minute on, a window of an hour
-- or two that they walk minute by minute. A batch then writes one row per record, and the
-- user rollup only for minutes already folded.
CREATE TABLE work_by_time (
    user_name TEXT NOT NULL,
    worker TEXT NOT NULL,
    coin TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    upstream TEXT NOT NULL,
    minute_ms INTEGER NOT NULL,
    work0 INTEGER NOT NULL CHECK (work0 BETWEEN 0 AND 4294967295),
    work1 INTEGER NOT NULL CHECK (work1 BETWEEN 0 AND 4294967295),
    work2 INTEGER NOT NULL CHECK (work2 BETWEEN 0 AND 4294967295),
    work3 INTEGER NOT NULL CHECK (work3 BETWEEN 0 AND 4294967295),
    accepted_shares INTEGER NOT NULL,
    late_shares INTEGER NOT NULL,
    rejected_shares INTEGER NOT NULL,
    stale_shares INTEGER NOT NULL,
    first_seen_ms INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL,
    last_share_ms INTEGER,
    PRIMARY KEY (coin, minute_ms, user_name, worker, epoch, upstream)
) WITHOUT ROWID;
INSERT INTO work_by_time (user_name, worker, coin, epoch, upstream, minute_ms, work0, work1,
    work2, work3, accepted_shares, late_shares, rejected_shares, stale_shares, first_seen_ms,
    last_seen_ms, last_share_ms)
SELECT user_name, worker, coin, epoch, upstream, minute_ms, work0, work1, work2, work3,
    accepted_shares, late_shares, rejected_shares, stale_shares, first_seen_ms, last_seen_ms,
    last_share_ms FROM work;
DROP TABLE work;
ALTER TABLE work_by_time RENAME TO work;

ALTER TABLE workers ADD COLUMN folded_accepted_shares INTEGER NOT NULL DEFAULT 0;
ALTER TABLE workers ADD COLUMN folded_late_shares INTEGER NOT NULL DEFAULT 0;
ALTER TABLE workers ADD COLUMN folded_rejected_shares INTEGER NOT NULL DEFAULT 0;
ALTER TABLE workers ADD COLUMN folded_last_seen_ms INTEGER;
ALTER TABLE workers ADD COLUMN folded_last_share_ms INTEGER;

-- One row. Existing work starts unfolded; the first batch past the fold horizon folds it.
-- `user_minute` held every minute; the fold rebuilds it from the work rows (it is their sum
-- per user, minute and coin), so it starts empty rather than counted twice.
DELETE FROM user_minute;
CREATE TABLE work_fold (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    folded_before_ms INTEGER NOT NULL
);
INSERT INTO work_fold (id, folded_before_ms) VALUES (1, 0);
