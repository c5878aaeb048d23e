//! The coin daemon as the adapter's upstream: templates become jobs for the proxies' channels,
//! shares that meet the block target become `submitblock` calls, and found blocks are followed
//! to maturity or orphaning.
//!
//! New blocks are noticed three ways: a long-polling `getblocktemplate` (Debian's litecoind has
//! no ZMQ), a cheap `getbestblockhash` poll, and a refresh timer that also picks up new
//! transactions. A node in initial block download or without peers refuses templates: that is
//! logged with the node's reason and retried while proxies keep their last work (and fail over
//! after their stall limit).

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use defpool_control::{BlockState, Event, Record};
use defpool_core::hash::{to_display_hex, Hash32};
use defpool_core::work::{CompactTarget, Target};
use defpool_core::Ticker;
use defpool_proxy::group::now_ms;
use defpool_proxy::outbox::Outbox;
use defpool_proxy::upstream::{
    Emitter, UpstreamCommand, UpstreamConnector, UpstreamEvent, UpstreamJob, UpstreamShare,
    UpstreamSpec, UpstreamStats,
};
use tokio::sync::mpsc;

use crate::lifecycle::Tracker;
use crate::{assemble_block, BlockTemplate, CoinbaseParts, DaemonRpc, HeaderFields, RpcError};

/// What the daemon task needs besides the RPC client.
pub struct DaemonSettings {
    pub adapter: String,
    pub coin: Ticker,
    pub rules: Vec<String>,
    pub payout_script: Vec<u8>,
    pub tag: String,
    pub extranonce_size: usize,
    /// Regtest: a target stricter than nbits for block candidates.
    pub block_target: Option<Target>,
    pub refresh: Duration,
    pub maturity: u32,
    pub tracker_file: PathBuf,
}

pub struct DaemonConnector {
    inner: Arc<Inner>,
}

struct Inner {
    rpc: DaemonRpc,
    settings: DaemonSettings,
    outbox: Outbox,
    tracker: Mutex<Tracker>,
    submitted: Mutex<HashSet<Hash32>>,
    /// Parents one of our blocks extends (or is being submitted on): a second block on the
    /// same parent can only lose to our own ("inconclusive"), so it is not submitted.
    extended_parents: Mutex<HashSet<Hash32>>,
    /// Whether the block follower runs (it is started by the first session and outlives it).
    following: std::sync::atomic::AtomicBool,
}

impl DaemonConnector {
    pub fn new(rpc: DaemonRpc, settings: DaemonSettings, outbox: Outbox) -> DaemonConnector {
        let tracker = std::fs::read(&settings.tracker_file)
            .ok()
            .and_then(|b| serde_json::from_slice::<Tracker>(&b).ok())
            .unwrap_or_else(|| Tracker::new(settings.maturity));
        DaemonConnector {
            inner: Arc::new(Inner {
                rpc,
                settings,
                outbox,
                tracker: Mutex::new(tracker),
                submitted: Mutex::new(HashSet::new()),
                extended_parents: Mutex::new(HashSet::new()),
                following: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }
}

impl UpstreamConnector for DaemonConnector {
    fn run(
        &self,
        spec: UpstreamSpec,
        emitter: Emitter,
        commands: mpsc::Receiver<UpstreamCommand>,
        stats: Arc<UpstreamStats>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = String> + Send>> {
        let inner = self.inner.clone();
        Box::pin(async move { inner.run(spec, emitter, commands, stats).await })
    }
}

struct Work {
    template: Arc<BlockTemplate>,
    parts: Arc<CoinbaseParts>,
}

const JOBS_KEPT: usize = 32;
const TIP_POLL: Duration = Duration::from_millis(250);

impl Inner {
    fn block_target(&self, bits: u32) -> Target {
        let network = CompactTarget(bits)
            .to_target()
            .unwrap_or_else(Target::diff1);
        match self.settings.block_target {
            Some(t) => t.harder(network),
            None => network,
        }
    }

    async fn event(&self, event: Event) {
        if let Err(e) = self.outbox.append(vec![Record::Event(event)]).await {
            tracing::error!(adapter = %self.settings.adapter, error = %e, "could not record a block event");
        }
    }

    fn save_tracker(&self) {
        let json = {
            let t = self.tracker.lock().expect("tracker lock");
            serde_json::to_vec_pretty(&*t).unwrap_or_default()
        };
        let path = &self.settings.tracker_file;
        let tmp = path.with_extension("tmp");
        if std::fs::write(&tmp, json)
            .and_then(|_| std::fs::rename(&tmp, path))
            .is_err()
        {
            tracing::warn!(file = %path.display(), "could not save the block tracker");
        }
    }

    /// A template, or the reason to wait (`Ok(None)`: the node is not ready, retry) or give up.
    async fn template(&self, longpoll: Option<String>) -> Result<Option<BlockTemplate>, String> {
        let is_longpoll = longpoll.is_some();
        match self
            .rpc
            .get_block_template(&self.settings.rules, longpoll)
            .await
        {
            Ok(t) => Ok(Some(t)),
            // A long poll ends in a timeout whenever no block comes for a while.
            Err(RpcError::Timeout { .. }) if is_longpoll => Ok(None),
            Err(e @ RpcError::Timeout { .. }) => {
                tracing::warn!(adapter = %self.settings.adapter, error = %e, "getblocktemplate timed out; retrying");
                Ok(None)
            }
            // In initial block download, without peers, a transient refusal: wait and retry.
            Err(e) if e.rpc_code().is_some() => {
                tracing::warn!(adapter = %self.settings.adapter, error = %e, "the node refuses templates for now; proxies keep their last work");
                Ok(None)
            }
            Err(e) => Err(format!("getblocktemplate: {e}")),
        }
    }

    async fn run(
        self: Arc<Self>,
        spec: UpstreamSpec,
        emitter: Emitter,
        mut commands: mpsc::Receiver<UpstreamCommand>,
        stats: Arc<UpstreamStats>,
    ) -> String {
        let name = self.settings.adapter.clone();
        // The node must be reachable and out of initial block download.
        loop {
            match self.rpc.get_blockchain_info().await {
                Ok(info) if info.initial_block_download => {
                    tracing::warn!(adapter = %name, blocks = info.blocks, headers = info.headers, "node is in initial block download; waiting");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
                Ok(info) => {
                    tracing::info!(adapter = %name, chain = %info.chain, height = info.blocks, "node ready");
                    break;
                }
                Err(e) => return format!("node not usable: {e}"),
            }
        }
        if let Ok(0) = self.rpc.get_connection_count().await {
            tracing::warn!(adapter = %name, "node has no peers: blocks it accepts reach nobody else");
        }
        // Found blocks are followed from now on, by a task that outlives this session.
        if !self
            .following
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            tokio::spawn(self.clone().follow_forever());
        }

        emitter
            .emit(UpstreamEvent::Ready {
                extranonce_prefix: Vec::new(),
                extranonce_size: self.settings.extranonce_size,
                version_mask: spec.coin_version_mask,
            })
            .await;

        let mut jobs: BTreeMap<u32, Work> = BTreeMap::new();
        let mut next_job: u32 = 1;
        let mut tip: Option<Hash32> = None;
        let mut longpoll_id: Option<String> = None;
        let (lp_tx, mut lp_rx) = mpsc::channel::<BlockTemplate>(4);
        let mut lp_task: Option<tokio::task::JoinHandle<()>> = None;
        let mut tip_tick = tokio::time::interval(TIP_POLL);
        let mut refresh = tokio::time::interval(self.settings.refresh);
        refresh.tick().await;
        let mut need_template = true;

        let result = loop {
            if need_template {
                match self.template(None).await {
                    Ok(Some(t)) => {
                        need_template = false;
                        longpoll_id = t.longpoll_id.clone();
                        if let Err(e) = self
                            .publish(&emitter, t, &mut jobs, &mut next_job, &mut tip)
                            .await
                        {
                            break e;
                        }
                    }
                    Ok(None) => tokio::time::sleep(Duration::from_secs(2)).await,
                    Err(e) => break e,
                }
                continue;
            }
            if lp_task.as_ref().is_none_or(|t| t.is_finished()) {
                if let Some(id) = longpoll_id.clone() {
                    let me = self.clone();
                    let tx = lp_tx.clone();
                    lp_task = Some(tokio::spawn(async move {
                        if let Ok(Some(t)) = me.template(Some(id)).await {
                            let _ = tx.send(t).await;
                        }
                    }));
                }
            }
            tokio::select! {
                Some(t) = lp_rx.recv() => {
                    longpoll_id = t.longpoll_id.clone();
                    if let Err(e) = self.publish(&emitter, t, &mut jobs, &mut next_job, &mut tip).await {
                        break e;
                    }
                }
                _ = tip_tick.tick() => match self.rpc.get_best_block_hash().await {
                    Ok(best) if Some(best) != tip => need_template = true,
                    Ok(_) => {}
                    Err(e) if e.is_transient() => tracing::warn!(adapter = %name, error = %e, "tip poll failed"),
                    Err(e) => break format!("getbestblockhash: {e}"),
                },
                _ = refresh.tick() => need_template = true,
                cmd = commands.recv() => match cmd {
                    Some(UpstreamCommand::Submit(share)) => {
                        stats.submitted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        self.submit(&jobs, share, &stats).await;
                    }
                    Some(UpstreamCommand::Close) | None => break "closed".into(),
                },
            }
        };
        if let Some(t) = lp_task {
            t.abort();
        }
        result
    }

    async fn publish(
        &self,
        emitter: &Emitter,
        template: BlockTemplate,
        jobs: &mut BTreeMap<u32, Work>,
        next_job: &mut u32,
        tip: &mut Option<Hash32>,
    ) -> Result<(), String> {
        let parts = CoinbaseParts::build(
            &template,
            &self.settings.payout_script,
            &self.settings.tag,
            self.settings.extranonce_size,
        )
        .map_err(|e| {
            format!(
                "cannot build the coinbase for height {}: {e}",
                template.height
            )
        })?;
        let clean = *tip != Some(template.previous_block_hash);
        *tip = Some(template.previous_block_hash);
        let id = *next_job;
        *next_job = next_job.wrapping_add(1).max(1);
        let target = self.block_target(template.bits);
        let job = UpstreamJob {
            job_id: id.to_string(),
            prev_hash: template.previous_block_hash,
            coinbase1: parts.prefix.clone(),
            coinbase2: parts.suffix.clone(),
            merkle_branch: crate::merkle_branch(&template),
            version: template.version,
            nbits: template.bits,
            ntime: template.cur_time.max(template.min_time),
            clean,
            target,
            block_target: Some(target),
        };
        tracing::debug!(adapter = %self.settings.adapter, height = template.height, txs = template.transactions.len(), mweb = template.mweb.is_some(), clean, "new template");
        jobs.insert(
            id,
            Work {
                template: Arc::new(template),
                parts: Arc::new(parts),
            },
        );
        while jobs.len() > JOBS_KEPT {
            jobs.pop_first();
        }
        emitter.emit(UpstreamEvent::Job(job)).await;
        Ok(())
    }

    /// A share that met the block target: assemble the block and submit it, once.
    async fn submit(
        &self,
        jobs: &BTreeMap<u32, Work>,
        share: UpstreamShare,
        stats: &UpstreamStats,
    ) {
        let adapter = &self.settings.adapter;
        let Some(work) = share
            .job_id
            .parse::<u32>()
            .ok()
            .and_then(|id| jobs.get(&id))
        else {
            tracing::warn!(adapter = %adapter, job = %share.job_id, "block candidate for a job no longer kept");
            return;
        };
        let fields = HeaderFields {
            version: share.version,
            ntime: share.ntime,
            nonce: share.nonce,
        };
        let block = match assemble_block(&work.template, &work.parts, &share.extranonce, fields) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(adapter = %adapter, error = %e, "cannot assemble the block");
                return;
            }
        };
        if !self
            .submitted
            .lock()
            .expect("submitted lock")
            .insert(block.hash)
        {
            tracing::info!(adapter = %adapter, hash = %to_display_hex(&block.hash), "block already submitted; not again");
            return;
        }
        let parent = work.template.previous_block_hash;
        if !self
            .extended_parents
            .lock()
            .expect("parents lock")
            .insert(parent)
        {
            tracing::info!(adapter = %adapter, hash = %to_display_hex(&block.hash), height = work.template.height, "block candidate on a parent our own block already extends; not submitted");
            return;
        }
        let hash = to_display_hex(&block.hash);
        let height = work.template.height as u64;
        let reward = work.template.coinbase_value;
        let coin = self.settings.coin.clone();
        match self.rpc.submit_block(&block.hex()).await {
            Ok(None) => {
                stats
                    .accepted
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::info!(adapter = %adapter, coin = %coin.as_str(), height, hash = %hash, reward, found_by = %share.found_by, "block accepted by the node");
                self.tracker
                    .lock()
                    .expect("tracker lock")
                    .found(&hash, height, reward);
                self.save_tracker();
                self.event(Event::BlockFound {
                    coin: coin.clone(),
                    adapter: adapter.clone(),
                    height,
                    block_hash: hash.clone(),
                    reward,
                    found_by: share.found_by.clone(),
                    at_ms: now_ms(),
                })
                .await;
                self.event(Event::BlockStatus {
                    coin,
                    adapter: adapter.clone(),
                    height,
                    block_hash: hash,
                    state: BlockState::Immature,
                    confirmations: 1,
                    at_ms: now_ms(),
                })
                .await;
            }
            Ok(Some(reason)) => {
                stats
                    .rejected
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(adapter = %adapter, height, hash = %hash, reason = %reason, "the node rejected our block");
                self.extended_parents
                    .lock()
                    .expect("parents lock")
                    .remove(&parent);
                self.event(Event::BlockRejected {
                    coin,
                    adapter: adapter.clone(),
                    height,
                    block_hash: hash,
                    reason,
                    at_ms: now_ms(),
                })
                .await;
            }
            Err(e) => {
                // Whether it landed is unknown: the tracker asks the node by hash from now on.
                tracing::error!(adapter = %adapter, height, hash = %hash, error = %e, "submitblock failed; will look the block up");
                self.tracker
                    .lock()
                    .expect("tracker lock")
                    .found(&hash, height, reward);
                self.save_tracker();
            }
        }
    }

    /// Follows found blocks for the life of the process, whenever the node's tip moves. Apart
    /// from the sessions: a template's tip is no sign that the blocks were followed (a long
    /// poll can bring the new tip first), and a block must still mature or orphan while no
    /// session is up.
    async fn follow_forever(self: Arc<Self>) {
        let mut tick = tokio::time::interval(TIP_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut followed: Option<Hash32> = None;
        let mut failing = false;
        loop {
            tick.tick().await;
            match self.rpc.get_best_block_hash().await {
                Ok(best) => {
                    failing = false;
                    if Some(best) != followed && self.follow_blocks().await {
                        followed = Some(best);
                    }
                }
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(adapter = %self.settings.adapter, error = %e, "cannot read the node's tip to follow found blocks; retrying");
                }
                Err(_) => {}
            }
        }
    }

    /// Asks the node where each tracked block stands and reports changes; false if the node
    /// could not be asked (try again).
    async fn follow_blocks(&self) -> bool {
        let watched = self.tracker.lock().expect("tracker lock").watched();
        if watched.is_empty() {
            return true;
        }
        let mut tip_height = 0;
        let mut changed = false;
        for hash in watched {
            let Some(h) = defpool_core::hash::from_display_hex(&hash) else {
                continue;
            };
            let confirmations = match self.rpc.get_block_header(&h).await {
                Ok(info) => {
                    tip_height = tip_height.max(info.height + info.confirmations.max(1) as u64 - 1);
                    info.confirmations
                }
                Err(e) if e.rpc_code().is_some() => -1, // unknown to the node: never landed
                Err(e) => {
                    tracing::warn!(error = %e, "cannot follow found blocks now");
                    return false;
                }
            };
            let transition = self
                .tracker
                .lock()
                .expect("tracker lock")
                .observe(&hash, confirmations);
            if let Some(t) = transition {
                changed = true;
                tracing::info!(adapter = %self.settings.adapter, height = t.height, hash = %t.hash, from = ?t.from, to = ?t.to, confirmations, "found block changed state");
                self.event(Event::BlockStatus {
                    coin: self.settings.coin.clone(),
                    adapter: self.settings.adapter.clone(),
                    height: t.height,
                    block_hash: t.hash,
                    state: t.to,
                    confirmations,
                    at_ms: now_ms(),
                })
                .await;
            }
        }
        if tip_height > 0 {
            self.tracker.lock().expect("tracker lock").prune(tip_height);
        }
        if changed {
            self.save_tracker();
        }
        true
    }
}
