//! Simulated miners: each one a task on a shared runtime that connects, negotiates, follows the
//! jobs it is sent and really hashes them, submitting every share it finds.
//!
//! Hashing is cooperative: a miner hashes a small batch (256 sha256d or 4 scrypt headers), then
//! yields, so thousands of miners share the cores fairly and replies are read promptly.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use defpool_core::coin::Algorithm;
use defpool_core::work::Target;
use defpool_stratum::sv1::{
    self, error_code, parse_line, Configure, Incoming, LineReader, MinerRequest, PoolMessage,
    Submit,
};
use serde_json::Value;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};

use crate::search::{Found, Search, Work};
use crate::{
    percentile, raise_fd_limit, require_loopback, LoadgenError, MinerKind, MinersOptions,
    MinersReport, SteadyLatency, SwitchPlan, SwitchReport, SWITCH_WINDOW, UNTAGGED,
};

/// The version bits a rolling miner asks for (BIP320's general-purpose bits).
const REQUESTED_VERSION_MASK: u32 = 0x1fff_e000;

/// How long a miner ending a session (run over, reconnect asked) waits for the answers to its
/// last shares.
pub(crate) const DRAIN: Duration = Duration::from_secs(2);

/// Pause before reconnecting after a lost connection.
const RETRY_DELAY: Duration = Duration::from_secs(1);

/// Hashes per cooperative batch.
pub(crate) fn batch(algorithm: Algorithm) -> u32 {
    match algorithm {
        Algorithm::Sha256d => 256,
        Algorithm::Scrypt => 4,
    }
}

/// When miner `index` may submit its first share when pacing (spread over one interval).
pub(crate) fn first_submit(ctx: &Ctx, index: usize) -> tokio::time::Instant {
    tokio::time::Instant::now()
        + ctx
            .pace
            .map(|p| p.mul_f64((index % 1000) as f64 / 1000.0))
            .unwrap_or_default()
}

/// After a submission: when the next one may go (no catching up by more than one interval).
pub(crate) fn paced(ctx: &Ctx, next_submit: &mut tokio::time::Instant) {
    if let Some(p) = ctx.pace {
        let now = tokio::time::Instant::now();
        *next_submit = (*next_submit + p).max(now.checked_sub(p).unwrap_or(now));
    }
}

/// Counters every miner updates, for the progress line and the stop conditions.
#[derive(Default)]
pub(crate) struct Counters {
    pub connected_now: AtomicU64,
    pub connected_ever: AtomicU64,
    pub submitted: AtomicU64,
    pub accepted: AtomicU64,
    pub rejected: AtomicU64,
    pub disconnects: AtomicU64,
    /// Submission slots handed out (bounded by `max_shares`).
    pub reserved: AtomicU64,
    /// Shares answered or given up on (connection lost).
    pub settled: AtomicU64,
}

/// What every miner shares.
pub(crate) struct Ctx {
    pub opts: MinersOptions,
    pub counters: Counters,
    pub start: Instant,
    /// When the switch was commanded.
    pub switch_at: OnceLock<Instant>,
    /// Notified when `max_shares` shares are settled.
    pub done: Notify,
    pub limit_reached: AtomicBool,
    /// Time between submissions of one miner when pacing.
    pub pace: Option<Duration>,
    /// When the last miner completed its first handshake.
    pub ramp_done: Mutex<Option<Instant>>,
}

impl Ctx {
    /// A slot for one more share, unless `max_shares` are out.
    pub fn reserve_share(&self) -> bool {
        match self.opts.max_shares {
            None => true,
            Some(max) => {
                let ok = self.counters.reserved.fetch_add(1, Ordering::Relaxed) < max;
                if !ok {
                    self.limit_reached.store(true, Ordering::Relaxed);
                }
                ok
            }
        }
    }

    pub fn settle(&self, n: u64) {
        if n == 0 {
            return;
        }
        let settled = self.counters.settled.fetch_add(n, Ordering::Relaxed) + n;
        if self.opts.max_shares.is_some_and(|max| settled >= max) {
            self.done.notify_one();
        }
    }

    pub fn handshake_done(&self, stats: &mut MinerStats) {
        self.counters.connected_now.fetch_add(1, Ordering::Relaxed);
        if !stats.connected {
            stats.connected = true;
            let n = self.counters.connected_ever.fetch_add(1, Ordering::Relaxed) + 1;
            if n as usize == self.opts.count {
                *self.ramp_done.lock().expect("ramp lock") = Some(Instant::now());
            }
        }
    }

    /// Whether a share submitted now falls in the switch window.
    pub fn in_switch_window(&self, now: Instant) -> bool {
        self.switch_at
            .get()
            .is_some_and(|t0| now >= *t0 && now.duration_since(*t0) <= SWITCH_WINDOW)
    }
}

/// One miner's results, merged into the report at the end.
#[derive(Default)]
pub(crate) struct MinerStats {
    pub connected: bool,
    pub disconnects: u64,
    pub reconnects: u64,
    pub connect_failures: u64,
    pub jobs: u64,
    pub submitted: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub unanswered: u64,
    pub rejects: BTreeMap<String, u64>,
    pub work: BTreeMap<Arc<str>, u128>,
    pub latencies_us: Vec<u32>,
    /// Latencies of the shares sent at or after `latency_after`.
    pub steady_latencies_us: Vec<u32>,
    pub switch_ms: Option<f64>,
    pub stale_in_window: u64,
    pub shares_in_window: u64,
    /// The coin of the last job, to notice a switch.
    pub coin: Option<Arc<str>>,
}

/// A share waiting for its answer.
pub(crate) struct InFlight {
    pub sent: Instant,
    pub coin: Option<Arc<str>>,
    pub work: u128,
    pub in_window: bool,
}

impl MinerStats {
    /// A new job arrived: count it and notice a coin switch after the command.
    pub fn job(&mut self, ctx: &Ctx, coin: &Option<Arc<str>>) {
        self.jobs += 1;
        if *coin != self.coin {
            if let Some(t0) = ctx.switch_at.get() {
                let now = Instant::now();
                if self.switch_ms.is_none() && now >= *t0 && self.coin.is_some() {
                    self.switch_ms = Some(now.duration_since(*t0).as_secs_f64() * 1e3);
                }
            }
            self.coin = coin.clone();
        }
    }

    /// A new block on a channel that cannot see coin tags (SV2 standard): the first one after
    /// the command counts as the switch.
    pub fn switch_point(&mut self, ctx: &Ctx) {
        if let Some(t0) = ctx.switch_at.get() {
            let now = Instant::now();
            if self.switch_ms.is_none() && now >= *t0 {
                self.switch_ms = Some(now.duration_since(*t0).as_secs_f64() * 1e3);
            }
        }
    }

    pub fn submitted(&mut self, ctx: &Ctx, in_window: bool) {
        self.submitted += 1;
        if in_window {
            self.shares_in_window += 1;
        }
        ctx.counters.submitted.fetch_add(1, Ordering::Relaxed);
    }

    pub fn accepted(&mut self, ctx: &Ctx, share: InFlight) {
        self.accepted += 1;
        self.answered(ctx, &share);
        let coin = share.coin.unwrap_or_else(|| Arc::from(UNTAGGED));
        *self.work.entry(coin).or_default() += share.work;
        ctx.counters.accepted.fetch_add(1, Ordering::Relaxed);
        ctx.settle(1);
    }

    pub fn rejected(&mut self, ctx: &Ctx, share: InFlight, reason: String, stale: bool) {
        self.rejected += 1;
        self.answered(ctx, &share);
        if stale && share.in_window {
            self.stale_in_window += 1;
        }
        *self.rejects.entry(reason).or_default() += 1;
        ctx.counters.rejected.fetch_add(1, Ordering::Relaxed);
        ctx.settle(1);
    }

    /// Records the share's submit → reply latency, in the steady window too if it was sent in
    /// it.
    fn answered(&mut self, ctx: &Ctx, share: &InFlight) {
        let us = share.sent.elapsed().as_micros().min(u32::MAX as u128) as u32;
        self.latencies_us.push(us);
        if ctx
            .opts
            .latency_after
            .is_some_and(|after| share.sent >= ctx.start + after)
        {
            self.steady_latencies_us.push(us);
        }
    }

    pub fn lost(&mut self, ctx: &Ctx, n: usize) {
        self.unanswered += n as u64;
        ctx.settle(n as u64);
    }
}

/// How a session ended.
pub(crate) enum End {
    /// The run is over.
    Stopped,
    /// The server asked us to reconnect (to this address, after this pause).
    Reconnect(SocketAddr, Duration),
    /// The server closed or broke the connection after the handshake.
    Lost(String),
    /// Connecting or the handshake failed.
    Failed(String),
}

/// `--handshake-only`: count the connection as made, keep it open until the run stops.
pub(crate) async fn hold(
    ctx: &Ctx,
    stats: &mut MinerStats,
    stop: &mut watch::Receiver<bool>,
) -> End {
    ctx.handshake_done(stats);
    let _ = stop.wait_for(|s| *s).await;
    ctx.counters.connected_now.fetch_sub(1, Ordering::Relaxed);
    End::Stopped
}

/// The username miner `index` uses.
pub fn worker_name(username: &str, index: usize) -> String {
    if username.contains('.') {
        username.to_string()
    } else {
        format!("{username}.w{index}")
    }
}

/// Run `opts.count` miners against `opts.url` for `opts.duration` (or until `max_shares` are
/// answered); with a `switch`, command it at `switch.at` and measure how the miners follow.
pub async fn run_miners(
    opts: MinersOptions,
    switch: Option<SwitchPlan>,
) -> Result<MinersReport, LoadgenError> {
    require_loopback("miners' target", opts.url)?;
    if opts.count == 0 {
        return Err(LoadgenError::option("count", "at least one miner"));
    }
    if opts.duration.is_zero() {
        return Err(LoadgenError::option("duration", "must be positive"));
    }
    if let Some(rate) = opts.target_shares_per_sec {
        if !(rate.is_finite() && rate > 0.0) {
            return Err(LoadgenError::option(
                "target_shares_per_sec",
                "must be a positive number",
            ));
        }
    }
    if opts.kind.is_sv2() {
        crate::miner_sv2::check(&opts)?;
    }
    if let Some(plan) = &switch {
        crate::http::parse_url(&plan.admin_url).await?;
    }
    let want = 20_000u64.max(opts.count as u64 * 2 + 256);
    let limit = raise_fd_limit(want)?;
    if limit < opts.count as u64 + 64 {
        return Err(LoadgenError::option(
            "count",
            format!(
                "the file-descriptor limit is {limit}, too low for {} miners",
                opts.count
            ),
        ));
    }

    let pace = opts
        .target_shares_per_sec
        .map(|rate| Duration::from_secs_f64(opts.count as f64 / rate));
    let (stop_tx, stop_rx) = watch::channel(false);
    let ctx = Arc::new(Ctx {
        opts,
        counters: Counters::default(),
        start: Instant::now(),
        switch_at: OnceLock::new(),
        done: Notify::new(),
        limit_reached: AtomicBool::new(false),
        pace,
        ramp_done: Mutex::new(None),
    });

    let mut miners = Vec::with_capacity(ctx.opts.count);
    for index in 0..ctx.opts.count {
        let delay = match ctx.opts.connect_rate_per_sec {
            0 => Duration::ZERO,
            rate => Duration::from_secs_f64(index as f64 / rate as f64),
        };
        miners.push(tokio::spawn(miner(
            index,
            delay,
            ctx.clone(),
            stop_rx.clone(),
        )));
    }
    let progress = ctx
        .opts
        .progress
        .then(|| tokio::spawn(progress_lines(ctx.clone())));
    let switch_result = Arc::new(Mutex::new(None::<(u16, Option<String>)>));
    let switcher = switch.map(|plan| {
        let ctx = ctx.clone();
        let result = switch_result.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until((ctx.start + plan.at).into()).await;
            let _ = ctx.switch_at.set(Instant::now());
            let outcome = crate::http::post_json(
                &plan.admin_url,
                "/assign",
                &plan.token,
                &plan.assignment_json,
            )
            .await;
            let entry = match outcome {
                Ok(status) if (200..300).contains(&status) => (status, None),
                Ok(status) => (status, Some(format!("admin endpoint answered {status}"))),
                Err(e) => (0, Some(e.to_string())),
            };
            if let Some(err) = &entry.1 {
                tracing::warn!(error = %err, "loadgen: switch command failed");
            }
            *result.lock().expect("switch lock") = Some(entry);
        })
    });

    tokio::select! {
        _ = tokio::time::sleep(ctx.opts.duration) => {}
        _ = ctx.done.notified() => {}
    }
    let elapsed = ctx.start.elapsed();
    let _ = stop_tx.send(true);
    let mut all = Vec::with_capacity(miners.len());
    for m in miners {
        match m.await {
            Ok(stats) => all.push(stats),
            Err(e) => tracing::warn!(error = %e, "loadgen: a miner task failed"),
        }
    }
    if let Some(p) = progress {
        p.abort();
    }
    let switch = match switcher {
        Some(task) => {
            if ctx.switch_at.get().is_none() {
                task.abort();
            } else {
                let _ = task.await;
            }
            Some(switch_result.lock().expect("switch lock").take())
        }
        None => None,
    };
    Ok(report(&ctx, all, elapsed, switch))
}

fn report(
    ctx: &Ctx,
    all: Vec<MinerStats>,
    elapsed: Duration,
    switch: Option<Option<(u16, Option<String>)>>,
) -> MinersReport {
    let mut r = MinersReport {
        kind: Some(ctx.opts.kind),
        miners: ctx.opts.count as u64,
        elapsed_secs: elapsed.as_secs_f64(),
        ..MinersReport::default()
    };
    let mut latencies = Vec::new();
    let mut steady = Vec::new();
    let mut switch_ms = Vec::new();
    let (mut stale_in_window, mut shares_in_window) = (0, 0);
    for s in all {
        r.connected += s.connected as u64;
        r.disconnects += s.disconnects;
        r.reconnects += s.reconnects;
        r.connect_failures += s.connect_failures;
        r.jobs_received += s.jobs;
        r.shares_submitted += s.submitted;
        r.shares_accepted += s.accepted;
        r.shares_rejected += s.rejected;
        r.shares_unanswered += s.unanswered;
        for (reason, n) in s.rejects {
            *r.rejects_by_reason.entry(reason).or_default() += n;
        }
        for (coin, w) in s.work {
            *r.accepted_work_by_coin.entry(coin.to_string()).or_default() += w;
            r.accepted_work_total += w;
        }
        latencies.extend_from_slice(&s.latencies_us);
        steady.extend_from_slice(&s.steady_latencies_us);
        switch_ms.extend(s.switch_ms);
        stale_in_window += s.stale_in_window;
        shares_in_window += s.shares_in_window;
    }
    latencies.sort_unstable();
    r.latency_us_p50 = percentile(&latencies, 50.0) as u64;
    r.latency_us_p99 = percentile(&latencies, 99.0) as u64;
    r.latency_us_max = latencies.last().copied().unwrap_or(0) as u64;
    r.steady_latency = ctx.opts.latency_after.map(|after| {
        steady.sort_unstable();
        SteadyLatency {
            after_secs: after.as_secs_f64(),
            shares: steady.len() as u64,
            latency_us_p50: percentile(&steady, 50.0) as u64,
            latency_us_p99: percentile(&steady, 99.0) as u64,
            latency_us_max: steady.last().copied().unwrap_or(0) as u64,
        }
    });
    r.shares_per_sec = r.shares_accepted as f64 / elapsed.as_secs_f64().max(1e-9);
    r.ramp_secs = ctx
        .ramp_done
        .lock()
        .expect("ramp lock")
        .map(|t| t.duration_since(ctx.start).as_secs_f64())
        .unwrap_or(r.elapsed_secs);
    r.switch = switch.map(|outcome| {
        switch_ms.sort_by(f64::total_cmp);
        let (http_status, error) = outcome.unwrap_or((0, Some("the switch was not sent".into())));
        SwitchReport {
            http_status,
            error,
            command_to_first_job_ms_p50: percentile(&switch_ms, 50.0),
            command_to_first_job_ms_p99: percentile(&switch_ms, 99.0),
            command_to_first_job_ms_max: switch_ms.last().copied().unwrap_or(0.0),
            miners_switched: switch_ms.len() as u64,
            stale_in_window,
            shares_in_window,
        }
    });
    r
}

async fn progress_lines(ctx: Arc<Ctx>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut last_accepted = 0;
    loop {
        tick.tick().await;
        let c = &ctx.counters;
        let accepted = c.accepted.load(Ordering::Relaxed);
        eprintln!(
            "[loadgen {:>4}s] {}/{} miners connected, {} submitted, {} accepted ({}/s), {} rejected, {} disconnects",
            ctx.start.elapsed().as_secs(),
            c.connected_now.load(Ordering::Relaxed),
            ctx.opts.count,
            c.submitted.load(Ordering::Relaxed),
            accepted,
            accepted - last_accepted,
            c.rejected.load(Ordering::Relaxed),
            c.disconnects.load(Ordering::Relaxed),
        );
        last_accepted = accepted;
    }
}

/// One miner: sessions until the run stops, reconnecting as asked or after a loss.
async fn miner(
    index: usize,
    delay: Duration,
    ctx: Arc<Ctx>,
    mut stop: watch::Receiver<bool>,
) -> MinerStats {
    let mut stats = MinerStats::default();
    if !delay.is_zero() {
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.wait_for(|s| *s) => return stats,
        }
    }
    let mut addr = ctx.opts.url;
    loop {
        if *stop.borrow() {
            return stats;
        }
        let end = if ctx.opts.kind.is_sv2() {
            crate::miner_sv2::session(index, addr, &ctx, &mut stats, &mut stop).await
        } else {
            sv1_session(index, addr, &ctx, &mut stats, &mut stop).await
        };
        let pause = match end {
            End::Stopped => return stats,
            End::Reconnect(to, wait) => {
                stats.reconnects += 1;
                addr = to;
                wait
            }
            End::Lost(reason) => {
                tracing::debug!(index, %reason, "loadgen: connection lost");
                stats.disconnects += 1;
                ctx.counters.disconnects.fetch_add(1, Ordering::Relaxed);
                RETRY_DELAY
            }
            End::Failed(reason) => {
                tracing::debug!(index, %reason, "loadgen: connection failed");
                stats.connect_failures += 1;
                RETRY_DELAY
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.wait_for(|s| *s) => return stats,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// SV1

enum Sv1Pending {
    Configure,
    Subscribe,
    ExtranonceSubscribe,
    Authorize,
    Submit(InFlight),
}

struct Sv1Miner<'a> {
    ctx: &'a Ctx,
    index: usize,
    worker: String,
    next_id: u64,
    pending: HashMap<u64, Sv1Pending>,
    submits_in_flight: usize,
    extranonce1: Vec<u8>,
    extranonce2_size: usize,
    /// From `mining.set_extranonce`, used from the next job on.
    next_extranonce: Option<(Vec<u8>, usize)>,
    /// The latest `mining.set_difficulty`, used from the next job on.
    difficulty: f64,
    /// The mask granted by `mining.configure` / `mining.set_version_mask` (0 = no rolling).
    version_mask: u32,
    authorized: bool,
    job_id: String,
    search: Option<Search>,
    out: String,
}

/// Whether a reject means the share came too late for its job.
fn is_stale(error: &Value) -> bool {
    let code = error
        .as_array()
        .and_then(|a| a.first())
        .and_then(|c| c.as_i64());
    let msg = sv1::error_message(error).to_ascii_lowercase();
    code == Some(error_code::JOB_NOT_FOUND) || msg.contains("stale") || msg.contains("job")
}

impl Sv1Miner<'_> {
    fn request(&mut self, req: MinerRequest, kind: Sv1Pending) {
        self.next_id += 1;
        self.out.push_str(&req.to_line(self.next_id));
        self.pending.insert(self.next_id, kind);
    }

    /// Handle one message; `Some` ends the session.
    fn handle(&mut self, incoming: Incoming, stats: &mut MinerStats) -> Option<End> {
        match incoming {
            Incoming::Response(resp) => {
                let id = resp.id.as_u64()?;
                match self.pending.remove(&id)? {
                    Sv1Pending::Configure => {
                        self.version_mask = if resp.error.is_null() {
                            sv1::parse_configure_result(&resp.result).unwrap_or(0)
                                & REQUESTED_VERSION_MASK
                        } else {
                            0
                        };
                    }
                    Sv1Pending::Subscribe => {
                        let Some((en1, size)) = sv1::parse_subscribe_result(&resp.result) else {
                            return Some(End::Failed(format!(
                                "subscribe refused: {}",
                                sv1::error_message(&resp.error)
                            )));
                        };
                        self.extranonce1 = en1;
                        self.extranonce2_size = size;
                        if self.ctx.opts.kind == MinerKind::Sv1ExtranonceSubscribe {
                            self.request(
                                MinerRequest::ExtranonceSubscribe,
                                Sv1Pending::ExtranonceSubscribe,
                            );
                        }
                        self.request(
                            MinerRequest::Authorize {
                                username: self.worker.clone(),
                                password: self.ctx.opts.password.clone(),
                            },
                            Sv1Pending::Authorize,
                        );
                    }
                    Sv1Pending::ExtranonceSubscribe => {}
                    Sv1Pending::Authorize => {
                        if resp.result.as_bool() != Some(true) {
                            return Some(End::Failed(format!(
                                "authorize refused: {}",
                                sv1::error_message(&resp.error)
                            )));
                        }
                        self.authorized = true;
                        self.ctx.handshake_done(stats);
                    }
                    Sv1Pending::Submit(share) => {
                        self.submits_in_flight -= 1;
                        if resp.result.as_bool() == Some(true) && resp.error.is_null() {
                            stats.accepted(self.ctx, share);
                        } else {
                            let reason = match sv1::error_message(&resp.error) {
                                m if m.is_empty() => "rejected without a reason".to_string(),
                                m => m,
                            };
                            let stale = is_stale(&resp.error);
                            stats.rejected(self.ctx, share, reason, stale);
                        }
                    }
                }
            }
            Incoming::Request(req) => match PoolMessage::parse(&req) {
                Ok(PoolMessage::SetDifficulty(d)) => self.difficulty = d,
                Ok(PoolMessage::Notify(n)) => {
                    if let Some((en1, size)) = self.next_extranonce.take() {
                        self.extranonce1 = en1;
                        self.extranonce2_size = size;
                    }
                    let coin = Work::coin_of(&n.coinbase1, &n.coinbase2);
                    if !self.ctx.opts.hash {
                        // An idle miner (the rss and switch phases) only counts its jobs and
                        // notices the coin: building the work was most of its cost per job,
                        // on the cores the proxy's fan-out needs.
                        stats.job(self.ctx, &coin);
                        self.job_id = n.job_id;
                        return None;
                    }
                    let target =
                        Target::from_stratum_difficulty(self.difficulty, self.ctx.opts.algorithm)
                            .unwrap_or(Target::MAX);
                    let mut prefix = n.coinbase1;
                    prefix.extend_from_slice(&self.extranonce1);
                    let work = Work {
                        algorithm: self.ctx.opts.algorithm,
                        version: n.version,
                        version_mask: self.version_mask,
                        prev_hash: n.prev_hash,
                        coinbase_prefix: prefix,
                        coinbase_suffix: n.coinbase2,
                        extranonce_size: self.extranonce2_size,
                        merkle_branch: n.merkle_branch,
                        merkle_root: None,
                        ntime: n.ntime,
                        nbits: n.nbits,
                        target,
                        work: target.work(),
                        coin,
                    };
                    stats.job(self.ctx, &work.coin);
                    self.job_id = n.job_id;
                    let seed = ((self.index as u64) << 24) ^ stats.jobs;
                    self.search = Some(Search::new(Arc::new(work), seed));
                }
                Ok(PoolMessage::SetExtranonce {
                    extranonce1,
                    extranonce2_size,
                }) => {
                    self.next_extranonce = Some((extranonce1, extranonce2_size));
                }
                Ok(PoolMessage::SetVersionMask(mask)) => {
                    if self.ctx.opts.version_rolling {
                        self.version_mask = mask & REQUESTED_VERSION_MASK;
                    }
                }
                Ok(PoolMessage::Reconnect {
                    host,
                    port,
                    wait_secs,
                }) => {
                    let current = self.ctx.opts.url;
                    let target = match (host, port) {
                        (None, None) => Some(current),
                        (host, port) => {
                            let port = port.unwrap_or(current.port());
                            match host.filter(|h| !h.is_empty()) {
                                None => Some(SocketAddr::new(current.ip(), port)),
                                Some(h) => format!("{h}:{port}")
                                    .parse::<SocketAddr>()
                                    .ok()
                                    .or_else(|| {
                                        (h == "localhost")
                                            .then(|| SocketAddr::new(current.ip(), port))
                                    }),
                            }
                        }
                    };
                    match target.filter(|a| a.ip().is_loopback()) {
                        Some(addr) => {
                            let wait = Duration::from_secs(wait_secs.min(60) as u64);
                            return Some(End::Reconnect(addr, wait));
                        }
                        None => tracing::warn!(
                            "loadgen: ignoring client.reconnect to a non-loopback address"
                        ),
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "loadgen: bad pool message"),
            },
        }
        None
    }

    fn submit(&mut self, found: Found, stats: &mut MinerStats) {
        let Some(search) = &self.search else { return };
        let work = &search.work;
        let version_bits = (work.version_mask != 0).then_some(found.version_bits);
        let share = InFlight {
            sent: Instant::now(),
            coin: work.coin.clone(),
            work: work.work,
            in_window: self.ctx.in_switch_window(Instant::now()),
        };
        stats.submitted(self.ctx, share.in_window);
        self.submits_in_flight += 1;
        self.request(
            MinerRequest::Submit(Submit {
                worker: self.worker.clone(),
                job_id: self.job_id.clone(),
                extranonce2: found.extranonce,
                ntime: found.ntime,
                nonce: found.nonce,
                version_bits,
            }),
            Sv1Pending::Submit(share),
        );
    }
}

/// A line from the pool, as the session reads it.
enum Line {
    /// A `mining.notify` to an idle miner: only its coin.
    IdleJob(Option<Arc<str>>),
    Parsed(Result<Incoming, sv1::Sv1Error>),
}

fn read_line(line: &[u8], idle: bool, scratch: &mut Vec<u8>) -> Line {
    match idle.then(|| peek_notify_coin(line, scratch)).flatten() {
        Some(coin) => Line::IdleJob(coin),
        None => Line::Parsed(parse_line(line)),
    }
}

/// An idle miner's reading of a `mining.notify`: the coin tag of its coinbase, borrowed from
/// the line instead of parsing every parameter into owned values. That parse was most of an
/// idle miner's CPU per job, on the cores the proxy's switch fan-out needs; a hashing miner
/// parses the whole job. `None` if the line is not a notify.
fn peek_notify_coin(line: &[u8], scratch: &mut Vec<u8>) -> Option<Option<Arc<str>>> {
    use serde::de::IgnoredAny as Any;
    #[derive(serde::Deserialize)]
    struct Peek<'a> {
        #[serde(borrow)]
        method: &'a str,
        /// job id, prevhash, coinbase1, coinbase2, branch, version, nbits, ntime, clean.
        #[serde(borrow)]
        params: (Any, Any, &'a str, &'a str, Any, Any, Any, Any, Any),
    }
    let peek: Peek = serde_json::from_slice(line).ok()?;
    if peek.method != "mining.notify" {
        return None;
    }
    let mut tag = |hex_part: &str| {
        scratch.clear();
        scratch.resize(hex_part.len() / 2, 0);
        hex::decode_to_slice(hex_part, scratch).ok()?;
        crate::coin_tag(scratch).map(Arc::from)
    };
    Some(tag(peek.params.2).or_else(|| tag(peek.params.3)))
}

async fn sv1_session(
    index: usize,
    addr: SocketAddr,
    ctx: &Ctx,
    stats: &mut MinerStats,
    stop: &mut watch::Receiver<bool>,
) -> End {
    let stream = match tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr)).await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return End::Failed(format!("connecting to {addr}: {e}")),
        Err(_) => return End::Failed(format!("connecting to {addr}: timed out")),
    };
    let _ = stream.set_nodelay(true);
    if ctx.opts.handshake_only {
        return hold(ctx, stats, stop).await;
    }
    let (rd, mut wr) = stream.into_split();
    let mut reader = LineReader::new(BufReader::with_capacity(4096, rd), sv1::DEFAULT_MAX_LINE);
    let mut m = Sv1Miner {
        ctx,
        index,
        worker: worker_name(&ctx.opts.username, index),
        next_id: 0,
        pending: HashMap::new(),
        submits_in_flight: 0,
        extranonce1: Vec::new(),
        extranonce2_size: 0,
        next_extranonce: None,
        difficulty: 1.0,
        version_mask: 0,
        authorized: false,
        job_id: String::new(),
        search: None,
        out: String::with_capacity(512),
    };
    if ctx.opts.version_rolling {
        m.request(
            MinerRequest::Configure(Configure {
                extensions: vec!["version-rolling".into()],
                version_rolling_mask: Some(REQUESTED_VERSION_MASK),
                version_rolling_min_bit_count: Some(2),
                minimum_difficulty: None,
            }),
            Sv1Pending::Configure,
        );
    }
    m.request(
        MinerRequest::Subscribe {
            user_agent: Some(concat!("defpool-loadgen/", env!("CARGO_PKG_VERSION")).into()),
            session: None,
        },
        Sv1Pending::Subscribe,
    );
    let budget = batch(ctx.opts.algorithm);
    // Set when the session is to end (run over, reconnect asked): the answers to the shares
    // in flight are awaited until the deadline, without hashing.
    let mut closing: Option<(tokio::time::Instant, End)> = None;
    let mut next_submit = first_submit(ctx, index);
    // Built once: a `wait_for` made anew on every wake registers with the channel and
    // deregisters again, a lock each way, per message on every idle miner.
    let stopped = stop.wait_for(|s| *s);
    tokio::pin!(stopped);
    let idle = !ctx.opts.hash;
    let mut scratch = Vec::new();
    let end = loop {
        if !m.out.is_empty() {
            if let Err(e) = wr.write_all(m.out.as_bytes()).await {
                break if m.authorized {
                    End::Lost(format!("write: {e}"))
                } else {
                    End::Failed(format!("write: {e}"))
                };
            }
            m.out.clear();
        }
        if m.submits_in_flight == 0 {
            if let Some((_, end)) = closing.take() {
                break end;
            }
        }
        let stopping = closing.as_ref().map(|(deadline, _)| *deadline);
        let can_hash = ctx.opts.hash
            && m.authorized
            && m.search.is_some()
            && stopping.is_none()
            && !ctx.limit_reached.load(Ordering::Relaxed);
        let paced_wait =
            can_hash && ctx.pace.is_some() && tokio::time::Instant::now() < next_submit;
        tokio::select! {
            biased;
            // Disabled once it fired: closing stays `Stopped` until the loop ends.
            _ = &mut stopped, if !matches!(closing, Some((_, End::Stopped))) => {
                closing = Some((tokio::time::Instant::now() + DRAIN, End::Stopped));
            }
            // In async blocks, so that a disabled branch builds no timer on every wake.
            _ = async { tokio::time::sleep_until(stopping.unwrap_or_else(tokio::time::Instant::now)).await }, if stopping.is_some() => {
                break closing.take().map(|(_, end)| end).unwrap_or(End::Stopped);
            }
            line = async { reader.next_line().await.map(|l| l.map(|l| read_line(l, idle, &mut scratch))) } => {
                match line {
                    Ok(Some(Line::IdleJob(coin))) => stats.job(ctx, &coin),
                    Ok(Some(Line::Parsed(Ok(incoming)))) => {
                        if let Some(end) = m.handle(incoming, stats) {
                            if closing.is_none() {
                                closing = Some((tokio::time::Instant::now() + DRAIN, end));
                            }
                        }
                    }
                    Ok(Some(Line::Parsed(Err(e)))) => {
                        if e.is_protocol_violation() {
                            break End::Lost(format!("unreadable line from the pool: {e}"));
                        }
                    }
                    Ok(None) => break if m.authorized {
                        End::Lost("closed by the server".into())
                    } else {
                        End::Failed("closed by the server during the handshake".into())
                    },
                    Err(e) => break End::Lost(format!("read: {e}")),
                }
            }
            _ = async { tokio::time::sleep_until(next_submit).await }, if paced_wait => {}
            _ = tokio::task::yield_now(), if can_hash && !paced_wait => {
                let found = m.search.as_mut().and_then(|s| s.step(budget));
                if let Some(found) = found {
                    if ctx.reserve_share() {
                        m.submit(found, stats);
                        paced(ctx, &mut next_submit);
                    }
                }
            }
        }
    };
    if m.authorized {
        ctx.counters.connected_now.fetch_sub(1, Ordering::Relaxed);
    }
    stats.lost(ctx, m.submits_in_flight);
    end
}

#[cfg(test)]
mod tests {
    use super::*;
    use defpool_stratum::sv1::{Notify, PreparedNotify};

    fn notify_line(coinbase1: &[u8], coinbase2: &[u8]) -> String {
        let n = Notify {
            job_id: String::new(),
            prev_hash: [7; 32],
            coinbase1: coinbase1.to_vec(),
            coinbase2: coinbase2.to_vec(),
            merkle_branch: vec![[1; 32], [2; 32]],
            version: 0x2000_0000,
            nbits: 0x1d00_ffff,
            ntime: 1_700_000_000,
            clean_jobs: false,
        };
        let mut line = String::new();
        PreparedNotify::new(&n).write_line(&mut line, "1f", true);
        line
    }

    #[test]
    fn idle_miners_read_the_coin_of_a_notify_as_the_full_parse_does() {
        let mut scratch = Vec::new();
        for (cb1, cb2) in [
            (&b"\x01\x02/coin:BCH/\x03"[..], &b"\xff"[..]),
            (&b"\x01\x02"[..], &b"tail /coin:LTC/ x"[..]),
            (&b"no tag"[..], &b"none here"[..]),
        ] {
            let line = notify_line(cb1, cb2);
            let peeked = peek_notify_coin(line.as_bytes(), &mut scratch).expect("a notify");
            let Ok(Incoming::Request(req)) = parse_line(line.as_bytes()) else {
                panic!("the full parse fails");
            };
            let Ok(PoolMessage::Notify(n)) = PoolMessage::parse(&req) else {
                panic!("not a notify");
            };
            assert_eq!(peeked, Work::coin_of(&n.coinbase1, &n.coinbase2));
        }
        assert_eq!(
            peek_notify_coin(notify_line(b"/coin:BCH/", b"").as_bytes(), &mut scratch),
            Some(Some(Arc::from("BCH")))
        );
        // Anything else goes to the full parse.
        let difficulty = PoolMessage::SetDifficulty(0.5).to_line();
        assert_eq!(peek_notify_coin(difficulty.as_bytes(), &mut scratch), None);
        assert_eq!(
            peek_notify_coin(b"{\"id\":1,\"result\":true,\"error\":null}", &mut scratch),
            None
        );
        assert_eq!(peek_notify_coin(b"not json", &mut scratch), None);
    }
}
