//! Attribution schemes: how one coin earning is divided among users by their work on that coin.
//!
//! The rules, the same for every scheme:
//! 1. The pool fee is `floor(earning × fee_bps / 10 000)`: rounding favours the users.
//! 2. The rest (the *net*) is split in proportion to each user's work with
//!    [`defpool_core::money::split_pro_rata`]: each user gets `floor(net × work / Σwork)`, and
//!    the units left over go one each to the largest fractional remainders; equal remainders go
//!    to the user whose name sorts first. Users are always taken in name order (a `BTreeMap`),
//!    so the result depends only on the amounts, never on the order records arrived in.
//! 3. Every unit is attributed: `fee + Σ shares + unattributed = earning`, exactly.
//! 4. With no work at all (an empty window, nobody mined the coin in the period) the net goes to
//!    `unattributed` (posted to `pool:unattributed`), not to the fee: the fee stays exactly the
//!    configured rate, and the operator sees earnings that nobody's work explains (typically work
//!    that has not arrived yet) and can attribute them later with an ordinary posting.

use std::collections::BTreeMap;

use defpool_core::money::split_pro_rata;
use defpool_core::Ticker;
use serde::{Deserialize, Serialize};

use crate::account::Account;
use crate::posting::{Entry, Posting, PostingError, MAX_AMOUNT};

/// Basis points in a whole: `fee_bps = 10 000` is a 100 % fee.
pub const BPS_WHOLE: u32 = 10_000;

/// Why an earning could not be attributed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SchemeError {
    #[error("fee of {0} basis points is above 10000 (100 %)")]
    FeeAboveWhole(u32),
    #[error("earning of {0} units is above the largest ledger amount ({MAX_AMOUNT})")]
    EarningTooLarge(u64),
    #[error("the users' work sums to more than 2^128")]
    WorkOverflow,
}

/// How one earning divides: the pool fee, each user's share (users whose share rounds to zero
/// are left out), and what no work could claim.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attribution {
    pub fee: u64,
    pub shares: BTreeMap<String, u64>,
    pub unattributed: u64,
}

impl Attribution {
    /// The earning this divides: `fee + Σ shares + unattributed`.
    pub fn total(&self) -> u128 {
        self.fee as u128
            + self.unattributed as u128
            + self.shares.values().map(|&s| s as u128).sum::<u128>()
    }

    /// The posting that carries this out: `source` gives the whole earning; `pool:fees` gets the
    /// fee, `pool:unattributed` what no work claimed, each `user:<user>` its share. Zero amounts
    /// are left out; an attribution of nothing is refused ([`PostingError::Empty`]).
    pub fn to_posting(
        &self,
        txn_id: impl Into<String>,
        coin: &Ticker,
        source: Account,
    ) -> Result<Posting, PostingError> {
        let txn_id = txn_id.into();
        let out_of_range = || PostingError::AmountOutOfRange {
            txn_id: txn_id.clone(),
        };
        let total = i64::try_from(self.total()).map_err(|_| out_of_range())?;
        let mut entries = Vec::with_capacity(self.shares.len() + 3);
        let mut push = |account: Account, amount: i64| {
            if amount != 0 {
                entries.push(Entry::new(account, coin.clone(), amount));
            }
        };
        push(source.clone(), -total);
        // Each part is at most the total, which fits.
        push(Account::PoolFees, self.fee as i64);
        push(Account::PoolUnattributed, self.unattributed as i64);
        for (user, &share) in &self.shares {
            push(Account::user(user.clone()), share as i64);
        }
        let memo = format!(
            "attribution of {total} {coin} from {source}: fee {}, {} users, unattributed {}",
            self.fee,
            self.shares.len(),
            self.unattributed
        );
        Posting::new(txn_id, entries, memo)
    }
}

/// PROP over a period (pool mode): `earning` (what an upstream paid for the period) divided by
/// each user's work on the coin in that period.
pub fn prop(
    earning: u64,
    work_by_user: &BTreeMap<String, u128>,
    fee_bps: u32,
) -> Result<Attribution, SchemeError> {
    // The split sums the work; refuse what it could not sum.
    work_by_user
        .values()
        .try_fold(0u128, |sum, &w| sum.checked_add(w))
        .ok_or(SchemeError::WorkOverflow)?;
    attribute(earning, work_by_user, fee_bps)
}

/// PPLNS (solo blocks): `earning` divided by the work in the window of the last `window_work`
/// units of work before the block. `window` holds `(user, work)` records newest first; they are
/// taken in that order until the window is covered, the last one only in part (see
/// [`pplns_window`]). A user may appear in several records.
pub fn pplns(
    earning: u64,
    window: &[(String, u128)],
    window_work: u128,
    fee_bps: u32,
) -> Result<Attribution, SchemeError> {
    attribute(earning, &pplns_window(window, window_work), fee_bps)
}

/// The work per user inside a PPLNS window: records newest first are taken whole while they fit,
/// and the record that crosses the window's edge only for the part inside it. The result sums to
/// exactly `window_work`, or to all the records' work if there is less (a window not yet full).
pub fn pplns_window(window: &[(String, u128)], window_work: u128) -> BTreeMap<String, u128> {
    let mut by_user: BTreeMap<String, u128> = BTreeMap::new();
    let mut left = window_work;
    for (user, work) in window {
        if left == 0 {
            break;
        }
        let taken = (*work).min(left);
        if taken == 0 {
            continue;
        }
        left -= taken;
        // Everything taken sums to at most `window_work`, so this cannot overflow.
        *by_user.entry(user.clone()).or_insert(0) += taken;
    }
    by_user
}

/// The common rule: fee first, then a largest-remainder split of the rest by work.
fn attribute(
    earning: u64,
    work_by_user: &BTreeMap<String, u128>,
    fee_bps: u32,
) -> Result<Attribution, SchemeError> {
    if fee_bps > BPS_WHOLE {
        return Err(SchemeError::FeeAboveWhole(fee_bps));
    }
    if earning > MAX_AMOUNT {
        return Err(SchemeError::EarningTooLarge(earning));
    }
    let fee = (earning as u128 * fee_bps as u128 / BPS_WHOLE as u128) as u64;
    let net = earning - fee;
    let (users, weights): (Vec<&String>, Vec<u128>) = work_by_user
        .iter()
        .filter(|(_, &w)| w > 0)
        .map(|(u, &w)| (u, w))
        .unzip();
    // All-zero (or no) weights: `split_pro_rata` hands the whole net back undistributed.
    let (split, unattributed) = split_pro_rata(net, &weights);
    let shares = users
        .into_iter()
        .zip(split)
        .filter(|(_, s)| *s > 0)
        .map(|(u, s)| (u.clone(), s))
        .collect();
    Ok(Attribution {
        fee,
        shares,
        unattributed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn work(pairs: &[(&str, u128)]) -> BTreeMap<String, u128> {
        pairs.iter().map(|(u, w)| (u.to_string(), *w)).collect()
    }

    fn shares(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
        pairs.iter().map(|(u, s)| (u.to_string(), *s)).collect()
    }

    #[test]
    fn prop_examples() {
        // 1 % of 1001 is 10.01: fee 10; 991 split 1:1:1 = 330.33 each, the one spare unit to
        // the first name.
        let a = prop(1001, &work(&[("c", 5), ("a", 5), ("b", 5)]), 100).unwrap();
        assert_eq!(a.fee, 10);
        assert_eq!(a.shares, shares(&[("a", 331), ("b", 330), ("c", 330)]));
        assert_eq!(a.unattributed, 0);
        assert_eq!(a.total(), 1001);

        // Largest remainder wins over name order: 10 by 1:2 is 3.33 / 6.67.
        let a = prop(10, &work(&[("a", 1), ("b", 2)]), 0).unwrap();
        assert_eq!(a.shares, shares(&[("a", 3), ("b", 7)]));

        // Zero-work users and zero shares are left out.
        let a = prop(1, &work(&[("a", 1), ("b", 1), ("z", 0)]), 0).unwrap();
        assert_eq!(a.shares, shares(&[("a", 1)]));
    }

    #[test]
    fn no_work_is_unattributed() {
        let a = prop(1000, &BTreeMap::new(), 250).unwrap();
        assert_eq!(
            a,
            Attribution {
                fee: 25,
                shares: BTreeMap::new(),
                unattributed: 975
            }
        );
        let a = pplns(1000, &[("a".into(), 0)], 10, 250).unwrap();
        assert_eq!(a.unattributed, 975);
        let a = pplns(1000, &[("a".into(), 5)], 0, 250).unwrap();
        assert_eq!(a.unattributed, 975);
    }

    #[test]
    fn refusals() {
        assert_eq!(
            prop(1, &BTreeMap::new(), 10_001),
            Err(SchemeError::FeeAboveWhole(10_001))
        );
        assert_eq!(
            prop(MAX_AMOUNT + 1, &BTreeMap::new(), 0),
            Err(SchemeError::EarningTooLarge(MAX_AMOUNT + 1))
        );
        assert_eq!(
            prop(1, &work(&[("a", u128::MAX), ("b", 1)]), 0),
            Err(SchemeError::WorkOverflow)
        );
        // A 100 % fee is allowed.
        assert_eq!(prop(7, &work(&[("a", 1)]), 10_000).unwrap().fee, 7);
    }

    #[test]
    fn pplns_window_cuts_the_last_record() {
        let window = vec![
            ("a".to_string(), 40u128),
            ("b".to_string(), 30),
            ("a".to_string(), 50),
            ("c".to_string(), 1000),
        ];
        assert_eq!(pplns_window(&window, 100), work(&[("a", 70), ("b", 30)]));
        assert_eq!(pplns_window(&window, 70), work(&[("a", 40), ("b", 30)]));
        assert_eq!(
            pplns_window(&window, 10_000),
            work(&[("a", 90), ("b", 30), ("c", 1000)])
        );
        let a = pplns(100, &window, 100, 0).unwrap();
        assert_eq!(a.shares, shares(&[("a", 70), ("b", 30)]));
    }

    #[test]
    fn posting_of_an_attribution() {
        let ltc: Ticker = "LTC".parse().unwrap();
        let a = prop(1001, &work(&[("a", 1), ("b", 1)]), 100).unwrap();
        let p = a
            .to_posting("t", &ltc, Account::PoolEarnings(ltc.clone()))
            .unwrap();
        let amounts: Vec<(String, i64)> = p
            .entries()
            .iter()
            .map(|e| (e.account.to_string(), e.amount))
            .collect();
        assert_eq!(
            amounts,
            vec![
                ("pool:earnings:LTC".to_string(), -1001),
                ("pool:fees".to_string(), 10),
                ("user:a".to_string(), 496),
                ("user:b".to_string(), 495),
            ]
        );
        assert!(matches!(
            Attribution::default().to_posting("z", &ltc, Account::Exchange),
            Err(PostingError::Empty(_))
        ));
    }
}
