//! Merging work records before they are written: records of one worker on one coin, epoch and
//! upstream collapse into one, so a group commit (and a sealed batch) holds one work record per
//! active worker rather than one per share.
//!
//! Merging is a pure function of the records. It conserves every sum (accepted and late work and
//! shares, rejections by reason) and widens the period to cover all merged records. A merged work
//! record takes the position of the first record of its key; user records and events keep their
//! relative order and are never merged.

use std::collections::HashMap;

use defpool_control::{Record, WorkRecord};
use defpool_core::Ticker;

/// What makes two work records the same account line.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct WorkKey {
    user: String,
    worker: String,
    coin: Ticker,
    epoch: u64,
    upstream: String,
}

impl WorkKey {
    fn of(w: &WorkRecord) -> Self {
        WorkKey {
            user: w.user.clone(),
            worker: w.worker.clone(),
            coin: w.coin.clone(),
            epoch: w.epoch,
            upstream: w.upstream.clone(),
        }
    }
}

/// Adds `from` into `into` (same key). Sums saturate rather than wrap: a `u128` of work or a
/// `u64` of shares does not overflow in practice, and a saturated sum is visibly wrong where a
/// wrapped one would look plausible.
fn absorb(into: &mut WorkRecord, from: WorkRecord) {
    into.accepted_work = into.accepted_work.saturating_add(from.accepted_work);
    into.accepted_shares = into.accepted_shares.saturating_add(from.accepted_shares);
    into.late_work = into.late_work.saturating_add(from.late_work);
    into.late_shares = into.late_shares.saturating_add(from.late_shares);
    for (reason, n) in from.rejected {
        let count = into.rejected.entry(reason).or_insert(0);
        *count = count.saturating_add(n);
    }
    into.from_ms = into.from_ms.min(from.from_ms);
    into.to_ms = into.to_ms.max(from.to_ms);
}

/// Merges records one at a time, optionally up to a number of output records.
#[derive(Debug)]
pub(crate) struct Merger {
    records: Vec<Record>,
    index: HashMap<WorkKey, usize>,
    limit: usize,
}

impl Merger {
    pub(crate) fn unlimited() -> Self {
        Self::with_limit(usize::MAX)
    }

    /// At most `limit` output records (at least one).
    pub(crate) fn with_limit(limit: usize) -> Self {
        Merger {
            records: Vec::new(),
            index: HashMap::new(),
            limit: limit.max(1),
        }
    }

    /// Takes `record`: merged into the earlier work record of the same key, or appended while
    /// fewer than `limit` records are held. A record that would need a new slot beyond the limit
    /// is handed back untouched (`Some`).
    #[must_use = "a record handed back was not taken"]
    pub(crate) fn push(&mut self, record: Record) -> Option<Record> {
        match record {
            Record::Work(w) => {
                let key = WorkKey::of(&w);
                if let Some(&i) = self.index.get(&key) {
                    match &mut self.records[i] {
                        Record::Work(into) => absorb(into, w),
                        _ => unreachable!("the index only points at work records"),
                    }
                    None
                } else if self.records.len() < self.limit {
                    self.index.insert(key, self.records.len());
                    self.records.push(Record::Work(w));
                    None
                } else {
                    Some(Record::Work(w))
                }
            }
            other if self.records.len() < self.limit => {
                self.records.push(other);
                None
            }
            other => Some(other),
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.records.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub(crate) fn into_records(self) -> Vec<Record> {
        self.records
    }
}

/// Merges work records with the same `(user, worker, coin, epoch, upstream)`: work, shares and
/// rejections summed, `from_ms` the minimum, `to_ms` the maximum. Other records pass through in
/// order.
pub fn merge_records(records: impl IntoIterator<Item = Record>) -> Vec<Record> {
    let mut merger = Merger::unlimited();
    for r in records {
        if merger.push(r).is_some() {
            unreachable!("an unlimited merger takes every record");
        }
    }
    merger.into_records()
}

/// Credited work and shares in `records`, counted as [`defpool_control::Batch::accepted_work`]
/// counts them: accepted plus late (grace-window) work, accepted plus late shares. These are the
/// figures the outbox's counters track.
pub fn credited(records: &[Record]) -> (u128, u64) {
    records
        .iter()
        .fold((0u128, 0u64), |(work, shares), r| match r {
            Record::Work(w) => (
                work.saturating_add(w.accepted_work)
                    .saturating_add(w.late_work),
                shares
                    .saturating_add(w.accepted_shares)
                    .saturating_add(w.late_shares),
            ),
            _ => (work, shares),
        })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use defpool_control::{Event, HealthState, UserRecord};

    use super::*;

    fn ticker(s: &str) -> Ticker {
        Ticker::try_from(s.to_string()).unwrap()
    }

    fn work(worker: &str, coin: &str, epoch: u64, accepted: u128, from: u64, to: u64) -> Record {
        Record::Work(WorkRecord {
            user: "alice".into(),
            worker: worker.into(),
            coin: ticker(coin),
            epoch,
            upstream: "pool-a".into(),
            accepted_work: accepted,
            accepted_shares: 1,
            late_work: 0,
            late_shares: 0,
            rejected: BTreeMap::new(),
            from_ms: from,
            to_ms: to,
        })
    }

    fn user(name: &str) -> Record {
        Record::User(UserRecord {
            user: name.into(),
            payout_address: None,
            first_seen_ms: 1,
        })
    }

    fn as_work(r: &Record) -> &WorkRecord {
        match r {
            Record::Work(w) => w,
            other => panic!("expected a work record, got {other:?}"),
        }
    }

    #[test]
    fn same_key_merges_and_conserves_sums() {
        let mut a = work("rig1", "BTC", 7, 100, 1_000, 1_010);
        if let Record::Work(w) = &mut a {
            w.late_work = 5;
            w.late_shares = 1;
            w.rejected.insert("stale-share".into(), 2);
        }
        let mut b = work("rig1", "BTC", 7, 250, 990, 1_005);
        if let Record::Work(w) = &mut b {
            w.accepted_shares = 3;
            w.rejected.insert("stale-share".into(), 1);
            w.rejected.insert("duplicate-share".into(), 4);
        }
        let c = work("rig1", "BTC", 7, 1, 1_020, 1_030);
        let input = vec![a, b, c];
        let before = credited(&input);
        let out = merge_records(input);
        assert_eq!(out.len(), 1);
        let w = as_work(&out[0]);
        assert_eq!(w.accepted_work, 351);
        assert_eq!(w.accepted_shares, 5);
        assert_eq!(w.late_work, 5);
        assert_eq!(w.late_shares, 1);
        assert_eq!(w.rejected["stale-share"], 3);
        assert_eq!(w.rejected["duplicate-share"], 4);
        assert_eq!((w.from_ms, w.to_ms), (990, 1_030));
        assert_eq!(credited(&out), before);
        assert_eq!(before, (356, 6));
    }

    #[test]
    fn every_key_field_separates() {
        let base = work("rig1", "BTC", 7, 10, 0, 1);
        let mut variants = vec![base.clone()];
        for edit in 0..5 {
            let mut r = base.clone();
            if let Record::Work(w) = &mut r {
                match edit {
                    0 => w.user = "bob".into(),
                    1 => w.worker = "rig2".into(),
                    2 => w.coin = ticker("BCH"),
                    3 => w.epoch = 8,
                    _ => w.upstream = "pool-b".into(),
                }
            }
            variants.push(r);
        }
        let out = merge_records(variants.clone());
        assert_eq!(out, variants, "no two of these share a key");
    }

    #[test]
    fn other_records_keep_their_order_and_merged_work_takes_the_first_slot() {
        let event = Record::Event(Event::UpstreamHealth {
            upstream: "pool-a".into(),
            coin: ticker("BTC"),
            state: HealthState::Down,
            reason: "timeout".into(),
            at_ms: 5,
        });
        let input = vec![
            user("u1"),
            work("rig1", "BTC", 1, 10, 0, 1),
            event.clone(),
            work("rig2", "BTC", 1, 20, 0, 1),
            user("u1"),
            work("rig1", "BTC", 1, 30, 1, 2),
        ];
        let out = merge_records(input);
        assert_eq!(out.len(), 5);
        assert_eq!(out[0], user("u1"));
        assert_eq!(as_work(&out[1]).worker, "rig1");
        assert_eq!(as_work(&out[1]).accepted_work, 40);
        assert_eq!(out[2], event);
        assert_eq!(as_work(&out[3]).worker, "rig2");
        assert_eq!(out[4], user("u1"), "user records are never merged");
    }

    #[test]
    fn empty_in_empty_out() {
        assert!(merge_records(Vec::new()).is_empty());
        assert_eq!(credited(&[]), (0, 0));
    }

    #[test]
    fn limit_hands_back_new_slots_but_still_merges() {
        let mut m = Merger::with_limit(2);
        assert!(m.push(work("rig1", "BTC", 1, 1, 0, 1)).is_none());
        assert!(m.push(user("u")).is_none());
        assert_eq!(m.len(), 2);
        // A new key does not fit…
        let back = m
            .push(work("rig2", "BTC", 1, 5, 0, 1))
            .expect("handed back");
        assert_eq!(as_work(&back).worker, "rig2");
        assert!(m.push(user("v")).is_some());
        // …but an existing one still merges.
        assert!(m.push(work("rig1", "BTC", 1, 2, 0, 1)).is_none());
        let out = m.into_records();
        assert_eq!(as_work(&out[0]).accepted_work, 3);
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn zero_limit_means_one() {
        let mut m = Merger::with_limit(0);
        assert!(m.is_empty());
        assert!(m.push(user("u")).is_none());
        assert!(m.push(user("v")).is_some());
    }

    #[test]
    fn many_shares_of_few_workers_collapse_and_conserve() {
        let mut input = Vec::new();
        let mut expected = 0u128;
        for i in 0..1_000u64 {
            let w = u128::from(i) * 1_000_003 + 17;
            expected += w;
            input.push(work(&format!("rig{}", i % 7), "BTC", 3, w, i, i + 1));
        }
        let out = merge_records(input);
        assert_eq!(out.len(), 7);
        assert_eq!(credited(&out), (expected, 1_000));
        let first = as_work(&out[0]);
        assert_eq!((first.from_ms, first.to_ms), (0, 995));
    }
}
