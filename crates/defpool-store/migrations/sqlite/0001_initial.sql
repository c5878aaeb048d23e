-- DefPool store, SQLite: the initial schema.
--
-- Times are Unix milliseconds (INTEGER). Money is INTEGER in the coin's smallest unit.
-- Work (a u128 of expected hashes) is stored as four 32-bit limbs, least significant first:
--   work = work0 + work1 * 2^32 + work2 * 2^64 + work3 * 2^96,  every limb in [0, 2^32).
-- SQLite's integers are 64-bit, so SUM() of each limb stays exact over up to 2^31 rows and the
-- store assembles totals in Rust; upserts add limb-wise and carry in SQL.

-- Exactly-once batches: the highest sequence applied per proxy (or adapter).
CREATE TABLE proxies (
    proxy_id TEXT PRIMARY KEY,
    last_sequence INTEGER NOT NULL CHECK (last_sequence >= 0),
    last_batch_created_ms INTEGER NOT NULL,
    applied_at_ms INTEGER NOT NULL
);

CREATE TABLE users (
    user_name TEXT PRIMARY KEY,
    payout_address TEXT,
    first_seen_ms INTEGER NOT NULL
);

CREATE TABLE workers (
    user_name TEXT NOT NULL,
    worker TEXT NOT NULL,
    first_seen_ms INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL,
    -- The end of the last period with accepted (or late) shares.
    last_share_ms INTEGER,
    accepted_shares INTEGER NOT NULL DEFAULT 0,
    late_shares INTEGER NOT NULL DEFAULT 0,
    rejected_shares INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user_name, worker)
) WITHOUT ROWID;

-- Rejected shares per worker and reason code (`stale-share`, `duplicate-share`, ...).
CREATE TABLE worker_rejects (
    user_name TEXT NOT NULL,
    worker TEXT NOT NULL,
    reason TEXT NOT NULL,
    shares INTEGER NOT NULL,
    PRIMARY KEY (user_name, worker, reason)
) WITHOUT ROWID;

-- Credited work (accepted + late) per user, worker, coin, epoch, upstream and minute. A record
-- goes to the minute of the end of its period.
CREATE TABLE work (
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
    PRIMARY KEY (user_name, worker, coin, epoch, upstream, minute_ms)
) WITHOUT ROWID;
CREATE INDEX work_by_coin ON work (coin, minute_ms);

-- Rollups per minute for charts: per user and coin, and per coin.
CREATE TABLE user_minute (
    user_name TEXT NOT NULL,
    coin TEXT NOT NULL,
    minute_ms INTEGER NOT NULL,
    work0 INTEGER NOT NULL CHECK (work0 BETWEEN 0 AND 4294967295),
    work1 INTEGER NOT NULL CHECK (work1 BETWEEN 0 AND 4294967295),
    work2 INTEGER NOT NULL CHECK (work2 BETWEEN 0 AND 4294967295),
    work3 INTEGER NOT NULL CHECK (work3 BETWEEN 0 AND 4294967295),
    shares INTEGER NOT NULL,
    rejected_shares INTEGER NOT NULL,
    stale_shares INTEGER NOT NULL,
    PRIMARY KEY (user_name, minute_ms, coin)
) WITHOUT ROWID;

CREATE TABLE coin_minute (
    coin TEXT NOT NULL,
    minute_ms INTEGER NOT NULL,
    work0 INTEGER NOT NULL CHECK (work0 BETWEEN 0 AND 4294967295),
    work1 INTEGER NOT NULL CHECK (work1 BETWEEN 0 AND 4294967295),
    work2 INTEGER NOT NULL CHECK (work2 BETWEEN 0 AND 4294967295),
    work3 INTEGER NOT NULL CHECK (work3 BETWEEN 0 AND 4294967295),
    shares INTEGER NOT NULL,
    rejected_shares INTEGER NOT NULL,
    stale_shares INTEGER NOT NULL,
    PRIMARY KEY (coin, minute_ms)
) WITHOUT ROWID;

-- Blocks by hash: a proxy's candidate and the adapter's found / rejected / status events merge
-- into one row; `phase` is candidate, found, rejected, immature, matured or orphaned.
CREATE TABLE blocks (
    block_hash TEXT PRIMARY KEY,
    coin TEXT NOT NULL,
    height INTEGER,
    phase TEXT NOT NULL,
    reward INTEGER,
    adapter TEXT,
    found_by TEXT,
    upstream TEXT,
    user_name TEXT,
    worker TEXT,
    epoch INTEGER,
    confirmations INTEGER,
    reason TEXT,
    first_seen_ms INTEGER NOT NULL,
    found_at_ms INTEGER,
    updated_at_ms INTEGER NOT NULL
);
CREATE INDEX blocks_by_coin ON blocks (coin, first_seen_ms);

-- Every block event as it arrived: the history of each block's phase.
CREATE TABLE block_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    block_hash TEXT NOT NULL,
    phase TEXT NOT NULL,
    confirmations INTEGER,
    detail TEXT,
    at_ms INTEGER NOT NULL,
    proxy_id TEXT NOT NULL,
    sequence INTEGER NOT NULL
);
CREATE INDEX block_events_by_hash ON block_events (block_hash, id);

CREATE TABLE upstream_health (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    proxy_id TEXT NOT NULL,
    upstream TEXT NOT NULL,
    coin TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT NOT NULL,
    at_ms INTEGER NOT NULL
);

-- Switch timings as the proxies reported them (`body` is the event's JSON).
CREATE TABLE switch_timings (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    proxy_id TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    to_epoch INTEGER NOT NULL,
    at_ms INTEGER NOT NULL,
    body TEXT NOT NULL
);

-- The double-entry ledger: each transaction's entries sum to zero per coin.
CREATE TABLE ledger_txns (
    txn_id TEXT PRIMARY KEY,
    memo TEXT NOT NULL,
    posted_at_ms INTEGER NOT NULL
);
CREATE TABLE ledger_entries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    txn_id TEXT NOT NULL REFERENCES ledger_txns (txn_id),
    account TEXT NOT NULL,
    coin TEXT NOT NULL,
    amount INTEGER NOT NULL
);
CREATE INDEX ledger_entries_by_txn ON ledger_entries (txn_id);
CREATE INDEX ledger_entries_by_account ON ledger_entries (account, coin, id);
CREATE INDEX ledger_entries_by_coin ON ledger_entries (coin);
-- Balances kept up to date in the same transaction as the entries.
CREATE TABLE balances (
    account TEXT NOT NULL,
    coin TEXT NOT NULL,
    amount INTEGER NOT NULL,
    PRIMARY KEY (account, coin)
) WITHOUT ROWID;

-- Server state.
CREATE TABLE decisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    group_name TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    coin TEXT,
    reason TEXT NOT NULL,
    inputs TEXT NOT NULL,
    at_ms INTEGER NOT NULL
);

CREATE TABLE assignments (
    group_name TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    body TEXT NOT NULL,
    saved_at_ms INTEGER NOT NULL,
    PRIMARY KEY (group_name, algorithm)
);

CREATE TABLE coins (
    ticker TEXT PRIMARY KEY,
    enabled INTEGER NOT NULL CHECK (enabled IN (0, 1)),
    updated_at_ms INTEGER NOT NULL
);

CREATE TABLE settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    updated_at_ms INTEGER NOT NULL
);

CREATE TABLE audit_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms INTEGER NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    details TEXT NOT NULL
);

CREATE TABLE upstreams (
    name TEXT PRIMARY KEY,
    coin TEXT NOT NULL,
    protocol TEXT NOT NULL,
    fee_bps INTEGER NOT NULL CHECK (fee_bps BETWEEN 0 AND 10000),
    payout_scheme TEXT NOT NULL,
    switch_cost_secs INTEGER NOT NULL CHECK (switch_cost_secs >= 0),
    details TEXT NOT NULL,
    enabled INTEGER NOT NULL CHECK (enabled IN (0, 1)),
    updated_at_ms INTEGER NOT NULL
);
