//! Upstreams: the pools (SV2, SV1) and coin adapters our miners' work goes to.
//!
//! Each upstream connection is one task that speaks its protocol and reports to its group's
//! router through [`UpstreamEvent`]s; the router and miner sessions send it [`UpstreamCommand`]s
//! through its [`UpstreamHandle`]. Upstream tasks know nothing of miners.

pub mod sv1;
pub mod sv2;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use defpool_control::{UpstreamKind, UpstreamRef};
use defpool_core::hash::Hash32;
use defpool_core::work::Target;
use defpool_core::{Algorithm, Ticker};
use tokio::sync::mpsc;

/// A job as an upstream sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamJob {
    pub job_id: String,
    pub prev_hash: Hash32,
    /// Coinbase bytes before the upstream's extranonce prefix.
    pub coinbase1: Vec<u8>,
    pub coinbase2: Vec<u8>,
    pub merkle_branch: Vec<Hash32>,
    pub version: u32,
    pub nbits: u32,
    pub ntime: u32,
    pub clean: bool,
    /// The upstream's share target in force for this job.
    pub target: Target,
    /// A block target stricter than nbits' (the adapter's regtest `block_target`).
    pub block_target: Option<Target>,
}

/// A share on its way upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamShare {
    pub job_id: String,
    /// The bytes after the upstream's own prefix (SV1 extranonce2, SV2 extended extranonce).
    pub extranonce: Vec<u8>,
    pub ntime: u32,
    pub nonce: u32,
    /// The full header version.
    pub version: u32,
    /// The job's version, so SV1 can send only the rolled bits.
    pub job_version: u32,
    /// Who found it (`user.worker`), for block events.
    pub found_by: String,
    /// Forwarded only because it meets the network target, not the pool's share target (a
    /// regtest chain, or an adapter whose block target is stricter than nBits): the pool may
    /// rightly refuse it, so its reject does not count against the pool's health.
    pub below_pool_target: bool,
}

#[derive(Debug)]
pub enum UpstreamCommand {
    Submit(UpstreamShare),
    Close,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpstreamEvent {
    /// Connected and authorized with this extranonce space.
    Ready {
        extranonce_prefix: Vec<u8>,
        extranonce_size: usize,
        version_mask: u32,
    },
    Job(UpstreamJob),
    /// The upstream changed our extranonce (SV1 set_extranonce, SV2 SetExtranoncePrefix).
    Extranonce {
        extranonce_prefix: Vec<u8>,
        extranonce_size: usize,
    },
    VersionMask(u32),
    Down {
        reason: String,
    },
}

/// Counters an upstream keeps for status and batches.
#[derive(Debug, Default)]
pub struct UpstreamStats {
    pub submitted: AtomicU64,
    pub accepted: AtomicU64,
    pub rejected: AtomicU64,
}

impl UpstreamStats {
    pub fn snapshot(&self) -> (u64, u64, u64) {
        (
            self.submitted.load(Ordering::Relaxed),
            self.accepted.load(Ordering::Relaxed),
            self.rejected.load(Ordering::Relaxed),
        )
    }
}

/// Where shares for an upstream go. Miner sessions keep one per job so that shares for a
/// previous coin's jobs still reach the previous upstream during the grace window.
#[derive(Debug)]
pub struct UpstreamHandle {
    pub name: String,
    pub coin: Ticker,
    /// A number unique per connection attempt, so events of an old connection are ignored.
    pub generation: u64,
    pub commands: mpsc::Sender<UpstreamCommand>,
    pub stats: Arc<UpstreamStats>,
}

impl UpstreamHandle {
    /// Hands a share to the upstream task; a closed upstream drops it (its work is still
    /// accounted: forwarding only earns the pool's credit upstream).
    pub async fn submit(&self, share: UpstreamShare) -> bool {
        self.commands
            .send(UpstreamCommand::Submit(share))
            .await
            .is_ok()
    }
}

/// Timeouts that make an upstream count as stalled.
#[derive(Clone, Copy, Debug)]
pub struct StallLimits {
    pub connect: Duration,
    pub no_job: Duration,
    pub no_submit_reply: Duration,
    /// Out of the last 20 results, this many rejects mark the upstream down.
    pub reject_streak: usize,
}

impl Default for StallLimits {
    fn default() -> Self {
        StallLimits {
            connect: Duration::from_secs(5),
            no_job: Duration::from_secs(120),
            no_submit_reply: Duration::from_secs(30),
            reject_streak: 15,
        }
    }
}

/// What an upstream task needs to start.
#[derive(Clone, Debug)]
pub struct UpstreamSpec {
    pub upstream: UpstreamRef,
    pub algorithm: Algorithm,
    /// Version bits this coin allows rolling.
    pub coin_version_mask: u32,
    /// Extranonce bytes we need downstream (SV2 min_extranonce_size).
    pub min_extranonce_size: usize,
    pub limits: StallLimits,
}

/// Tagged events as the router receives them.
pub type RoutedEvent = (String, u64, UpstreamEvent);

/// Something other than a pool that produces jobs and takes shares (the adapter's coin daemon).
pub trait UpstreamConnector: Send + Sync {
    /// Runs the upstream until it is down or closed; returns the reason.
    fn run(
        &self,
        spec: UpstreamSpec,
        emitter: Emitter,
        commands: mpsc::Receiver<UpstreamCommand>,
        stats: Arc<UpstreamStats>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = String> + Send>>;
}

/// Starts an upstream connection task; its events arrive tagged with `(name, generation)`.
pub fn spawn(
    spec: UpstreamSpec,
    generation: u64,
    events: mpsc::Sender<RoutedEvent>,
    connector: Option<Arc<dyn UpstreamConnector>>,
) -> Arc<UpstreamHandle> {
    let (tx, rx) = mpsc::channel(4096);
    let stats = Arc::new(UpstreamStats::default());
    let handle = Arc::new(UpstreamHandle {
        name: spec.upstream.name.clone(),
        coin: spec.upstream.coin.clone(),
        generation,
        commands: tx,
        stats: stats.clone(),
    });
    let name = spec.upstream.name.clone();
    let emitter = Emitter {
        name,
        generation,
        events,
    };
    tokio::spawn(async move {
        let reason = match (connector, spec.upstream.kind) {
            (Some(c), _) => c.run(spec, emitter.clone(), rx, stats).await,
            (None, UpstreamKind::Sv1) => sv1::run(spec, &emitter, rx, stats).await,
            (None, UpstreamKind::Sv2 | UpstreamKind::Adapter) => {
                sv2::run(spec, &emitter, rx, stats).await
            }
        };
        emitter.emit(UpstreamEvent::Down { reason }).await;
    });
    handle
}

/// Sends an upstream's events to its router, tagged.
#[derive(Clone)]
pub struct Emitter {
    pub name: String,
    pub generation: u64,
    events: mpsc::Sender<RoutedEvent>,
}

impl Emitter {
    /// An emitter into `events`, for a connector run outside the router (its tests).
    pub fn new(name: String, generation: u64, events: mpsc::Sender<RoutedEvent>) -> Emitter {
        Emitter {
            name,
            generation,
            events,
        }
    }

    pub async fn emit(&self, event: UpstreamEvent) {
        let _ = self
            .events
            .send((self.name.clone(), self.generation, event))
            .await;
    }
}

/// `stratum+tcp://host:port` (or `stratum2+tcp://`, or bare `host:port`) → `host:port`.
pub fn host_port(address: &str) -> String {
    let rest = address.split_once("://").map_or(address, |(_, r)| r);
    rest.trim_end_matches('/').to_string()
}

/// A share sent upstream and not yet answered.
#[derive(Clone, Copy, Debug)]
pub struct Sent {
    pub at: std::time::Instant,
    /// See `UpstreamShare::below_pool_target`.
    pub below_pool_target: bool,
}

impl Sent {
    pub fn now(share: &UpstreamShare) -> Sent {
        Sent {
            at: std::time::Instant::now(),
            below_pool_target: share.below_pool_target,
        }
    }
}

/// Rolling window of the last results, for the persistent-reject rule.
#[derive(Debug, Default)]
pub struct ResultWindow {
    bits: std::collections::VecDeque<bool>,
}

impl ResultWindow {
    pub fn push(&mut self, accepted: bool) {
        if self.bits.len() == 20 {
            self.bits.pop_front();
        }
        self.bits.push_back(accepted);
    }

    pub fn rejects(&self) -> usize {
        self.bits.iter().filter(|a| !**a).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(host_port("stratum+tcp://127.0.0.1:3333"), "127.0.0.1:3333");
        assert_eq!(
            host_port("stratum2+tcp://pool.example:34254/"),
            "pool.example:34254"
        );
        assert_eq!(host_port("127.0.0.1:1"), "127.0.0.1:1");
    }

    #[test]
    fn reject_window_counts_the_last_twenty() {
        let mut w = ResultWindow::default();
        for _ in 0..30 {
            w.push(false);
        }
        assert_eq!(w.rejects(), 20);
        for _ in 0..5 {
            w.push(true);
        }
        assert_eq!(w.rejects(), 15);
    }
}
