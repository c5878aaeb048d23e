//! The fold: a worker's lifetime figures (share counts, last sighting, last share) kept on its
//! registry row for all work before a horizon, so that work rows can be keyed by time.
//!
//! Work rows are keyed (coin, minute, user, worker, …): a batch appends next to the previous
//! one instead of touching one page per worker. Summing a worker's rows by key is then no
//! longer possible; instead, minutes more than an hour older than the newest minute written are
//! folded into the `folded_*` columns of `workers` and into the per-user minute rollup, a
//! whole hour at a time, and `work_fold.folded_before_ms` moves on. A worker's figures are its
//! folded columns plus its rows from `folded_before_ms` on (one to two hours of minutes). Rows
//! that arrive for minutes already folded (a proxy replaying an old outbox) are added to the
//! folded figures in their batch's transaction.
//!
//! A fold runs after a batch whose newest minute moved the horizon into a new hour: one hour of
//! rows, and never more ([`FOLD_STEP_MS`]) when catching up after the upgrade that introduced
//! it or an outage. Why an hour and not a minute: the folded tables are keyed by user, so a
//! fold writes about one page per active user or worker, however many minutes it covers;
//! folding every minute measured 20–40 % fewer records/s than folding every hour. The price is
//! a pause of the writer once an hour (measured in `docs/benchmarks.md`), which the proxies'
//! outboxes absorb.

use std::collections::BTreeMap;

use crate::error::StoreError;
use crate::prepare::{WorkKey, WorkRow};

pub(crate) const HOUR_MS: i64 = 3_600_000;
/// How far the fold trails the newest minute, at least: a late batch within it is written like
/// any other.
pub(crate) const FOLD_LAG_MS: i64 = HOUR_MS;
/// The most one fold takes on.
pub(crate) const FOLD_STEP_MS: i64 = HOUR_MS;

/// SQL shared by both backends: `coins`, every coin with work, found by walking the
/// `coin_minute` key from one coin to the next (a handful of lookups, not a scan). Reads by
/// user or worker go from these coins to their `coin_minute` rows in a time range, then to the
/// work rows of each (coin, minute) by key.
pub(crate) const COINS_WITH_WORK: &str = "coins(coin) AS (SELECT MIN(coin) FROM coin_minute \
    UNION ALL SELECT (SELECT MIN(m.coin) FROM coin_minute m WHERE m.coin > coins.coin) \
    FROM coins WHERE coins.coin IS NOT NULL)";

/// The work rows of the minutes `[$from, $to)`, from `coins` (see [`COINS_WITH_WORK`]): joins
/// `coins c`, `coin_minute cm` and `work w` in that order (SQLite keeps the order of a CROSS
/// JOIN); the caller's conditions follow with `AND`.
pub(crate) fn work_in_minutes(from: &str, to: &str) -> String {
    format!(
        "coins c CROSS JOIN coin_minute cm CROSS JOIN work w \
         WHERE cm.coin = c.coin AND cm.minute_ms >= {from} AND cm.minute_ms < {to} \
         AND w.coin = cm.coin AND w.minute_ms = cm.minute_ms"
    )
}

/// The two SQL dialects' spelling of the larger of two nullable values (NULL only when both
/// are).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    pub(crate) fn greatest(self, a: &str, b: &str) -> String {
        match self {
            // SQLite's two-argument max() is NULL when either is.
            Dialect::Sqlite => format!("COALESCE(max({a}, {b}), {a}, {b})"),
            Dialect::Postgres => format!("GREATEST({a}, {b})"),
        }
    }
}

/// The upsert adding to workers' folded columns: its head (rows follow, as `VALUES` or a
/// `SELECT`) and its conflict clause.
pub(crate) const FOLD_HEAD: &str = "INSERT INTO workers (user_name, worker, first_seen_ms, \
    folded_accepted_shares, folded_late_shares, folded_rejected_shares, folded_last_seen_ms, \
    folded_last_share_ms)";

pub(crate) fn fold_tail(d: Dialect) -> String {
    let least = match d {
        Dialect::Sqlite => "min",
        Dialect::Postgres => "LEAST",
    };
    let (t, x) = ("workers", "excluded");
    format!(
        "ON CONFLICT (user_name, worker) DO UPDATE SET \
         first_seen_ms = {least}({t}.first_seen_ms, {x}.first_seen_ms), \
         folded_accepted_shares = {t}.folded_accepted_shares + {x}.folded_accepted_shares, \
         folded_late_shares = {t}.folded_late_shares + {x}.folded_late_shares, \
         folded_rejected_shares = {t}.folded_rejected_shares + {x}.folded_rejected_shares, \
         folded_last_seen_ms = {}, folded_last_share_ms = {}",
        d.greatest(
            &format!("{t}.folded_last_seen_ms"),
            &format!("{x}.folded_last_seen_ms")
        ),
        d.greatest(
            &format!("{t}.folded_last_share_ms"),
            &format!("{x}.folded_last_share_ms")
        )
    )
}

/// The fold's statement for the workers' columns: the work rows of minutes `[$1, $2)` added
/// up per worker.
pub(crate) fn fold_workers(d: Dialect) -> String {
    format!(
        "WITH RECURSIVE {COINS_WITH_WORK} {FOLD_HEAD} SELECT w.user_name, w.worker, \
         MIN(w.first_seen_ms), SUM(w.accepted_shares), SUM(w.late_shares), \
         SUM(w.rejected_shares), MAX(w.last_seen_ms), MAX(w.last_share_ms) FROM {} \
         GROUP BY w.user_name, w.worker ORDER BY w.user_name, w.worker {}",
        work_in_minutes("$1", "$2"),
        fold_tail(d)
    )
}

/// `SELECT` of users (`u`) with their last sighting: the latest of their newest folded
/// `user_minute` rows and of their work rows after the fold horizon. `one_user` reads the
/// recent rows of `$1` only; otherwise one pass over the recent rows serves every user.
pub(crate) fn select_users(d: Dialect, one_user: bool) -> String {
    let recent = work_in_minutes(
        "(SELECT folded_before_ms FROM work_fold)",
        "9223372036854775807",
    );
    let only = if one_user { "AND w.user_name = $1" } else { "" };
    let folded = "(SELECT MAX(m.last_seen_ms) FROM user_minute m WHERE m.user_name = u.user_name \
        AND m.minute_ms = (SELECT MAX(minute_ms) FROM user_minute WHERE user_name = u.user_name))";
    let last_seen = d.greatest(folded, "r.last_seen_ms");
    let filter = if one_user {
        "WHERE u.user_name = $1"
    } else {
        ""
    };
    format!(
        "WITH RECURSIVE {COINS_WITH_WORK}, recent AS (SELECT w.user_name, \
         MAX(w.last_seen_ms) AS last_seen_ms FROM {recent} {only} GROUP BY w.user_name) \
         SELECT u.user_name, u.payout_address, u.first_seen_ms, \
         COALESCE({last_seen}, u.first_seen_ms) FROM users u \
         LEFT JOIN recent r ON r.user_name = u.user_name {filter} ORDER BY u.user_name"
    )
}

/// Where the fold may move to after a batch whose newest minute is `newest_minute_ms`, at
/// wall-clock time `now_ms`: the start of the hour [`FOLD_LAG_MS`] before that minute's hour.
/// A record dated in the future (a proxy's clock) moves it no further than the clock here.
pub(crate) fn fold_horizon(newest_minute_ms: i64, now_ms: i64) -> i64 {
    let t = newest_minute_ms.min(now_ms);
    t - t.rem_euclid(HOUR_MS) - FOLD_LAG_MS
}

/// The horizon to fold towards after a batch (newest minute `newest_minute_ms`) applied with
/// the fold at `folded_before_ms`, if the batch moved it.
pub(crate) fn fold_due(
    newest_minute_ms: Option<i64>,
    folded_before_ms: i64,
    now_ms: i64,
) -> Option<i64> {
    let horizon = fold_horizon(newest_minute_ms?, now_ms);
    (horizon > folded_before_ms).then_some(horizon)
}

/// SQL shared by both backends: the first minute with work at or after `$1` (one index lookup
/// per coin), NULL when there is none.
pub(crate) fn first_minute_from() -> String {
    format!(
        "WITH RECURSIVE {COINS_WITH_WORK} SELECT MIN((SELECT MIN(m.minute_ms) FROM coin_minute m \
         WHERE m.coin = c.coin AND m.minute_ms >= $1)) FROM coins c"
    )
}

/// Where one fold from `from` towards `horizon` stops, given the first minute with work at or
/// after `from`: at most [`FOLD_STEP_MS`] past that minute (empty stretches are skipped).
pub(crate) fn fold_until(from: i64, first_minute: Option<i64>, horizon: i64) -> i64 {
    match first_minute {
        Some(first) if first < horizon => horizon.min(first.max(from).saturating_add(FOLD_STEP_MS)),
        _ => horizon,
    }
}

/// A worker's figures from rows of minutes already folded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LateFold<'a> {
    pub user: &'a str,
    pub worker: &'a str,
    pub first_seen_ms: i64,
    pub accepted: i64,
    pub late: i64,
    pub rejected: i64,
    pub last_seen_ms: i64,
    pub last_share_ms: Option<i64>,
}

/// The batch's rows for minutes before `folded_before_ms`, added up per worker in key order.
pub(crate) fn late_folds<'a>(
    work: &[(WorkKey<'a>, WorkRow)],
    folded_before_ms: i64,
) -> Result<Vec<LateFold<'a>>, StoreError> {
    let mut by_worker: BTreeMap<(&str, &str), LateFold<'a>> = BTreeMap::new();
    for (k, r) in work.iter().filter(|(k, _)| k.minute_ms < folded_before_ms) {
        let f = by_worker
            .entry((k.user, k.worker))
            .or_insert_with(|| LateFold {
                user: k.user,
                worker: k.worker,
                first_seen_ms: r.first_seen_ms,
                accepted: 0,
                late: 0,
                rejected: 0,
                last_seen_ms: r.last_seen_ms,
                last_share_ms: None,
            });
        f.first_seen_ms = f.first_seen_ms.min(r.first_seen_ms);
        f.accepted = add(f.accepted, r.accepted)?;
        f.late = add(f.late, r.late)?;
        f.rejected = add(f.rejected, r.rejected)?;
        f.last_seen_ms = f.last_seen_ms.max(r.last_seen_ms);
        f.last_share_ms = f.last_share_ms.max(r.last_share_ms);
    }
    Ok(by_worker.into_values().collect())
}

fn add(a: i64, b: i64) -> Result<i64, StoreError> {
    a.checked_add(b).ok_or_else(|| StoreError::OutOfRange {
        what: "folded share count",
        value: format!("{a} + {b}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_horizon_trails_the_newest_minute_by_a_whole_hour() {
        let now = i64::MAX;
        // Within the first two hours nothing is folded.
        assert_eq!(fold_horizon(0, now), -HOUR_MS);
        assert_eq!(fold_horizon(HOUR_MS - 60_000, now), -HOUR_MS);
        assert_eq!(fold_horizon(HOUR_MS, now), 0);
        assert_eq!(fold_horizon(2 * HOUR_MS - 60_000, now), 0);
        assert_eq!(fold_horizon(2 * HOUR_MS, now), HOUR_MS);
        // At least one whole hour before the newest minute stays unfolded, at most two.
        for m in (0..10 * HOUR_MS).step_by(60_000) {
            let h = fold_horizon(m, now);
            assert!(m - h >= HOUR_MS && m - h < 2 * HOUR_MS, "{m} -> {h}");
            assert_eq!(h.rem_euclid(HOUR_MS), 0);
        }
        // A record from the future moves it no further than the clock.
        assert_eq!(fold_horizon(100 * HOUR_MS, 5 * HOUR_MS + 1), 4 * HOUR_MS);
    }

    #[test]
    fn a_fold_is_due_when_a_batch_moves_the_horizon() {
        let now = i64::MAX;
        assert_eq!(fold_due(None, 0, now), None);
        assert_eq!(fold_due(Some(2 * HOUR_MS - 60_000), 0, now), None);
        assert_eq!(fold_due(Some(2 * HOUR_MS), 0, now), Some(HOUR_MS));
        assert_eq!(fold_due(Some(2 * HOUR_MS + 60_000), HOUR_MS, now), None);
        assert_eq!(
            fold_due(Some(9 * HOUR_MS), 60_000, 3 * HOUR_MS),
            Some(2 * HOUR_MS)
        );
    }

    #[test]
    fn a_fold_takes_at_most_a_step_and_skips_empty_stretches() {
        let h = 10 * HOUR_MS;
        // Steady state: the hour behind the horizon.
        assert_eq!(fold_until(h - HOUR_MS, Some(h - HOUR_MS), h), h);
        // Nothing to fold, or nothing before the horizon: straight to the horizon.
        assert_eq!(fold_until(0, None, h), h);
        assert_eq!(fold_until(0, Some(h), h), h);
        assert_eq!(fold_until(0, Some(h + 5), h), h);
        // Catching up: a step from the first minute with work, not from an empty past.
        assert_eq!(fold_until(0, Some(HOUR_MS), h), 2 * HOUR_MS);
        assert_eq!(fold_until(0, Some(h - 60_000), h), h);
        // Never backwards, never past the horizon.
        for from in (0..h).step_by(600_000) {
            for first in (from..h + HOUR_MS).step_by(700_000) {
                let until = fold_until(from, Some(first), h);
                assert!(until > from && until <= h, "{from} {first} -> {until}");
                assert!(until >= h.min(first + 1), "{from} {first} -> {until}");
            }
        }
    }

    fn row(minute_ms: i64, accepted: i64, last_share_ms: Option<i64>) -> WorkRow {
        WorkRow {
            work: 1,
            accepted,
            late: 1,
            rejected: 2,
            stale: 0,
            first_seen_ms: minute_ms,
            last_seen_ms: minute_ms + 30_000,
            last_share_ms,
        }
    }

    fn key<'a>(user: &'a str, worker: &'a str, minute_ms: i64) -> WorkKey<'a> {
        WorkKey {
            coin: "LTC",
            minute_ms,
            user,
            worker,
            epoch: 1,
            upstream: "up",
        }
    }

    #[test]
    fn late_rows_add_up_per_worker_and_later_rows_are_left_out() {
        let work = vec![
            (key("a", "r1", 0), row(0, 3, Some(10_000))),
            (key("a", "r1", 60_000), row(60_000, 4, None)),
            (key("b", "r1", 0), row(0, 0, None)),
            (key("a", "r1", 120_000), row(120_000, 100, Some(150_000))),
        ];
        let late = late_folds(&work, 120_000).unwrap();
        assert_eq!(
            late,
            vec![
                LateFold {
                    user: "a",
                    worker: "r1",
                    first_seen_ms: 0,
                    accepted: 7,
                    late: 2,
                    rejected: 4,
                    last_seen_ms: 90_000,
                    last_share_ms: Some(10_000),
                },
                LateFold {
                    user: "b",
                    worker: "r1",
                    first_seen_ms: 0,
                    accepted: 0,
                    late: 1,
                    rejected: 2,
                    last_seen_ms: 30_000,
                    last_share_ms: None,
                },
            ]
        );
        assert!(late_folds(&work, 0).unwrap().is_empty());
    }

    #[test]
    fn an_overflowing_count_is_an_error() {
        let work = vec![
            (key("a", "r1", 0), row(0, i64::MAX, None)),
            (key("a", "r1", 60_000), row(60_000, 1, None)),
        ];
        assert!(late_folds(&work, HOUR_MS).is_err());
    }
}
