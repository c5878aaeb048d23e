-- DefPool store, PostgreSQL: the initial schema. Tables are created in the first schema of the
-- connection's search_path.
--
-- Times are Unix milliseconds (BIGINT). Money is BIGINT in the coin's smallest unit.
-- Text compares bytewise (COLLATE "C"): the order SQLite and Rust use, and fast B-tree keys.
-- Tables every batch updates in place leave room on their pages (fillfactor) for HOT updates.
-- Work (a u128 of expected hashes) is NUMERIC(39,0) within u128's range, so SUM() is exact.

CREATE DOMAIN work_units AS NUMERIC(39, 0)
    CHECK (VALUE >= 0 AND VALUE <= 340282366920938463463374607431768211455);

-- Exactly-once batches: the highest sequence applied per proxy (or adapter).
CREATE TABLE proxies (
    proxy_id TEXT COLLATE "C" PRIMARY KEY,
    last_sequence BIGINT NOT NULL CHECK (last_sequence >= 0),
    last_batch_created_ms BIGINT NOT NULL,
    applied_at_ms BIGINT NOT NULL
) WITH (fillfactor = 80);

CREATE TABLE users (
    user_name TEXT COLLATE "C" PRIMARY KEY,
    payout_address TEXT COLLATE "C",
    first_seen_ms BIGINT NOT NULL
) WITH (fillfactor = 80);

CREATE TABLE workers (
    user_name TEXT COLLATE "C" NOT NULL,
    worker TEXT COLLATE "C" NOT NULL,
    first_seen_ms BIGINT NOT NULL,
    last_seen_ms BIGINT NOT NULL,
    -- The end of the last period with accepted (or late) shares.
    last_share_ms BIGINT,
    accepted_shares BIGINT NOT NULL DEFAULT 0,
    late_shares BIGINT NOT NULL DEFAULT 0,
    rejected_shares BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (user_name, worker)
) WITH (fillfactor = 80);

-- Rejected shares per worker and reason code (`stale-share`, `duplicate-share`, ...).
CREATE TABLE worker_rejects (
    user_name TEXT COLLATE "C" NOT NULL,
    worker TEXT COLLATE "C" NOT NULL,
    reason TEXT COLLATE "C" NOT NULL,
    shares BIGINT NOT NULL,
    PRIMARY KEY (user_name, worker, reason)
) WITH (fillfactor = 80);

-- Credited work (accepted + late) per user, worker, coin, epoch, upstream and minute. A record
-- goes to the minute of the end of its period.
CREATE TABLE work (
    user_name TEXT COLLATE "C" NOT NULL,
    worker TEXT COLLATE "C" NOT NULL,
    coin TEXT COLLATE "C" NOT NULL,
    epoch BIGINT NOT NULL,
    upstream TEXT COLLATE "C" NOT NULL,
    minute_ms BIGINT NOT NULL,
    work work_units NOT NULL,
    accepted_shares BIGINT NOT NULL,
    late_shares BIGINT NOT NULL,
    rejected_shares BIGINT NOT NULL,
    stale_shares BIGINT NOT NULL,
    PRIMARY KEY (user_name, worker, coin, epoch, upstream, minute_ms)
) WITH (fillfactor = 80);
CREATE INDEX work_by_coin ON work (coin, minute_ms);

-- Rollups per minute for charts: per user and coin, and per coin.
CREATE TABLE user_minute (
    user_name TEXT COLLATE "C" NOT NULL,
    coin TEXT COLLATE "C" NOT NULL,
    minute_ms BIGINT NOT NULL,
    work work_units NOT NULL,
    shares BIGINT NOT NULL,
    rejected_shares BIGINT NOT NULL,
    stale_shares BIGINT NOT NULL,
    PRIMARY KEY (user_name, minute_ms, coin)
) WITH (fillfactor = 80);

CREATE TABLE coin_minute (
    coin TEXT COLLATE "C" NOT NULL,
    minute_ms BIGINT NOT NULL,
    work work_units NOT NULL,
    shares BIGINT NOT NULL,
    rejected_shares BIGINT NOT NULL,
    stale_shares BIGINT NOT NULL,
    PRIMARY KEY (coin, minute_ms)
) WITH (fillfactor = 80);

-- Blocks by hash: a proxy's candidate and the adapter's found / rejected / status events merge
-- into one row; `phase` is candidate, found, rejected, immature, matured or orphaned.
CREATE TABLE blocks (
    block_hash TEXT COLLATE "C" PRIMARY KEY,
    coin TEXT COLLATE "C" NOT NULL,
    height BIGINT,
    phase TEXT COLLATE "C" NOT NULL,
    reward BIGINT,
    adapter TEXT COLLATE "C",
    found_by TEXT COLLATE "C",
    upstream TEXT COLLATE "C",
    user_name TEXT COLLATE "C",
    worker TEXT COLLATE "C",
    epoch BIGINT,
    confirmations BIGINT,
    reason TEXT COLLATE "C",
    first_seen_ms BIGINT NOT NULL,
    found_at_ms BIGINT,
    updated_at_ms BIGINT NOT NULL
);
CREATE INDEX blocks_by_coin ON blocks (coin, first_seen_ms);

-- Every block event as it arrived: the history of each block's phase.
CREATE TABLE block_events (
    id BIGSERIAL PRIMARY KEY,
    block_hash TEXT COLLATE "C" NOT NULL,
    phase TEXT COLLATE "C" NOT NULL,
    confirmations BIGINT,
    detail TEXT COLLATE "C",
    at_ms BIGINT NOT NULL,
    proxy_id TEXT COLLATE "C" NOT NULL,
    sequence BIGINT NOT NULL
);
CREATE INDEX block_events_by_hash ON block_events (block_hash, id);

CREATE TABLE upstream_health (
    id BIGSERIAL PRIMARY KEY,
    proxy_id TEXT COLLATE "C" NOT NULL,
    upstream TEXT COLLATE "C" NOT NULL,
    coin TEXT COLLATE "C" NOT NULL,
    state TEXT COLLATE "C" NOT NULL,
    reason TEXT COLLATE "C" NOT NULL,
    at_ms BIGINT NOT NULL
);

-- Switch timings as the proxies reported them (`body` is the event's JSON).
CREATE TABLE switch_timings (
    id BIGSERIAL PRIMARY KEY,
    proxy_id TEXT COLLATE "C" NOT NULL,
    algorithm TEXT COLLATE "C" NOT NULL,
    to_epoch BIGINT NOT NULL,
    at_ms BIGINT NOT NULL,
    body JSONB NOT NULL
);

-- The double-entry ledger: each transaction's entries sum to zero per coin.
CREATE TABLE ledger_txns (
    txn_id TEXT COLLATE "C" PRIMARY KEY,
    memo TEXT COLLATE "C" NOT NULL,
    posted_at_ms BIGINT NOT NULL
);
CREATE TABLE ledger_entries (
    id BIGSERIAL PRIMARY KEY,
    txn_id TEXT COLLATE "C" NOT NULL REFERENCES ledger_txns (txn_id),
    account TEXT COLLATE "C" NOT NULL,
    coin TEXT COLLATE "C" NOT NULL,
    amount BIGINT NOT NULL
);
CREATE INDEX ledger_entries_by_txn ON ledger_entries (txn_id);
CREATE INDEX ledger_entries_by_account ON ledger_entries (account, coin, id);
CREATE INDEX ledger_entries_by_coin ON ledger_entries (coin);
-- Balances kept up to date in the same transaction as the entries.
CREATE TABLE balances (
    account TEXT COLLATE "C" NOT NULL,
    coin TEXT COLLATE "C" NOT NULL,
    amount BIGINT NOT NULL,
    PRIMARY KEY (account, coin)
) WITH (fillfactor = 80);

-- Server state.
CREATE TABLE decisions (
    id BIGSERIAL PRIMARY KEY,
    group_name TEXT COLLATE "C" NOT NULL,
    algorithm TEXT COLLATE "C" NOT NULL,
    epoch BIGINT NOT NULL,
    coin TEXT COLLATE "C",
    reason TEXT COLLATE "C" NOT NULL,
    inputs JSONB NOT NULL,
    at_ms BIGINT NOT NULL
);

CREATE TABLE assignments (
    group_name TEXT COLLATE "C" NOT NULL,
    algorithm TEXT COLLATE "C" NOT NULL,
    epoch BIGINT NOT NULL,
    body JSONB NOT NULL,
    saved_at_ms BIGINT NOT NULL,
    PRIMARY KEY (group_name, algorithm)
);

CREATE TABLE coins (
    ticker TEXT COLLATE "C" PRIMARY KEY,
    enabled BOOLEAN NOT NULL,
    updated_at_ms BIGINT NOT NULL
);

CREATE TABLE settings (
    key TEXT COLLATE "C" PRIMARY KEY,
    value JSONB NOT NULL,
    updated_at_ms BIGINT NOT NULL
);

CREATE TABLE audit_log (
    id BIGSERIAL PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    actor TEXT COLLATE "C" NOT NULL,
    action TEXT COLLATE "C" NOT NULL,
    details JSONB NOT NULL
);

CREATE TABLE upstreams (
    name TEXT COLLATE "C" PRIMARY KEY,
    coin TEXT COLLATE "C" NOT NULL,
    protocol TEXT COLLATE "C" NOT NULL,
    fee_bps INTEGER NOT NULL CHECK (fee_bps BETWEEN 0 AND 10000),
    payout_scheme TEXT COLLATE "C" NOT NULL,
    switch_cost_secs BIGINT NOT NULL CHECK (switch_cost_secs >= 0),
    details JSONB NOT NULL,
    enabled BOOLEAN NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
