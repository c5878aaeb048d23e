//! DefPool accounting, free of I/O: who is owed what, in integer smallest units.
//!
//! * [`Account`]: the ledger's account names (`user:<user>`, `pool:fees`, …). A balance is
//!   always per account *and* coin.
//! * [`Posting`]: one double-entry transaction; it cannot exist unless its entries sum to zero
//!   per coin, so any set of postings sums to zero per coin.
//! * [`scheme`]: attribution of one coin earning to users by work — [`prop`] over a period (pool
//!   mode), [`pplns`] over a window of work (solo blocks) — minus the pool fee, every unit handed
//!   out by an exact largest-remainder split.
//! * [`lifecycle`]: a solo block's states (immature, matured, orphaned, and back after a reorg)
//!   turned into postings: users are credited when the block matures and the credit is reversed
//!   exactly if it stops being matured.
//! * [`Ledger`]: balances as sums of postings, applying each transaction id once; the reference
//!   semantics that a store implements in SQL.
//! * [`mod@estimate`]: what work *should* earn at the market data of the time (decimals, for
//!   display beside the realised ledger amounts; never posted).

pub mod account;
pub mod estimate;
pub mod ledger;
pub mod lifecycle;
pub mod posting;
pub mod scheme;

pub use account::{Account, AccountError};
pub use estimate::{estimate, Estimate, EstimateError, MarketPoint};
pub use ledger::Ledger;
pub use lifecycle::{on_block_status, BlockBook, BlockEarning, BlockError};
pub use posting::{Entry, Posting, PostingError, MAX_AMOUNT};
pub use scheme::{pplns, pplns_window, prop, Attribution, SchemeError, BPS_WHOLE};
