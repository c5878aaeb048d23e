//! Solo mode's coin adapter, the parts that talk to the coin daemon and build its blocks:
//!
//! - [`rpc`]: the daemon's JSON-RPC client (user/password or cookie auth, typed errors, long-poll
//!   `getblocktemplate`, `submitblock`);
//! - [`template`]: a `getblocktemplate` answer parsed into a checked [`BlockTemplate`];
//! - [`coinbase`]: the template's coinbase split around the extranonce, as Stratum V2 jobs carry
//!   it, and the coinbase's merkle branch;
//! - [`assemble`]: found work (extranonce, version, time, nonce) into the full block, with the
//!   segwit witness reserved value and Litecoin's HogEx and MWEB extension block.
//!
//! Everything but [`rpc`] is pure.

pub mod adapter;
pub mod assemble;
pub mod coinbase;
pub mod daemon;
pub mod lifecycle;
pub mod rpc;
pub mod template;

pub use assemble::{assemble_block, block_header, AssembledBlock, HeaderFields};
pub use coinbase::{merkle_branch, CoinbaseError, CoinbaseParts, DEFAULT_TAG};
pub use rpc::{BlockHeaderInfo, ChainInfo, DaemonRpc, RetryPolicy, RpcAuth, RpcCode, RpcError};
pub use template::{BlockTemplate, TemplateError, TemplateTx};
