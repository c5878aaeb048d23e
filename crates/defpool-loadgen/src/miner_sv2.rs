//! SV2 miners: Noise NX to the server (checking its authority key when given), SetupConnection,
//! one standard or extended channel, future jobs activated by SetNewPrevHash, SetTarget,
//! SetExtranoncePrefix, Reconnect, and shares acknowledged by SubmitShares.Success (batched
//! acknowledgements are understood).
//!
//! Standard channels never see the coinbase of a standard job (NewMiningJob): that work is
//! reported as `untagged`, and a coin switch is noticed at the first SetNewPrevHash after the
//! command. Extended jobs sent to a standard channel's group are mined with the channel's whole
//! extranonce as prefix (as the spec asks of standard channels in a group), so their coin tag
//! is known.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use defpool_core::hash::Hash32;
use defpool_core::work::Target;
use defpool_stratum::sv2::{
    self, error_code, setup_flags, AuthorityPublicKey, FrameLimits, Message, Protocol,
    PROTOCOL_VERSION,
};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::miner::{worker_name, Ctx, End, InFlight, MinerStats};
use crate::search::{Found, Search, Work};
use crate::{LoadgenError, MinerKind, MinersOptions};

/// The BIP320 bits an SV2 miner rolls when a job allows it.
const ROLL_MASK: u32 = 0x1fff_e000;

pub(crate) fn check(opts: &MinersOptions) -> Result<(), LoadgenError> {
    if let Some(key) = &opts.authority_public_key {
        AuthorityPublicKey::from_base58(key)
            .map_err(|e| LoadgenError::option("authority_public_key", e.to_string()))?;
    }
    Ok(())
}

/// A job as received, waiting for (or using) a previous hash.
#[derive(Clone)]
enum JobSpec {
    Extended {
        version: u32,
        rolling: bool,
        merkle_path: Vec<Hash32>,
        /// Coinbase prefix followed by the channel's extranonce prefix at the time of the job.
        prefix: Vec<u8>,
        suffix: Vec<u8>,
        extranonce_size: usize,
    },
    Standard {
        version: u32,
        merkle_root: Hash32,
    },
}

struct Sv2Miner<'a> {
    ctx: &'a Ctx,
    index: usize,
    standard: bool,
    /// Version rolling negotiated (our flag, and the server did not fix the version).
    rolling: bool,
    channel_id: Option<u32>,
    extranonce_prefix: Vec<u8>,
    /// Prefix + client part, fixed for the channel.
    extranonce_total: usize,
    target: Target,
    /// Previous hash and nBits of the current block.
    prev: Option<(Hash32, u32)>,
    future: HashMap<u32, JobSpec>,
    /// The job being mined, with its nTime, to rebuild on SetTarget.
    current: Option<(u32, JobSpec, u32)>,
    search: Option<Search>,
    seq: u32,
    in_flight: BTreeMap<u32, InFlight>,
    out: Vec<Message>,
}

impl Sv2Miner<'_> {
    /// Mine `spec` from now on. `new_block`: it came with a SetNewPrevHash; `restart`: the same
    /// job again (new target), not counted as a new job.
    fn start(
        &mut self,
        job_id: u32,
        spec: JobSpec,
        ntime: u32,
        stats: &mut MinerStats,
        new_block: bool,
        restart: bool,
    ) {
        let Some((prev_hash, nbits)) = self.prev else {
            return;
        };
        let coin = match &spec {
            JobSpec::Extended { prefix, suffix, .. } => Work::coin_of(prefix, suffix),
            JobSpec::Standard { .. } => None,
        };
        if !restart {
            if coin.is_some() || !self.standard {
                stats.job(self.ctx, &coin);
            } else {
                // A standard job carries no coinbase: a new block marks the switch.
                stats.jobs += 1;
                if new_block {
                    stats.switch_point(self.ctx);
                }
            }
        }
        // An idle miner (the rss and switch phases) only counts its jobs: building the work
        // (copies of the coinbase parts and merkle path) was most of its cost per job, on
        // the cores the proxy's fan-out needs.
        if self.ctx.opts.hash {
            let target = self.target;
            let work = match &spec {
                JobSpec::Extended {
                    version,
                    rolling,
                    merkle_path,
                    prefix,
                    suffix,
                    extranonce_size,
                } => Work {
                    algorithm: self.ctx.opts.algorithm,
                    version: *version,
                    version_mask: if *rolling && self.rolling {
                        ROLL_MASK
                    } else {
                        0
                    },
                    prev_hash,
                    coinbase_prefix: prefix.clone(),
                    coinbase_suffix: suffix.clone(),
                    extranonce_size: *extranonce_size,
                    merkle_branch: merkle_path.clone(),
                    merkle_root: None,
                    ntime,
                    nbits,
                    target,
                    work: target.work(),
                    coin: coin.clone(),
                },
                JobSpec::Standard {
                    version,
                    merkle_root,
                } => Work {
                    algorithm: self.ctx.opts.algorithm,
                    version: *version,
                    version_mask: if self.rolling { ROLL_MASK } else { 0 },
                    prev_hash,
                    coinbase_prefix: Vec::new(),
                    coinbase_suffix: Vec::new(),
                    extranonce_size: 0,
                    merkle_branch: Vec::new(),
                    merkle_root: Some(*merkle_root),
                    ntime,
                    nbits,
                    target,
                    work: target.work(),
                    coin: None,
                },
            };
            let seed = ((self.index as u64) << 24) ^ stats.jobs;
            self.search = Some(Search::new(Arc::new(work), seed));
        }
        self.current = Some((job_id, spec, ntime));
    }

    fn handle(&mut self, msg: Message, stats: &mut MinerStats) -> Option<End> {
        match msg {
            Message::SetupConnectionSuccess { flags, .. } => {
                if flags & setup_flags::SERVER_REQUIRES_FIXED_VERSION != 0 {
                    self.rolling = false;
                }
                let user_identity = worker_name(&self.ctx.opts.username, self.index);
                self.out.push(if self.standard {
                    Message::OpenStandardMiningChannel {
                        request_id: 1,
                        user_identity,
                        nominal_hash_rate: self.ctx.opts.nominal_hash_rate,
                        max_target: Target::MAX.to_le_bytes(),
                    }
                } else {
                    Message::OpenExtendedMiningChannel {
                        request_id: 1,
                        user_identity,
                        nominal_hash_rate: self.ctx.opts.nominal_hash_rate,
                        max_target: Target::MAX.to_le_bytes(),
                        min_extranonce_size: self.ctx.opts.min_extranonce_size.max(1),
                    }
                });
            }
            Message::SetupConnectionError { error_code, .. } => {
                return Some(End::Failed(format!("setup refused: {error_code}")));
            }
            Message::OpenMiningChannelError { error_code, .. } => {
                return Some(End::Failed(format!("channel refused: {error_code}")));
            }
            Message::OpenStandardMiningChannelSuccess {
                channel_id,
                target,
                extranonce_prefix,
                ..
            } => {
                self.channel_id = Some(channel_id);
                self.target = Target::from_le_bytes(target);
                self.extranonce_total = extranonce_prefix.len();
                self.extranonce_prefix = extranonce_prefix;
                self.ctx.handshake_done(stats);
            }
            Message::OpenExtendedMiningChannelSuccess {
                channel_id,
                target,
                extranonce_size,
                extranonce_prefix,
                ..
            } => {
                self.channel_id = Some(channel_id);
                self.target = Target::from_le_bytes(target);
                self.extranonce_total = extranonce_prefix.len() + extranonce_size as usize;
                self.extranonce_prefix = extranonce_prefix;
                self.ctx.handshake_done(stats);
            }
            Message::SetTarget { maximum_target, .. } => {
                self.target = Target::from_le_bytes(maximum_target);
                // The new target applies at once: restart the current job with it.
                if let Some((job_id, spec, ntime)) = self.current.take() {
                    self.start(job_id, spec, ntime, stats, false, true);
                }
            }
            Message::SetExtranoncePrefix {
                extranonce_prefix, ..
            } => {
                self.extranonce_prefix = extranonce_prefix;
            }
            Message::NewExtendedMiningJob {
                job_id,
                min_ntime,
                version,
                version_rolling_allowed,
                merkle_path,
                coinbase_tx_prefix,
                coinbase_tx_suffix,
                ..
            } => {
                let mut prefix = coinbase_tx_prefix;
                prefix.extend_from_slice(&self.extranonce_prefix);
                let spec = JobSpec::Extended {
                    version,
                    rolling: version_rolling_allowed,
                    merkle_path,
                    prefix,
                    suffix: coinbase_tx_suffix,
                    extranonce_size: self
                        .extranonce_total
                        .saturating_sub(self.extranonce_prefix.len()),
                };
                self.job(job_id, min_ntime, spec, stats);
            }
            Message::NewMiningJob {
                job_id,
                min_ntime,
                version,
                merkle_root,
                ..
            } => {
                let spec = JobSpec::Standard {
                    version,
                    merkle_root,
                };
                self.job(job_id, min_ntime, spec, stats);
            }
            Message::SetNewPrevHash {
                job_id,
                prev_hash,
                min_ntime,
                nbits,
                ..
            } => {
                self.prev = Some((prev_hash, nbits));
                // Every job of the previous block is stale now.
                let spec = self.future.remove(&job_id);
                self.future.clear();
                match spec {
                    Some(spec) => self.start(job_id, spec, min_ntime, stats, true, false),
                    None => {
                        self.search = None;
                        self.current = None;
                    }
                }
            }
            Message::SubmitSharesSuccess {
                last_sequence_number,
                new_submits_accepted_count,
                ..
            } => {
                let mut left = new_submits_accepted_count;
                while left > 0 {
                    let Some(entry) = self.in_flight.first_entry() else {
                        break;
                    };
                    if *entry.key() > last_sequence_number {
                        break;
                    }
                    stats.accepted(self.ctx, entry.remove());
                    left -= 1;
                }
            }
            Message::SubmitSharesError {
                sequence_number,
                error_code,
                ..
            } => {
                if let Some(share) = self.in_flight.remove(&sequence_number) {
                    let stale = error_code == error_code::STALE_SHARE
                        || error_code == error_code::INVALID_JOB_ID;
                    stats.rejected(self.ctx, share, error_code, stale);
                }
            }
            Message::Reconnect { new_host, new_port } => {
                let current = self.ctx.opts.url;
                let ip = if new_host.is_empty() || new_host == "localhost" {
                    Some(current.ip())
                } else {
                    new_host.parse::<IpAddr>().ok()
                };
                let port = if new_port == 0 {
                    current.port()
                } else {
                    new_port
                };
                match ip.filter(|ip| ip.is_loopback()) {
                    Some(ip) => {
                        return Some(End::Reconnect(SocketAddr::new(ip, port), Duration::ZERO))
                    }
                    None => {
                        tracing::warn!("loadgen: ignoring an SV2 Reconnect to a non-loopback host")
                    }
                }
            }
            Message::CloseChannel { reason_code, .. } => {
                return Some(End::Lost(format!(
                    "channel closed by the server: {reason_code}"
                )));
            }
            other => tracing::debug!(message = other.name(), "loadgen: SV2 message ignored"),
        }
        None
    }

    fn job(&mut self, job_id: u32, min_ntime: Option<u32>, spec: JobSpec, stats: &mut MinerStats) {
        match min_ntime {
            None => {
                if self.future.len() >= 16 {
                    self.future.clear();
                }
                self.future.insert(job_id, spec);
            }
            Some(ntime) => self.start(job_id, spec, ntime, stats, false, false),
        }
    }

    fn submit(&mut self, found: Found, stats: &mut MinerStats) {
        let (Some(search), Some(channel_id), Some((job_id, _, _))) =
            (&self.search, self.channel_id, &self.current)
        else {
            return;
        };
        let work = &search.work;
        self.seq = self.seq.wrapping_add(1);
        let share = InFlight {
            sent: Instant::now(),
            coin: work.coin.clone(),
            work: work.work,
            in_window: self.ctx.in_switch_window(Instant::now()),
        };
        stats.submitted(self.ctx, share.in_window);
        self.out.push(if self.standard {
            Message::SubmitSharesStandard {
                channel_id,
                sequence_number: self.seq,
                job_id: *job_id,
                nonce: found.nonce,
                ntime: found.ntime,
                version: found.version,
            }
        } else {
            Message::SubmitSharesExtended {
                channel_id,
                sequence_number: self.seq,
                job_id: *job_id,
                nonce: found.nonce,
                ntime: found.ntime,
                version: found.version,
                extranonce: found.extranonce,
            }
        });
        self.in_flight.insert(self.seq, share);
    }
}

pub(crate) async fn session(
    index: usize,
    addr: SocketAddr,
    ctx: &Ctx,
    stats: &mut MinerStats,
    stop: &mut watch::Receiver<bool>,
) -> End {
    let key = ctx
        .opts
        .authority_public_key
        .as_deref()
        .and_then(|k| AuthorityPublicKey::from_base58(k).ok());
    let stream = match tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr)).await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return End::Failed(format!("connecting to {addr}: {e}")),
        Err(_) => return End::Failed(format!("connecting to {addr}: timed out")),
    };
    let conn = match sv2::connect(stream, key.as_ref(), FrameLimits::default()).await {
        Ok(c) => c,
        Err(e) => return End::Failed(format!("noise handshake with {addr}: {e}")),
    };
    if ctx.opts.handshake_only {
        // Held, not dropped: the proxy's side stays open as for a miner that is slow to set up.
        let _conn = conn;
        return crate::miner::hold(ctx, stats, stop).await;
    }
    let (mut rd, mut wr) = conn.into_split();
    let standard = ctx.opts.kind == MinerKind::Sv2Standard;
    let mut flags = 0;
    if standard {
        flags |= setup_flags::REQUIRES_STANDARD_JOBS;
    }
    if ctx.opts.version_rolling {
        flags |= setup_flags::REQUIRES_VERSION_ROLLING;
    }
    let mut m = Sv2Miner {
        ctx,
        index,
        standard,
        rolling: ctx.opts.version_rolling,
        channel_id: None,
        extranonce_prefix: Vec::new(),
        extranonce_total: 0,
        target: Target::MAX,
        prev: None,
        future: HashMap::new(),
        current: None,
        search: None,
        seq: 0,
        in_flight: BTreeMap::new(),
        out: vec![Message::SetupConnection {
            protocol: Protocol::Mining,
            min_version: PROTOCOL_VERSION,
            max_version: PROTOCOL_VERSION,
            flags,
            endpoint_host: addr.ip().to_string(),
            endpoint_port: addr.port(),
            vendor: "defpool-loadgen".into(),
            hardware_version: "simulated".into(),
            firmware: env!("CARGO_PKG_VERSION").into(),
            device_id: format!("loadgen-{index}"),
        }],
    };
    let budget = crate::miner::batch(ctx.opts.algorithm);
    let mut closing: Option<(tokio::time::Instant, End)> = None;
    let mut next_submit = crate::miner::first_submit(ctx, index);
    // Built once: a `wait_for` made anew on every wake registers with the channel and
    // deregisters again, a lock each way, per message on every idle miner.
    let stopped = stop.wait_for(|s| *s);
    tokio::pin!(stopped);
    let end = loop {
        let mut write_failed = None;
        for msg in m.out.drain(..) {
            if let Err(e) = wr.send(&msg).await {
                write_failed = Some(e);
                break;
            }
        }
        if let Some(e) = write_failed {
            break if m.channel_id.is_some() {
                End::Lost(format!("write: {e}"))
            } else {
                End::Failed(format!("write: {e}"))
            };
        }
        if m.in_flight.is_empty() {
            if let Some((_, end)) = closing.take() {
                break end;
            }
        }
        let stopping = closing.as_ref().map(|(deadline, _)| *deadline);
        let can_hash = ctx.opts.hash
            && m.channel_id.is_some()
            && m.search.is_some()
            && stopping.is_none()
            && !ctx.limit_reached.load(Ordering::Relaxed);
        let paced_wait =
            can_hash && ctx.pace.is_some() && tokio::time::Instant::now() < next_submit;
        tokio::select! {
            biased;
            // Disabled once it fired: closing stays `Stopped` until the loop ends.
            _ = &mut stopped, if !matches!(closing, Some((_, End::Stopped))) => {
                closing = Some((tokio::time::Instant::now() + crate::miner::DRAIN, End::Stopped));
            }
            // In async blocks, so that a disabled branch builds no timer on every wake.
            _ = async { tokio::time::sleep_until(stopping.unwrap_or_else(tokio::time::Instant::now)).await }, if stopping.is_some() => {
                break closing.take().map(|(_, end)| end).unwrap_or(End::Stopped);
            }
            msg = rd.recv() => match msg {
                Ok(msg) => {
                    if let Some(end) = m.handle(msg, stats) {
                        if closing.is_none() {
                            closing = Some((tokio::time::Instant::now() + crate::miner::DRAIN, end));
                        }
                    }
                }
                Err(sv2::Sv2Error::Closed) => break if m.channel_id.is_some() {
                    End::Lost("closed by the server".into())
                } else {
                    End::Failed("closed by the server during the handshake".into())
                },
                Err(e) => break if m.channel_id.is_some() {
                    End::Lost(e.to_string())
                } else {
                    End::Failed(e.to_string())
                },
            },
            _ = async { tokio::time::sleep_until(next_submit).await }, if paced_wait => {}
            _ = tokio::task::yield_now(), if can_hash && !paced_wait => {
                let found = m.search.as_mut().and_then(|s| s.step(budget));
                if let Some(found) = found {
                    if ctx.reserve_share() {
                        m.submit(found, stats);
                        crate::miner::paced(ctx, &mut next_submit);
                    }
                }
            }
        }
    };
    if m.channel_id.is_some() {
        ctx.counters.connected_now.fetch_sub(1, Ordering::Relaxed);
    }
    stats.lost(ctx, m.in_flight.len());
    end
}
