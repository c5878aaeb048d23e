//! Postings: double-entry transactions in integer smallest units. A [`Posting`] can only be built
//! (or deserialised) with entries that sum to zero in every coin, so any collection of postings —
//! the whole ledger — sums to zero per coin.

use std::collections::BTreeMap;

use defpool_core::Ticker;
use serde::{Deserialize, Serialize};

use crate::account::Account;

/// The largest magnitude of one entry: `i64::MAX` smallest units. `i64::MIN` is refused so every
/// entry, and so every posting, can be negated exactly.
pub const MAX_AMOUNT: u64 = i64::MAX as u64;

/// One line of a posting: `amount` smallest units of `coin` into `account` (negative: out of it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub account: Account,
    pub coin: Ticker,
    pub amount: i64,
}

impl Entry {
    pub fn new(account: Account, coin: Ticker, amount: i64) -> Entry {
        Entry {
            account,
            coin,
            amount,
        }
    }
}

/// Why a posting was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PostingError {
    #[error("posting `{0}` has no entries")]
    Empty(String),
    #[error("posting `{txn_id}`: the entry for {account} in {coin} is zero")]
    ZeroAmount {
        txn_id: String,
        account: Account,
        coin: Ticker,
    },
    #[error("posting `{txn_id}`: an amount is out of range (|amount| <= {MAX_AMOUNT})")]
    AmountOutOfRange { txn_id: String },
    #[error("posting `{txn_id}`: entries in {coin} sum to {sum}, not zero")]
    Unbalanced {
        txn_id: String,
        coin: Ticker,
        sum: i128,
    },
    #[error("a posting needs a transaction id")]
    NoTxnId,
}

/// A balanced transaction. `txn_id` is its idempotency key: a ledger applies a transaction id
/// once, so whoever derives postings deterministically can re-process an event safely.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawPosting", into = "RawPosting")]
pub struct Posting {
    txn_id: String,
    entries: Vec<Entry>,
    memo: String,
}

/// The serialised form, checked again on the way in.
#[derive(Serialize, Deserialize)]
struct RawPosting {
    txn_id: String,
    entries: Vec<Entry>,
    #[serde(default)]
    memo: String,
}

impl TryFrom<RawPosting> for Posting {
    type Error = PostingError;
    fn try_from(r: RawPosting) -> Result<Self, Self::Error> {
        Posting::new(r.txn_id, r.entries, r.memo)
    }
}

impl From<Posting> for RawPosting {
    fn from(p: Posting) -> RawPosting {
        RawPosting {
            txn_id: p.txn_id,
            entries: p.entries,
            memo: p.memo,
        }
    }
}

impl Posting {
    /// A posting of `entries`, refused unless the entries sum to zero in every coin. Entries must
    /// be non-zero and within ±[`MAX_AMOUNT`]; there must be at least one. The same account may
    /// appear more than once (entries are kept as given).
    pub fn new(
        txn_id: impl Into<String>,
        entries: Vec<Entry>,
        memo: impl Into<String>,
    ) -> Result<Posting, PostingError> {
        let txn_id = txn_id.into();
        if txn_id.is_empty() {
            return Err(PostingError::NoTxnId);
        }
        if entries.is_empty() {
            return Err(PostingError::Empty(txn_id));
        }
        let mut sums: BTreeMap<&Ticker, i128> = BTreeMap::new();
        for e in &entries {
            if e.amount == 0 {
                return Err(PostingError::ZeroAmount {
                    txn_id,
                    account: e.account.clone(),
                    coin: e.coin.clone(),
                });
            }
            if e.amount == i64::MIN {
                return Err(PostingError::AmountOutOfRange { txn_id });
            }
            *sums.entry(&e.coin).or_insert(0) += e.amount as i128;
        }
        if let Some((coin, sum)) = sums.into_iter().find(|(_, s)| *s != 0) {
            return Err(PostingError::Unbalanced {
                txn_id,
                coin: coin.clone(),
                sum,
            });
        }
        Ok(Posting {
            txn_id,
            entries,
            memo: memo.into(),
        })
    }

    /// Move `amount` of `coin` from one account to another: `from` −amount, `to` +amount.
    pub fn transfer(
        txn_id: impl Into<String>,
        coin: &Ticker,
        from: Account,
        to: Account,
        amount: u64,
        memo: impl Into<String>,
    ) -> Result<Posting, PostingError> {
        let txn_id = txn_id.into();
        let amount = i64::try_from(amount).map_err(|_| PostingError::AmountOutOfRange {
            txn_id: txn_id.clone(),
        })?;
        Posting::new(
            txn_id,
            vec![
                Entry::new(from, coin.clone(), -amount),
                Entry::new(to, coin.clone(), amount),
            ],
            memo,
        )
    }

    /// The exact opposite of this posting under a new id: every entry negated, in the same order.
    /// Applying both leaves every balance as it was.
    pub fn negated(&self, txn_id: impl Into<String>, memo: impl Into<String>) -> Posting {
        Posting {
            txn_id: txn_id.into(),
            // `i64::MIN` is refused on construction, so negation cannot overflow.
            entries: self
                .entries
                .iter()
                .map(|e| Entry::new(e.account.clone(), e.coin.clone(), -e.amount))
                .collect(),
            memo: memo.into(),
        }
    }

    pub fn txn_id(&self) -> &str {
        &self.txn_id
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn memo(&self) -> &str {
        &self.memo
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ltc() -> Ticker {
        "LTC".parse().unwrap()
    }

    fn btc() -> Ticker {
        "BTC".parse().unwrap()
    }

    #[test]
    fn balanced_per_coin() {
        let p = Posting::new(
            "t1",
            vec![
                Entry::new(Account::user("a"), ltc(), 5),
                Entry::new(Account::PoolFees, ltc(), 1),
                Entry::new(Account::PoolEarnings(ltc()), ltc(), -6),
            ],
            "split",
        )
        .unwrap();
        assert_eq!(p.entries().len(), 3);
        // Balanced in total but not per coin: refused.
        let err = Posting::new(
            "t2",
            vec![
                Entry::new(Account::user("a"), ltc(), 5),
                Entry::new(Account::Exchange, btc(), -5),
            ],
            "",
        )
        .unwrap_err();
        // BTC sorts first: its entries sum to -5.
        assert_eq!(
            err,
            PostingError::Unbalanced {
                txn_id: "t2".into(),
                coin: btc(),
                sum: -5
            }
        );
        assert!(matches!(
            Posting::new("t3", vec![], ""),
            Err(PostingError::Empty(_))
        ));
        assert!(matches!(
            Posting::new("t4", vec![Entry::new(Account::PoolFees, ltc(), 0)], ""),
            Err(PostingError::ZeroAmount { .. })
        ));
        assert!(matches!(
            Posting::new(
                "t5",
                vec![
                    Entry::new(Account::PoolFees, ltc(), i64::MIN),
                    Entry::new(Account::Exchange, ltc(), i64::MAX),
                    Entry::new(Account::Exchange, ltc(), 1),
                ],
                ""
            ),
            Err(PostingError::AmountOutOfRange { .. })
        ));
        assert_eq!(Posting::new("", vec![], ""), Err(PostingError::NoTxnId));
    }

    #[test]
    fn sums_do_not_overflow() {
        // Three near-maximal entries: the sum is computed in i128 and found unbalanced.
        let err = Posting::new(
            "t",
            vec![
                Entry::new(Account::PoolFees, ltc(), i64::MAX),
                Entry::new(Account::Exchange, ltc(), i64::MAX),
                Entry::new(Account::Exchange, ltc(), -i64::MAX),
            ],
            "",
        )
        .unwrap_err();
        assert!(matches!(err, PostingError::Unbalanced { .. }));
    }

    #[test]
    fn transfer_and_negation() {
        let p = Posting::transfer(
            "in",
            &ltc(),
            Account::External("up".into()),
            Account::PoolEarnings(ltc()),
            MAX_AMOUNT,
            "payout",
        )
        .unwrap();
        let n = p.negated("in:reverse", "undo");
        assert_eq!(n.entries()[0].amount, i64::MAX);
        assert_eq!(n.entries()[1].amount, -i64::MAX);
        assert!(matches!(
            Posting::transfer(
                "x",
                &ltc(),
                Account::Exchange,
                Account::PoolFees,
                MAX_AMOUNT + 1,
                ""
            ),
            Err(PostingError::AmountOutOfRange { .. })
        ));
    }

    #[test]
    fn serde_checks_balance() {
        let p =
            Posting::transfer("t", &ltc(), Account::Exchange, Account::user("u"), 7, "m").unwrap();
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<Posting>(&json).unwrap(), p);
        let bad = json.replace("-7", "-6");
        assert!(serde_json::from_str::<Posting>(&bad).is_err());
    }
}
