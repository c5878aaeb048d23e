//! The DefPool proxy: the miners' gateway.
//!
//! * [`downstream`]: SV1 and SV2 miner sessions, one task each.
//! * [`upstream`]: pool and coin-adapter connections, one task each.
//! * [`group`]: per algorithm group, the router that applies assignments, switches and fails
//!   over, and publishes job templates through `watch` channels: new blocks and switches to
//!   every miner at once, routine updates slice by slice over 100 ms.
//! * [`layout`]: the extranonce fold that keeps a miner's extranonce the same across coins.
//! * [`outbox`]: the durable local queue a share enters before the miner hears "accepted".
//! * [`admin`]: the loopback admin endpoint (assignments, status).
//! * [`control`]: the control channel to the server (assignments in, batches out).

pub mod admin;
pub mod context;
pub mod control;
pub mod downstream;
pub mod group;
pub mod identity;
pub mod latency;
pub mod layout;
pub mod outbox;
pub mod proxy;
pub mod template;
pub mod upstream;
