//! An in-memory ledger: balances are sums of postings, and each transaction id is applied once.
//! The reference semantics a store implements with a unique key on the transaction id.

use std::collections::{BTreeMap, BTreeSet};

use defpool_core::Ticker;

use crate::account::Account;
use crate::posting::Posting;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ledger {
    balances: BTreeMap<(Account, Ticker), i128>,
    applied: BTreeSet<String>,
}

impl Ledger {
    pub fn new() -> Ledger {
        Ledger::default()
    }

    /// Apply a posting unless its transaction id was applied before. Returns whether it was
    /// applied (`false`: a repeat, nothing changed).
    pub fn apply(&mut self, posting: &Posting) -> bool {
        if !self.applied.insert(posting.txn_id().to_string()) {
            return false;
        }
        for e in posting.entries() {
            *self
                .balances
                .entry((e.account.clone(), e.coin.clone()))
                .or_insert(0) += e.amount as i128;
        }
        true
    }

    /// An account's balance in a coin (0 if it never had an entry).
    pub fn balance(&self, account: &Account, coin: &Ticker) -> i128 {
        self.balances
            .get(&(account.clone(), coin.clone()))
            .copied()
            .unwrap_or(0)
    }

    /// The sum of all balances in a coin: zero, because every posting is balanced.
    pub fn total(&self, coin: &Ticker) -> i128 {
        self.balances
            .iter()
            .filter(|((_, c), _)| c == coin)
            .map(|(_, b)| b)
            .sum()
    }

    /// Every (account, coin) that has had an entry, with its balance.
    pub fn balances(&self) -> impl Iterator<Item = (&Account, &Ticker, i128)> {
        self.balances.iter().map(|((a, c), b)| (a, c, *b))
    }

    pub fn is_applied(&self, txn_id: &str) -> bool {
        self.applied.contains(txn_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applies_each_id_once() {
        let ltc: Ticker = "LTC".parse().unwrap();
        let p = Posting::transfer(
            "p1",
            &ltc,
            Account::External("up".into()),
            Account::PoolEarnings(ltc.clone()),
            100,
            "",
        )
        .unwrap();
        let mut l = Ledger::new();
        assert!(l.apply(&p));
        assert!(!l.apply(&p));
        assert_eq!(l.balance(&Account::PoolEarnings(ltc.clone()), &ltc), 100);
        assert_eq!(l.balance(&Account::External("up".into()), &ltc), -100);
        assert_eq!(l.total(&ltc), 0);
        assert!(l.is_applied("p1"));
    }
}
