//! Pure DefPool logic, free of I/O: coins as data, payout addresses, targets and work, headers,
//! merkle trees, share validation, block encoding and money. Everything here is deterministic and
//! exhaustively tested; the I/O crates build on it.

pub mod address;
pub mod block;
pub mod coin;
pub mod hash;
pub mod header;
pub mod merkle;
pub mod money;
pub mod secret;
pub mod share;
pub mod work;

pub use coin::{Algorithm, CoinRegistry, CoinSpec, Network, Ticker};
pub use work::{CompactTarget, Target};
