//! The ledger service: block phase changes and recorded pool payouts become postings.

use crate::state::{PoolPayout, Shared};

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("{0}")]
    Invalid(String),
    #[error("store: {0}")]
    Store(#[from] defpool_store::StoreError),
    #[error("pool payouts are not wired to the ledger yet")]
    NotWired,
}

/// What recording a pool payout did.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PayoutRecorded {
    pub txn_id: String,
    /// `false`: this reference was recorded before; nothing new was posted.
    pub posted: bool,
    pub users: u64,
    pub users_amount: i64,
    pub fee_amount: i64,
}

/// Attributes an external pool payout by PROP over the period and posts it (idempotent per
/// reference).
pub async fn record_pool_payout(
    shared: &Shared,
    payout: &PoolPayout,
) -> Result<PayoutRecorded, LedgerError> {
    let _ = (shared, payout);
    Err(LedgerError::NotWired)
}
