//! Pool figures for the live feed and the API: hashrate per algorithm from the work stored in
//! the last minutes, published as `FeedEvent::Hashrate` every [`PUBLISH_EVERY`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use defpool_core::Algorithm;
use defpool_store::{Bucket, StoreError};
use tokio::sync::watch;

use crate::state::{FeedEvent, Shared};

/// Hashrate is averaged over this window.
pub const HASHRATE_WINDOW_MS: u64 = 10 * 60_000;
/// A worker with a share this recent is online (a miner).
pub const ONLINE_WINDOW_MS: u64 = 10 * 60_000;
pub const PUBLISH_EVERY: Duration = Duration::from_secs(10);

/// Hashes per second per algorithm of the registry (zero when idle): the credited work of the
/// minutes from `HASHRATE_WINDOW_MS` before the current minute up to now, over that span.
pub async fn pool_hashrate(
    shared: &Shared,
    now_ms: u64,
) -> Result<BTreeMap<Algorithm, f64>, StoreError> {
    let from = now_ms - now_ms % 60_000;
    let from = from.saturating_sub(HASHRATE_WINDOW_MS);
    let points = shared
        .store
        .pool_series(None, Bucket::Minute, from, now_ms + 1)
        .await?;
    let registry = &shared.config.registry;
    let mut work: BTreeMap<Algorithm, u128> = registry.iter().map(|c| (c.algorithm, 0)).collect();
    for p in points {
        if let Some(spec) = registry.get(&p.coin) {
            *work.entry(spec.algorithm).or_insert(0) += p.work;
        }
    }
    let secs = ((now_ms - from) as f64 / 1000.0).max(1.0);
    Ok(work
        .into_iter()
        .map(|(alg, w)| (alg, w as f64 / secs))
        .collect())
}

/// One `FeedEvent::Hashrate` per algorithm: its hashrate, the coin its assignments mine, and
/// the workers and users with work on its coins in the window.
pub async fn hashrate_events(shared: &Shared, now_ms: u64) -> Result<Vec<FeedEvent>, StoreError> {
    let hashrate = pool_hashrate(shared, now_ms).await?;
    let assignments = shared.store.assignments().await?;
    let since = now_ms - now_ms % 60_000;
    let active = shared
        .store
        .active_workers(since.saturating_sub(ONLINE_WINDOW_MS))
        .await?;
    let registry = &shared.config.registry;
    let mut workers: BTreeMap<Algorithm, BTreeSet<(&str, &str)>> = BTreeMap::new();
    let mut users: BTreeMap<Algorithm, BTreeSet<&str>> = BTreeMap::new();
    for (coin, user, worker) in &active {
        if let Some(spec) = registry.get(coin) {
            workers
                .entry(spec.algorithm)
                .or_default()
                .insert((user.as_str(), worker.as_str()));
            users
                .entry(spec.algorithm)
                .or_default()
                .insert(user.as_str());
        }
    }
    Ok(hashrate
        .into_iter()
        .map(|(algorithm, hashrate_hs)| FeedEvent::Hashrate {
            at_ms: now_ms,
            algorithm,
            coin: assignments
                .iter()
                .filter(|a| a.algorithm == algorithm)
                .find_map(|a| a.primary_coin().cloned()),
            hashrate_hs,
            workers: workers.get(&algorithm).map_or(0, |w| w.len() as u64),
            users: users.get(&algorithm).map_or(0, |u| u.len() as u64),
        })
        .collect())
}

/// Publishes the hashrate events every [`PUBLISH_EVERY`] until `stop` turns true.
pub fn spawn(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PUBLISH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            if *stop.borrow() {
                return;
            }
            match hashrate_events(&shared, shared.now_ms()).await {
                Ok(events) => events.into_iter().for_each(|e| shared.publish(e)),
                Err(e) => tracing::warn!(error = %e, "hashrate figures unavailable"),
            }
        }
    });
}
