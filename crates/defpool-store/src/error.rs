//! What can go wrong in the store.

use std::sync::Arc;

use defpool_core::Ticker;

/// A store failure. Cheap to clone (the database error is shared).
#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL names no backend this store has. Only the scheme is reported: URLs can carry
    /// passwords.
    #[error("unsupported database URL scheme `{scheme}` (use sqlite:PATH, sqlite::memory: or postgres://…)")]
    UnsupportedUrl { scheme: String },

    #[error("database error while {operation}: {source}")]
    Database {
        operation: &'static str,
        #[source]
        source: Arc<sqlx::Error>,
    },

    /// The database has migrations this build does not know: a newer build migrated it.
    #[error("the database schema is at version {found}, newer than this build's {known}; upgrade DefPool")]
    SchemaTooNew { found: i64, known: i64 },

    /// An applied migration's text differs from this build's.
    #[error("migration {version} ({name}) was applied with different contents than this build's")]
    MigrationChanged { version: i64, name: &'static str },

    /// A value does not fit the column it goes to (a `u64` above `i64::MAX`, …).
    #[error("{what} out of range: {value}")]
    OutOfRange { what: &'static str, value: String },

    /// A stored value does not parse back (hand-edited rows, a foreign schema).
    #[error("stored {what} is invalid: {detail}")]
    Corrupt { what: &'static str, detail: String },

    /// Adding work overflowed `u128`.
    #[error("work total overflows u128 ({what})")]
    WorkOverflow { what: &'static str },

    #[error("ledger transaction `{txn_id}` has no entries")]
    EmptyTransaction { txn_id: String },

    /// Entries of one coin in a transaction must sum to zero.
    #[error("ledger transaction `{txn_id}` does not balance: {coin} entries sum to {sum}")]
    Unbalanced {
        txn_id: String,
        coin: Ticker,
        sum: i128,
    },

    /// The idempotency key was used before for different entries.
    #[error("ledger transaction `{txn_id}` was already posted with different entries or memo")]
    TxnConflict { txn_id: String },
}

impl StoreError {
    /// A short stable code for APIs and logs.
    pub fn code(&self) -> &'static str {
        match self {
            StoreError::UnsupportedUrl { .. } => "unsupported-database-url",
            StoreError::Database { .. } => "database",
            StoreError::SchemaTooNew { .. } => "schema-too-new",
            StoreError::MigrationChanged { .. } => "migration-changed",
            StoreError::OutOfRange { .. } => "out-of-range",
            StoreError::Corrupt { .. } => "corrupt",
            StoreError::WorkOverflow { .. } => "work-overflow",
            StoreError::EmptyTransaction { .. } => "empty-transaction",
            StoreError::Unbalanced { .. } => "unbalanced",
            StoreError::TxnConflict { .. } => "txn-conflict",
        }
    }

    /// A PostgreSQL deadlock or serialization failure: the transaction may be retried.
    pub(crate) fn is_retryable(&self) -> bool {
        match self {
            StoreError::Database { source, .. } => match source.as_ref() {
                sqlx::Error::Database(e) => matches!(e.code().as_deref(), Some("40P01" | "40001")),
                _ => false,
            },
            _ => false,
        }
    }
}

pub(crate) fn db(operation: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |e| StoreError::Database {
        operation,
        source: Arc::new(e),
    }
}

pub(crate) fn corrupt(what: &'static str, detail: impl ToString) -> StoreError {
    StoreError::Corrupt {
        what,
        detail: detail.to_string(),
    }
}

/// `u64` to a signed 64-bit column.
pub(crate) fn to_i64(what: &'static str, v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::OutOfRange {
        what,
        value: v.to_string(),
    })
}

/// A signed 64-bit column back to `u64`.
pub(crate) fn to_u64(what: &'static str, v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| corrupt(what, format!("negative value {v}")))
}
