//! A batch turned into the rows it adds, before any database is touched: records of one key
//! added up, every number checked to fit its column, keys sorted (so concurrent transactions
//! lock rows in the same order).

use foldhash::HashMap;
use foldhash::HashMapExt;

use defpool_control::{Batch, Event, Record};
use defpool_core::Ticker;

use crate::error::{to_i64, StoreError};

pub(crate) const MINUTE_MS: u64 = 60_000;
pub(crate) const STALE_REASON: &str = "stale-share";

/// Numbers of a rollup row.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Amounts {
    pub work: u128,
    pub shares: i64,
    pub rejected: i64,
    pub stale: i64,
    /// The end of the latest period in the row (kept on user rollups: a user's last sighting).
    pub last_seen_ms: i64,
}

impl Amounts {
    fn add(&mut self, other: &Amounts) -> Result<(), StoreError> {
        self.work = add_work(self.work, other.work, "a batch's rollup")?;
        self.shares = add_count(self.shares, other.shares)?;
        self.rejected = add_count(self.rejected, other.rejected)?;
        self.stale = add_count(self.stale, other.stale)?;
        self.last_seen_ms = self.last_seen_ms.max(other.last_seen_ms);
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct UserRow<'a> {
    pub user: &'a str,
    pub payout_address: Option<&'a str>,
    pub first_seen_ms: i64,
}

/// A worker's registry row: that it exists, and since when. What changes with every batch
/// (last sighting, last share, share counts) lives on the work rows, which a batch writes
/// anyway, so a batch does not rewrite one worker row per record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct WorkerRow<'a> {
    pub user: &'a str,
    pub worker: &'a str,
    pub first_seen_ms: i64,
}

/// A work row's key, its fields in the table's key order (rows are written in this order).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct WorkKey<'a> {
    pub coin: &'a str,
    pub minute_ms: i64,
    pub user: &'a str,
    pub worker: &'a str,
    pub epoch: i64,
    pub upstream: &'a str,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct WorkRow {
    pub work: u128,
    pub accepted: i64,
    pub late: i64,
    pub rejected: i64,
    pub stale: i64,
    /// Earliest start and latest end of the row's periods.
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    /// Latest end of a period with accepted or late shares.
    pub last_share_ms: Option<i64>,
}

/// Everything a batch writes, in key order, borrowing the batch's strings.
#[derive(Debug, Default)]
pub(crate) struct Prepared<'a> {
    pub proxy_id: &'a str,
    /// The run's first and last batch sequence (the same for a single batch).
    pub first_sequence: i64,
    pub sequence: i64,
    /// The last batch's.
    pub created_at_ms: i64,
    /// Per batch of the run, in order: its own record counts and credited work.
    pub tallies: Vec<BatchTally>,
    pub users: Vec<UserRow<'a>>,
    pub workers: Vec<WorkerRow<'a>>,
    /// (user, worker, reason) → shares.
    pub rejects: Vec<((&'a str, &'a str, &'a str), i64)>,
    pub work: Vec<(WorkKey<'a>, WorkRow)>,
    /// (user, minute, coin) → amounts.
    pub user_minutes: Vec<((&'a str, i64, &'a str), Amounts)>,
    /// (coin, minute) → amounts.
    pub coin_minutes: Vec<((&'a str, i64), Amounts)>,
    /// The newest minute of the batch's work rows.
    pub newest_minute_ms: Option<i64>,
    pub work_records: usize,
    pub user_records: usize,
    pub total_work: u128,
}

/// One batch's share of a run: what its summary reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct BatchTally {
    pub work_records: usize,
    pub user_records: usize,
    pub work: u128,
}

pub(crate) fn add_work(a: u128, b: u128, what: &'static str) -> Result<u128, StoreError> {
    a.checked_add(b).ok_or(StoreError::WorkOverflow { what })
}

fn add_count(a: i64, b: i64) -> Result<i64, StoreError> {
    a.checked_add(b).ok_or_else(|| StoreError::OutOfRange {
        what: "share count",
        value: format!("{a} + {b}"),
    })
}

/// The minute a work record is booked in: the one holding the end of its period (its latest
/// share). `to_ms` is exclusive.
pub(crate) fn minute_of(from_ms: u64, to_ms: u64) -> u64 {
    let last = to_ms.saturating_sub(1).max(from_ms);
    last - last % MINUTE_MS
}

/// The earliest minute a work row can be booked in when its period ends at or after `t`: a
/// row of an earlier minute holds only periods that ended before `t`.
pub(crate) fn minute_holding(t: u64) -> u64 {
    minute_of(t.saturating_sub(1), t.saturating_sub(1))
}

/// Gathers the rows of a run of consecutive batches of one proxy (the caller checks that they
/// are), added up by key across the whole run: one batch is a run of one.
pub(crate) fn prepare(run: &[Batch]) -> Result<Prepared<'_>, StoreError> {
    let (Some(first), Some(last)) = (run.first(), run.last()) else {
        return Err(StoreError::OutOfRange {
            what: "batches in a run",
            value: "0".into(),
        });
    };
    let records: usize = run.iter().map(|b| b.records.len()).sum();
    let mut maps = RunMaps {
        users: HashMap::with_capacity(records),
        workers: HashMap::with_capacity(records),
        rejects: HashMap::with_capacity(records),
        work: HashMap::with_capacity(records),
        user_minutes: HashMap::with_capacity(records),
        coin_minutes: HashMap::with_capacity(records),
    };
    let mut p = Prepared {
        proxy_id: &first.proxy_id.0,
        first_sequence: to_i64("batch sequence", first.sequence)?,
        sequence: to_i64("batch sequence", last.sequence)?,
        created_at_ms: to_i64("batch created_at_ms", last.created_at_ms)?,
        tallies: Vec::with_capacity(run.len()),
        ..Prepared::default()
    };

    for batch in run {
        let before = BatchTally {
            work_records: p.work_records,
            user_records: p.user_records,
            work: p.total_work,
        };
        gather(batch, &mut p, &mut maps)?;
        p.tallies.push(BatchTally {
            work_records: p.work_records - before.work_records,
            user_records: p.user_records - before.user_records,
            work: p.total_work - before.work,
        });
    }
    // Gathered in hash maps (a run's thousands of keys), then put in key order.
    let RunMaps {
        users,
        workers,
        rejects,
        work,
        user_minutes,
        coin_minutes,
    } = maps;
    p.users = sorted(users).into_iter().map(|(_, v)| v).collect();
    p.workers = sorted(workers).into_iter().map(|(_, v)| v).collect();
    p.rejects = sorted(rejects);
    p.work = sorted(work);
    p.newest_minute_ms = p.work.iter().map(|(k, _)| k.minute_ms).max();
    p.user_minutes = sorted(user_minutes);
    p.coin_minutes = sorted(coin_minutes);
    Ok(p)
}

/// A run's rows by key while its batches are gathered.
struct RunMaps<'a> {
    users: HashMap<&'a str, UserRow<'a>>,
    workers: HashMap<(&'a str, &'a str), WorkerRow<'a>>,
    /// (user, worker, reason) → shares.
    rejects: HashMap<(&'a str, &'a str, &'a str), i64>,
    work: HashMap<WorkKey<'a>, WorkRow>,
    user_minutes: HashMap<(&'a str, i64, &'a str), Amounts>,
    coin_minutes: HashMap<(&'a str, i64), Amounts>,
}

/// Adds one batch's records to the run's maps.
fn gather<'a>(
    batch: &'a Batch,
    p: &mut Prepared<'a>,
    maps: &mut RunMaps<'a>,
) -> Result<(), StoreError> {
    let RunMaps {
        users,
        workers,
        rejects,
        work,
        user_minutes,
        coin_minutes,
    } = maps;
    for record in &batch.records {
        match record {
            Record::User(u) => {
                p.user_records += 1;
                let seen = to_i64("user first_seen_ms", u.first_seen_ms)?;
                let row = users.entry(&u.user).or_insert_with(|| UserRow {
                    user: &u.user,
                    payout_address: None,
                    first_seen_ms: seen,
                });
                row.first_seen_ms = row.first_seen_ms.min(seen);
                if row.payout_address.is_none() {
                    row.payout_address = u.payout_address.as_deref();
                }
            }
            Record::Work(w) => {
                p.work_records += 1;
                let from = to_i64("work from_ms", w.from_ms)?;
                let to = to_i64("work to_ms", w.to_ms.max(w.from_ms))?;
                let credited = add_work(w.accepted_work, w.late_work, "a work record")?;
                p.total_work = add_work(p.total_work, credited, "a batch")?;
                let accepted = to_i64("accepted_shares", w.accepted_shares)?;
                let late = to_i64("late_shares", w.late_shares)?;
                let mut rejected = 0i64;
                for (reason, n) in &w.rejected {
                    let n = to_i64("rejected shares", *n)?;
                    rejected = add_count(rejected, n)?;
                    let slot = rejects.entry((&w.user, &w.worker, reason)).or_insert(0);
                    *slot = add_count(*slot, n)?;
                }
                let stale = to_i64(
                    "stale shares",
                    w.rejected.get(STALE_REASON).copied().unwrap_or(0),
                )?;
                let minute = to_i64("work minute", minute_of(w.from_ms, w.to_ms))?;
                let coin = w.coin.as_str();

                let user = users.entry(&w.user).or_insert_with(|| UserRow {
                    user: &w.user,
                    payout_address: None,
                    first_seen_ms: from,
                });
                user.first_seen_ms = user.first_seen_ms.min(from);

                let worker = workers
                    .entry((&w.user, &w.worker))
                    .or_insert_with(|| WorkerRow {
                        user: &w.user,
                        worker: &w.worker,
                        first_seen_ms: from,
                    });
                worker.first_seen_ms = worker.first_seen_ms.min(from);

                let row = work
                    .entry(WorkKey {
                        user: &w.user,
                        worker: &w.worker,
                        coin,
                        epoch: to_i64("epoch", w.epoch)?,
                        upstream: &w.upstream,
                        minute_ms: minute,
                    })
                    .or_insert_with(|| WorkRow {
                        work: 0,
                        accepted: 0,
                        late: 0,
                        rejected: 0,
                        stale: 0,
                        first_seen_ms: from,
                        last_seen_ms: to,
                        last_share_ms: None,
                    });
                row.first_seen_ms = row.first_seen_ms.min(from);
                row.last_seen_ms = row.last_seen_ms.max(to);
                if accepted > 0 || late > 0 {
                    row.last_share_ms = Some(row.last_share_ms.map_or(to, |t| t.max(to)));
                }
                row.work = add_work(row.work, credited, "a batch's work row")?;
                row.accepted = add_count(row.accepted, accepted)?;
                row.late = add_count(row.late, late)?;
                row.rejected = add_count(row.rejected, rejected)?;
                row.stale = add_count(row.stale, stale)?;

                let amounts = Amounts {
                    work: credited,
                    shares: add_count(accepted, late)?,
                    rejected,
                    stale,
                    last_seen_ms: to,
                };
                user_minutes
                    .entry((&w.user, minute, coin))
                    .or_default()
                    .add(&amounts)?;
                coin_minutes
                    .entry((coin, minute))
                    .or_default()
                    .add(&amounts)?;
            }
            Record::Event(e) => check_event(e)?,
        }
    }
    Ok(())
}

fn sorted<K: Ord, V>(map: HashMap<K, V>) -> Vec<(K, V)> {
    let mut rows: Vec<(K, V)> = map.into_iter().collect();
    rows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    rows
}

/// A row of a registry table (users, workers) as a batch has it.
pub(crate) trait RegistryRow {
    /// Writes the row's key, as remembered, into `buf` (cleared first).
    fn key_into(&self, buf: &mut String);
    /// Whether the row stores a payout address (workers have none to learn: always true).
    fn has_payout(&self) -> bool;
    fn first_seen_ms(&self) -> i64;
}

impl RegistryRow for UserRow<'_> {
    fn key_into(&self, buf: &mut String) {
        buf.clear();
        buf.push_str(self.user);
    }
    fn has_payout(&self) -> bool {
        self.payout_address.is_some()
    }
    fn first_seen_ms(&self) -> i64 {
        self.first_seen_ms
    }
}

impl RegistryRow for WorkerRow<'_> {
    fn key_into(&self, buf: &mut String) {
        // No user name holds a NUL (addresses and account names are checked by the proxy).
        buf.clear();
        buf.push_str(self.user);
        buf.push('\0');
        buf.push_str(self.worker);
    }
    fn has_payout(&self) -> bool {
        true
    }
    fn first_seen_ms(&self) -> i64 {
        self.first_seen_ms
    }
}

/// What committed batches told this process about each user (or worker): a payout address is
/// stored, and the earliest first-seen time stored. Both only ever move one way in the
/// database (the address is set once, first-seen only goes down), so a remembered fact stays
/// true across restarts and other writers; a registry row that would change nothing is not
/// written again.
#[derive(Clone, Debug, Default)]
pub(crate) struct Known {
    inner: std::sync::Arc<std::sync::Mutex<HashMap<String, KnownFacts>>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct KnownFacts {
    has_payout: bool,
    first_seen_ms: i64,
}

/// Beyond this many keys the memory is dropped and rebuilt from later batches.
const KNOWN_MAX: usize = 1_000_000;

impl Known {
    /// The rows that may change the stored row.
    pub(crate) fn unknown<R: RegistryRow + Clone>(&self, rows: &[R]) -> Vec<R> {
        let known = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut key = String::new();
        rows.iter()
            .filter(|r| {
                match known.get({
                    r.key_into(&mut key);
                    key.as_str()
                }) {
                    None => true,
                    Some(k) => {
                        (r.has_payout() && !k.has_payout) || r.first_seen_ms() < k.first_seen_ms
                    }
                }
            })
            .cloned()
            .collect()
    }

    /// After a commit: every row of `rows` is now stored (merged into the stored row).
    pub(crate) fn remember<R: RegistryRow>(&self, rows: &[R]) {
        let mut known = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if known.len() + rows.len() > KNOWN_MAX {
            known.clear();
        }
        let mut key = String::new();
        for r in rows {
            r.key_into(&mut key);
            match known.get_mut(key.as_str()) {
                Some(k) => {
                    k.has_payout |= r.has_payout();
                    k.first_seen_ms = k.first_seen_ms.min(r.first_seen_ms());
                }
                None => {
                    known.insert(
                        key.clone(),
                        KnownFacts {
                            has_payout: r.has_payout(),
                            first_seen_ms: r.first_seen_ms(),
                        },
                    );
                }
            }
        }
    }
}

/// Checks an event's numbers fit before the transaction starts.
fn check_event(e: &Event) -> Result<(), StoreError> {
    match e {
        Event::BlockCandidate {
            epoch,
            height,
            at_ms,
            ..
        } => {
            to_i64("candidate epoch", *epoch)?;
            if let Some(h) = height {
                to_i64("candidate height", *h)?;
            }
            to_i64("event at_ms", *at_ms)?;
        }
        Event::BlockFound {
            height,
            reward,
            at_ms,
            ..
        } => {
            to_i64("block height", *height)?;
            to_i64("block reward", *reward)?;
            to_i64("event at_ms", *at_ms)?;
        }
        Event::BlockRejected { height, at_ms, .. } | Event::BlockStatus { height, at_ms, .. } => {
            to_i64("block height", *height)?;
            to_i64("event at_ms", *at_ms)?;
        }
        Event::UpstreamHealth { at_ms, .. } => {
            to_i64("event at_ms", *at_ms)?;
        }
        Event::SwitchTiming {
            to_epoch, at_ms, ..
        } => {
            to_i64("switch to_epoch", *to_epoch)?;
            to_i64("event at_ms", *at_ms)?;
        }
    }
    Ok(())
}

/// An event's effect on the `blocks` table, common to both backends.
#[derive(Clone, Debug)]
pub(crate) struct BlockUpdate {
    pub block_hash: String,
    pub coin: Ticker,
    /// The phase this event stands for.
    pub phase: crate::BlockPhase,
    pub height: Option<i64>,
    pub reward: Option<i64>,
    pub adapter: Option<String>,
    pub found_by: Option<String>,
    pub upstream: Option<String>,
    pub user: Option<String>,
    pub worker: Option<String>,
    pub epoch: Option<i64>,
    pub confirmations: Option<i64>,
    pub reason: Option<String>,
    pub at_ms: i64,
}

impl BlockUpdate {
    pub(crate) fn of(e: &Event) -> Option<BlockUpdate> {
        use crate::BlockPhase as P;
        let blank = |hash: &String, coin: &Ticker, phase, at_ms: u64| BlockUpdate {
            block_hash: hash.clone(),
            coin: coin.clone(),
            phase,
            height: None,
            reward: None,
            adapter: None,
            found_by: None,
            upstream: None,
            user: None,
            worker: None,
            epoch: None,
            confirmations: None,
            reason: None,
            // Checked by `check_event`.
            at_ms: at_ms as i64,
        };
        Some(match e {
            Event::BlockCandidate {
                coin,
                epoch,
                upstream,
                user,
                worker,
                block_hash,
                height,
                at_ms,
            } => BlockUpdate {
                height: height.map(|h| h as i64),
                upstream: Some(upstream.clone()),
                user: Some(user.clone()),
                worker: Some(worker.clone()),
                epoch: Some(*epoch as i64),
                ..blank(block_hash, coin, P::Candidate, *at_ms)
            },
            Event::BlockFound {
                coin,
                adapter,
                height,
                block_hash,
                reward,
                found_by,
                at_ms,
            } => BlockUpdate {
                height: Some(*height as i64),
                reward: Some(*reward as i64),
                adapter: Some(adapter.clone()),
                found_by: Some(found_by.clone()),
                ..blank(block_hash, coin, P::Found, *at_ms)
            },
            Event::BlockRejected {
                coin,
                adapter,
                height,
                block_hash,
                reason,
                at_ms,
            } => BlockUpdate {
                height: Some(*height as i64),
                adapter: Some(adapter.clone()),
                reason: Some(reason.clone()),
                ..blank(block_hash, coin, P::Rejected, *at_ms)
            },
            Event::BlockStatus {
                coin,
                adapter,
                height,
                block_hash,
                state,
                confirmations,
                at_ms,
            } => BlockUpdate {
                height: Some(*height as i64),
                adapter: Some(adapter.clone()),
                confirmations: Some(*confirmations),
                ..blank(
                    block_hash,
                    coin,
                    match state {
                        defpool_control::BlockState::Immature => P::Immature,
                        defpool_control::BlockState::Matured => P::Matured,
                        defpool_control::BlockState::Orphaned => P::Orphaned,
                    },
                    *at_ms,
                )
            },
            Event::UpstreamHealth { .. } | Event::SwitchTiming { .. } => return None,
        })
    }

    /// The phase after this event, given the stored one. A candidate (from a proxy) never
    /// overrides the adapter's view; `found` never moves a block back from a later phase; the
    /// adapter's rejected and status events apply in the order the adapter sent them.
    pub(crate) fn next_phase(&self, current: Option<crate::BlockPhase>) -> crate::BlockPhase {
        use crate::BlockPhase as P;
        match (current, self.phase) {
            (None, p) => p,
            (Some(cur), P::Candidate) => cur,
            (Some(P::Candidate), p) => p,
            (Some(cur @ (P::Immature | P::Matured | P::Orphaned)), P::Found) => cur,
            (Some(_), p) => p,
        }
    }

    /// The history line's detail.
    pub(crate) fn detail(&self) -> Option<String> {
        match self.phase {
            crate::BlockPhase::Rejected => self.reason.clone(),
            crate::BlockPhase::Candidate => self
                .user
                .as_ref()
                .map(|u| format!("{u}.{}", self.worker.as_deref().unwrap_or(""))),
            crate::BlockPhase::Found => self.reward.map(|r| format!("reward {r}")),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_users_skip_only_rows_that_change_nothing() {
        let row = |user, payout, first_seen_ms| UserRow {
            user,
            payout_address: payout,
            first_seen_ms,
        };
        let known = Known::default();
        let first = [row("a", None, 100), row("b", Some("bc1qb"), 100)];
        assert_eq!(known.unknown(&first).len(), 2);
        known.remember(&first);
        assert!(known.unknown(&first).is_empty());
        assert!(known.unknown(&[row("a", None, 200)]).is_empty());
        // A later address, an earlier first-seen: written again.
        assert_eq!(known.unknown(&[row("a", Some("bc1qa"), 200)]).len(), 1);
        assert_eq!(known.unknown(&[row("b", None, 99)]).len(), 1);
        assert!(known
            .unknown(&[row("b", Some("bc1qother"), 100)])
            .is_empty());
        assert_eq!(known.unknown(&[row("c", None, 100)]).len(), 1);
    }

    #[test]
    fn known_workers_are_written_once_unless_seen_earlier() {
        let row = |worker, first_seen_ms| WorkerRow {
            user: "a",
            worker,
            first_seen_ms,
        };
        let known = Known::default();
        let first = [row("rig1", 100), row("rig2", 100)];
        assert_eq!(known.unknown(&first).len(), 2);
        known.remember(&first);
        assert!(known.unknown(&[row("rig1", 500)]).is_empty());
        assert_eq!(known.unknown(&[row("rig1", 99)]).len(), 1);
        assert_eq!(known.unknown(&[row("rig3", 500)]).len(), 1);
    }

    #[test]
    fn work_rows_keep_first_last_and_last_share() {
        let w1 = defpool_control::WorkRecord {
            user: "u".into(),
            worker: "rig".into(),
            coin: Ticker::try_from("LTC".to_string()).unwrap(),
            epoch: 1,
            upstream: "up".into(),
            accepted_work: 10,
            accepted_shares: 1,
            late_work: 0,
            late_shares: 0,
            rejected: Default::default(),
            from_ms: 60_000,
            to_ms: 70_000,
        };
        let mut w2 = w1.clone();
        w2.from_ms = 65_000;
        w2.to_ms = 80_000;
        w2.accepted_shares = 0;
        w2.accepted_work = 0;
        w2.rejected.insert("stale-share".into(), 1);
        let b = Batch {
            proxy_id: defpool_control::ProxyId("p".into()),
            sequence: 1,
            created_at_ms: 0,
            records: vec![Record::Work(w1), Record::Work(w2)],
        };
        let p = prepare(std::slice::from_ref(&b)).unwrap();
        assert_eq!(p.work.len(), 1);
        let row = &p.work[0].1;
        assert_eq!((row.first_seen_ms, row.last_seen_ms), (60_000, 80_000));
        assert_eq!(
            row.last_share_ms,
            Some(70_000),
            "rejects-only period: no share time"
        );
        assert_eq!(p.workers[0].first_seen_ms, 60_000);
        assert_eq!(p.user_minutes[0].1.last_seen_ms, 80_000);
    }

    #[test]
    fn minutes() {
        assert_eq!(minute_of(0, 1), 0);
        assert_eq!(minute_of(0, 60_000), 0);
        assert_eq!(minute_of(0, 60_001), 60_000);
        assert_eq!(minute_of(119_999, 119_999), 60_000);
        // A period ending exactly at t = 60,000 is booked in minute 0.
        assert_eq!(minute_holding(60_000), 0);
        assert_eq!(minute_holding(60_001), 60_000);
        assert_eq!(minute_holding(0), 0);
    }
}
