//! The DefPool server.
//!
//! * [`control`]: the control plane: proxies (and coin adapters) connect, authenticate with
//!   their token, get the current assignments and every change, and send batches that the store
//!   applies exactly once, each acknowledged only after its transaction committed.
//! * [`decision`]: the decision loop: market data ([`market`]) → profitability → the switching
//!   engine per (group, algorithm) → assignments stored, pushed, recorded with their reasons.
//! * [`ledger`]: the ledger service: matured solo blocks credited by PPLNS (reversed if
//!   orphaned), external pool payouts attributed by PROP; idempotent, reconciled on a timer.
//! * [`api`]: the HTTP API and live feed.
//! * [`server`]: startup (store, migrations, listeners, tasks) and shutdown.

pub mod api;
pub mod control;
pub mod decision;
pub mod ledger;
pub mod market;
pub mod server;
pub mod state;
pub mod stats;
