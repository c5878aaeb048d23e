//! What every miner session shares: registry, outbox, verifier, groups, counters.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use defpool_config::PortConfig;
use defpool_control::{Record, UserRecord, WorkRecord};
use defpool_core::{Algorithm, CoinRegistry, Network};
use defpool_verify::ShareVerifier;

use crate::group::{now_ms, GroupShared};
use crate::identity::MinerIdentity;
use crate::outbox::{Outbox, OutboxError};
use crate::template::JobTemplate;

/// A listening port's rules, from config.
#[derive(Clone, Debug)]
pub struct PortSettings {
    pub algorithm: Algorithm,
    pub start_difficulty: f64,
    pub min_difficulty: f64,
    pub max_difficulty: f64,
    pub shares_per_minute: f64,
    pub max_connections: usize,
    pub idle_timeout: Duration,
    pub max_message_bytes: usize,
}

impl From<&PortConfig> for PortSettings {
    fn from(p: &PortConfig) -> Self {
        PortSettings {
            algorithm: p.algorithm,
            start_difficulty: p.start_difficulty,
            min_difficulty: p.min_difficulty,
            max_difficulty: p.max_difficulty,
            shares_per_minute: p.shares_per_minute,
            max_connections: p.max_connections as usize,
            idle_timeout: Duration::from_secs(p.idle_timeout_secs as u64),
            max_message_bytes: p.max_message_bytes as usize,
        }
    }
}

/// Proxy-wide counters for status and the load generator's cross-checks.
#[derive(Debug, Default)]
pub struct Counters {
    pub connections: AtomicU64,
    pub disconnects: AtomicU64,
    pub protocol_violations: AtomicU64,
    pub shares_accepted: AtomicU64,
    pub shares_rejected: AtomicU64,
    pub extranonce_resets: AtomicU64,
    pub reconnects_sent: AtomicU64,
    /// Submit handled → answer written, outbox commit included (SV1 and SV2).
    pub share_answer: crate::latency::LatencyHistogram,
}

/// Per-worker figures for the status endpoint (batches carry the durable ones).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct WorkerStats {
    pub accepted_shares: u64,
    /// Accepted work, as a decimal string on the wire (u128 does not fit JSON numbers).
    #[serde(rename = "accepted_work", serialize_with = "decimal_string")]
    pub work: u128,
    pub late_shares: u64,
    pub rejected: BTreeMap<String, u64>,
    pub last_share_ms: u64,
    pub difficulty: f64,
    /// Hashrate estimate (H/s): accepted work, exponentially averaged over about 5 minutes.
    pub hashrate_hs: f64,
    pub reject_percent: f64,
    pub stale_percent: f64,
    #[serde(skip)]
    rate_at_ms: u64,
}

fn decimal_string<S: serde::Serializer>(v: &u128, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// Time constant of the hashrate average, seconds.
const HASHRATE_TAU_SECS: f64 = 300.0;

impl WorkerStats {
    fn add_work(&mut self, work: u128, now_ms: u64) {
        let dt = now_ms.saturating_sub(self.rate_at_ms) as f64 / 1000.0;
        let decay = if self.rate_at_ms == 0 {
            0.0
        } else {
            (-dt / HASHRATE_TAU_SECS).exp()
        };
        self.hashrate_hs = self.hashrate_hs * decay + work as f64 / HASHRATE_TAU_SECS;
        self.rate_at_ms = now_ms;
    }

    fn percentages(&mut self) {
        let rejected: u64 = self.rejected.values().sum();
        let total = self.accepted_shares + self.late_shares + rejected;
        if total > 0 {
            self.reject_percent = 100.0 * rejected as f64 / total as f64;
            let stale = self.rejected.get("stale-share").copied().unwrap_or(0);
            self.stale_percent = 100.0 * stale as f64 / total as f64;
        }
    }
}

pub struct Context {
    pub registry: Arc<CoinRegistry>,
    pub network: Network,
    pub outbox: Outbox,
    pub verifier: ShareVerifier,
    pub grace_secs: u32,
    pub groups: HashMap<Algorithm, Arc<GroupShared>>,
    pub counters: Counters,
    /// Accepted work goes to the outbox (a proxy); an adapter records only events.
    pub record_work: bool,
    /// Without work (the upstream is gone), close SV2 channels so the peer fails over at once:
    /// right for a coin adapter serving proxies, wrong for miners.
    pub close_without_work: bool,
    users: Mutex<HashSet<String>>,
    /// user → worker → figures (two levels, so a share's update looks up by `&str`).
    pub workers: Mutex<HashMap<String, HashMap<String, WorkerStats>>>,
}

impl Context {
    pub fn new(
        registry: Arc<CoinRegistry>,
        network: Network,
        outbox: Outbox,
        grace_secs: u32,
        groups: HashMap<Algorithm, Arc<GroupShared>>,
    ) -> Context {
        Context {
            registry,
            network,
            outbox,
            verifier: ShareVerifier::per_core(),
            grace_secs,
            groups,
            counters: Counters::default(),
            record_work: true,
            close_without_work: false,
            users: Mutex::new(HashSet::new()),
            workers: Mutex::new(HashMap::new()),
        }
    }

    /// Records a user the first time this process sees it (the server dedups across restarts).
    pub async fn announce_user(&self, id: &MinerIdentity) -> Result<(), OutboxError> {
        let fresh = self
            .users
            .lock()
            .expect("users lock")
            .insert(id.user.clone());
        if fresh && self.record_work {
            self.outbox
                .append(vec![Record::User(UserRecord {
                    user: id.user.clone(),
                    payout_address: id.payout.as_ref().map(|p| p.text.clone()),
                    first_seen_ms: now_ms(),
                })])
                .await?;
        }
        Ok(())
    }

    /// Runs `f` on a worker's figures, created on first use.
    fn with_worker<R>(&self, id: &MinerIdentity, f: impl FnOnce(&mut WorkerStats) -> R) -> R {
        let mut w = self.workers.lock().expect("workers lock");
        let per_user = match w.get_mut(id.user.as_str()) {
            Some(m) => m,
            None => w.entry(id.user.clone()).or_default(),
        };
        match per_user.get_mut(id.worker.as_str()) {
            Some(s) => f(s),
            None => f(per_user.entry(id.worker.clone()).or_default()),
        }
    }

    /// Durably records an accepted share; returns once it is in the outbox.
    pub async fn record_accepted(
        &self,
        id: &MinerIdentity,
        template: &JobTemplate,
        work: u128,
        late: bool,
        extra: Vec<Record>,
    ) -> Result<(), OutboxError> {
        let now = now_ms();
        let mut records = Vec::with_capacity(1 + extra.len());
        let work_record = Record::Work(WorkRecord {
            user: id.user.clone(),
            worker: id.worker.clone(),
            coin: template.coin.clone(),
            epoch: template.epoch,
            upstream: template.upstream.name.clone(),
            // Late (grace-window) shares are credited too, but counted apart.
            accepted_work: if late { 0 } else { work },
            accepted_shares: (!late) as u64,
            late_work: if late { work } else { 0 },
            late_shares: late as u64,
            rejected: BTreeMap::new(),
            from_ms: now,
            to_ms: now + 1,
        });
        if self.record_work {
            records.push(work_record);
        }
        records.extend(extra);
        if !records.is_empty() {
            self.outbox.append(records).await?;
        }
        self.counters
            .shares_accepted
            .fetch_add(1, Ordering::Relaxed);
        self.with_worker(id, |s| {
            s.accepted_shares += (!late) as u64;
            s.work += work;
            s.late_shares += late as u64;
            s.last_share_ms = now;
            s.add_work(work, now);
            s.percentages();
        });
        Ok(())
    }

    /// Durably records an accepted share, with a block-candidate event when its hash met the
    /// network target; returns once it is in the outbox (then the miner may hear "accepted").
    pub async fn accept_share(
        &self,
        id: &MinerIdentity,
        template: &JobTemplate,
        checked: &defpool_core::share::CheckedShare,
        work: u128,
        late: bool,
    ) -> Result<(), OutboxError> {
        let mut extra = Vec::new();
        if checked.class == defpool_core::share::ShareClass::BlockCandidate {
            let hash = defpool_core::hash::to_display_hex(&defpool_core::hash::sha256d(
                &checked.header.serialize(),
            ));
            tracing::info!(coin = %template.coin.as_str(), user = %id.user, hash = %hash, "block candidate");
            extra.push(Record::Event(defpool_control::Event::BlockCandidate {
                coin: template.coin.clone(),
                epoch: template.epoch,
                upstream: template.upstream.name.clone(),
                user: id.user.clone(),
                worker: id.worker.clone(),
                block_hash: hash,
                height: None,
                at_ms: now_ms(),
            }));
        }
        self.record_accepted(id, template, work, late, extra).await
    }

    /// Records a rejected share (counted in batches; the reply does not wait for it).
    pub async fn record_rejected(
        &self,
        id: Option<&MinerIdentity>,
        template: Option<&JobTemplate>,
        code: &str,
    ) {
        self.counters
            .shares_rejected
            .fetch_add(1, Ordering::Relaxed);
        let (Some(id), Some(t)) = (id, template) else {
            return;
        };
        if !self.record_work {
            return;
        }
        self.with_worker(id, |s| {
            *s.rejected.entry(code.to_string()).or_default() += 1;
            s.percentages();
        });
        let now = now_ms();
        let record = Record::Work(WorkRecord {
            user: id.user.clone(),
            worker: id.worker.clone(),
            coin: t.coin.clone(),
            epoch: t.epoch,
            upstream: t.upstream.name.clone(),
            accepted_work: 0,
            accepted_shares: 0,
            late_work: 0,
            late_shares: 0,
            rejected: BTreeMap::from([(code.to_string(), 1)]),
            from_ms: now,
            to_ms: now + 1,
        });
        // Rejects are statistics, not acknowledgements: the reply does not wait for the commit.
        let outbox = self.outbox.clone();
        tokio::spawn(async move {
            if let Err(e) = outbox.append(vec![record]).await {
                tracing::error!(error = %e, "could not record a rejected share");
            }
        });
    }

    pub fn set_worker_difficulty(&self, id: &MinerIdentity, d: f64) {
        self.with_worker(id, |s| s.difficulty = d);
    }
}
