//! The DefPool server.
//!
//! * [`control`]: the control plane: proxies (and coin adapters) connect, authenticate with
//!   their token, get the current assignments and every change, and send batches that the store
//!   applies exactly once, each acknowledged only after its transaction committed.
//! * [`api`]: the HTTP API (assignments so far).
//! * [`server`]: startup (store, migrations, listeners) and shutdown.
//!
//! The decision loop, the ledger service, the REST API and the live feed join here with the
//! rest of the server issue.

pub mod api;
pub mod control;
pub mod ledger;
pub mod server;
pub mod state;
