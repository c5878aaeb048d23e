//! An SV2 pool (or our coin adapter) as upstream: Noise handshake checked against the
//! configured authority key (a mismatch refuses the upstream, so the router tries the next),
//! SetupConnection for the mining protocol, one extended channel that all our miners share.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use defpool_core::work::Target;
use defpool_stratum::sv2::{
    self, setup_flags, AuthorityPublicKey, FrameLimits, Message, Protocol, Sv2Error,
};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::{
    host_port, Emitter, ResultWindow, Sent, UpstreamCommand, UpstreamEvent, UpstreamJob,
    UpstreamSpec, UpstreamStats,
};

/// BIP320 bits an SV2 job allows when `version_rolling_allowed` is set.
const BIP320_MASK: u32 = 0x1fff_e000;
const MAX_REDIRECTS: u32 = 3;

struct FutureJob {
    version: u32,
    version_rolling_allowed: bool,
    merkle_path: Vec<[u8; 32]>,
    prefix: Vec<u8>,
    suffix: Vec<u8>,
}

enum Ended {
    Closed,
    Down(String),
    Redirect(String),
}

pub async fn run(
    spec: UpstreamSpec,
    emitter: &Emitter,
    mut commands: mpsc::Receiver<UpstreamCommand>,
    stats: Arc<UpstreamStats>,
) -> String {
    let expected = match spec.upstream.authority_public_key.as_deref() {
        Some(k) => match AuthorityPublicKey::from_base58(k) {
            Ok(k) => Some(k),
            Err(e) => return format!("authority_public_key is not a valid key: {e}"),
        },
        None => None,
    };
    let mut address = host_port(&spec.upstream.address);
    let mut redirects = 0;
    loop {
        match session(
            &spec,
            &address,
            expected.as_ref(),
            emitter,
            &mut commands,
            &stats,
        )
        .await
        {
            Ended::Closed => return "closed by the proxy".into(),
            Ended::Down(reason) => return reason,
            Ended::Redirect(next) if redirects < MAX_REDIRECTS => {
                tracing::info!(upstream = %spec.upstream.name, to = %next, "pool asked us to reconnect");
                redirects += 1;
                address = next;
            }
            Ended::Redirect(next) => {
                return format!("pool redirected more than {MAX_REDIRECTS} times (last to {next})")
            }
        }
    }
}

async fn session(
    spec: &UpstreamSpec,
    address: &str,
    expected: Option<&AuthorityPublicKey>,
    emitter: &Emitter,
    commands: &mut mpsc::Receiver<UpstreamCommand>,
    stats: &UpstreamStats,
) -> Ended {
    let name = &spec.upstream.name;
    let stream = match tokio::time::timeout(spec.limits.connect, TcpStream::connect(address)).await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Ended::Down(format!("cannot connect to {address}: {e}")),
        Err(_) => return Ended::Down(format!("connect to {address} timed out")),
    };
    let conn = match sv2::connect_with_timeout(
        stream,
        expected,
        FrameLimits::default(),
        spec.limits.connect,
    )
    .await
    {
        Ok(c) => c,
        Err(e @ Sv2Error::AuthorityMismatch { .. }) => {
            tracing::error!(upstream = %name, error = %e, "refusing upstream: wrong authority key");
            return Ended::Down(format!("refused: {e}"));
        }
        Err(e) => return Ended::Down(format!("SV2 handshake with {address} failed: {e}")),
    };
    if expected.is_none() {
        tracing::warn!(upstream = %name, "no authority_public_key configured: the pool's identity is not checked");
    }
    let (mut reader, mut writer) = conn.into_split();
    let (host, port) = address.rsplit_once(':').unwrap_or((address, "0"));
    let setup = Message::SetupConnection {
        protocol: Protocol::Mining,
        min_version: sv2::PROTOCOL_VERSION,
        max_version: sv2::PROTOCOL_VERSION,
        flags: if spec.coin_version_mask != 0 {
            setup_flags::REQUIRES_VERSION_ROLLING
        } else {
            0
        },
        endpoint_host: host.to_string(),
        endpoint_port: port.parse().unwrap_or(0),
        vendor: "DefPool".into(),
        hardware_version: "proxy".into(),
        firmware: env!("CARGO_PKG_VERSION").into(),
        device_id: String::new(),
    };
    if let Err(e) = writer.send(&setup).await {
        return Ended::Down(format!("SetupConnection to {address}: {e}"));
    }
    let deadline = spec.limits.connect * 2;
    match tokio::time::timeout(deadline, reader.recv()).await {
        Ok(Ok(Message::SetupConnectionSuccess { .. })) => {}
        Ok(Ok(Message::SetupConnectionError { error_code, .. })) => {
            return Ended::Down(format!("SetupConnection refused: {error_code}"))
        }
        Ok(Ok(other)) => {
            return Ended::Down(format!(
                "expected SetupConnection.Success, got {}",
                other.name()
            ))
        }
        Ok(Err(e)) => return Ended::Down(format!("reading SetupConnection answer: {e}")),
        Err(_) => return Ended::Down("no SetupConnection answer".into()),
    }
    let open = Message::OpenExtendedMiningChannel {
        request_id: 1,
        // A coin adapter needs no credentials; it still wants a name for its logs.
        user_identity: if spec.upstream.username.is_empty() {
            "defpool-proxy".into()
        } else {
            spec.upstream.username.clone()
        },
        nominal_hash_rate: 1e12,
        max_target: [0xff; 32],
        min_extranonce_size: spec.min_extranonce_size as u16,
    };
    if let Err(e) = writer.send(&open).await {
        return Ended::Down(format!("OpenExtendedMiningChannel: {e}"));
    }
    let (channel_id, mut target, total_extranonce) =
        match tokio::time::timeout(deadline, reader.recv()).await {
            Ok(Ok(Message::OpenExtendedMiningChannelSuccess {
                channel_id,
                target,
                extranonce_size,
                extranonce_prefix,
                ..
            })) => {
                let total = extranonce_prefix.len() + extranonce_size as usize;
                emitter
                    .emit(UpstreamEvent::Ready {
                        extranonce_prefix,
                        extranonce_size: extranonce_size as usize,
                        version_mask: spec.coin_version_mask,
                    })
                    .await;
                (channel_id, Target::from_le_bytes(target), total)
            }
            Ok(Ok(Message::OpenMiningChannelError { error_code, .. })) => {
                return Ended::Down(format!("channel refused: {error_code}"))
            }
            Ok(Ok(other)) => {
                return Ended::Down(format!(
                    "expected OpenExtendedMiningChannel.Success, got {}",
                    other.name()
                ))
            }
            Ok(Err(e)) => return Ended::Down(format!("reading the channel answer: {e}")),
            Err(_) => return Ended::Down("no answer to OpenExtendedMiningChannel".into()),
        };

    // Messages arrive through a reader task: `recv` is not cancel-safe inside `select!`.
    let (msg_tx, mut msgs) = mpsc::channel::<Result<Message, Sv2Error>>(256);
    let reader_task = tokio::spawn(async move {
        loop {
            let m = reader.recv().await;
            let end = m.is_err();
            if msg_tx.send(m).await.is_err() || end {
                break;
            }
        }
    });
    let _guard = AbortOnDrop(reader_task);

    let mut futures: BTreeMap<u32, FutureJob> = BTreeMap::new();
    let mut current: Option<([u8; 32], u32)> = None; // prev hash, nbits
    let mut pending: HashMap<u32, Sent> = HashMap::new();
    let mut seq: u32 = 0;
    let mut mask = spec.coin_version_mask;
    let mut last_job = Instant::now();
    let mut window = ResultWindow::default();
    let mut tick = tokio::time::interval(Duration::from_secs(1));

    loop {
        tokio::select! {
            m = msgs.recv() => {
                let m = match m {
                    Some(Ok(m)) => m,
                    Some(Err(Sv2Error::Closed)) | None => return Ended::Down(format!("{address} closed the connection")),
                    Some(Err(e)) => return Ended::Down(format!("SV2 from {address}: {e}")),
                };
                match m {
                    Message::NewExtendedMiningJob { channel_id: c, job_id, min_ntime, version, version_rolling_allowed, merkle_path, coinbase_tx_prefix, coinbase_tx_suffix } if c == channel_id => {
                        let job = FutureJob { version, version_rolling_allowed, merkle_path, prefix: coinbase_tx_prefix, suffix: coinbase_tx_suffix };
                        match (min_ntime, current) {
                            (Some(ntime), Some((prev, nbits))) => {
                                last_job = Instant::now();
                                emit_job(emitter, &mut mask, spec.coin_version_mask, job_id, job, prev, nbits, ntime, false, target).await;
                            }
                            _ => {
                                futures.insert(job_id, job);
                                while futures.len() > 16 {
                                    futures.pop_first();
                                }
                            }
                        }
                    }
                    Message::SetNewPrevHash { channel_id: c, job_id, prev_hash, min_ntime, nbits } if c == channel_id => {
                        current = Some((prev_hash, nbits));
                        if let Some(job) = futures.remove(&job_id) {
                            futures.clear();
                            last_job = Instant::now();
                            emit_job(emitter, &mut mask, spec.coin_version_mask, job_id, job, prev_hash, nbits, min_ntime, true, target).await;
                        }
                    }
                    Message::SetTarget { channel_id: c, maximum_target } if c == channel_id => {
                        target = Target::from_le_bytes(maximum_target);
                    }
                    Message::SetExtranoncePrefix { channel_id: c, extranonce_prefix } if c == channel_id => {
                        // The channel's total extranonce is unchanged; our part shrinks or grows.
                        let size = total_extranonce.saturating_sub(extranonce_prefix.len());
                        emitter.emit(UpstreamEvent::Extranonce { extranonce_size: size, extranonce_prefix }).await;
                    }
                    Message::SubmitSharesSuccess { last_sequence_number, new_submits_accepted_count, .. } => {
                        pending.retain(|s, _| *s > last_sequence_number);
                        stats.accepted.fetch_add(new_submits_accepted_count as u64, Ordering::Relaxed);
                        for _ in 0..new_submits_accepted_count.min(20) {
                            window.push(true);
                        }
                    }
                    Message::SubmitSharesError { sequence_number, error_code, .. } => {
                        let sent = pending.remove(&sequence_number);
                        stats.rejected.fetch_add(1, Ordering::Relaxed);
                        if sent.is_some_and(|s| s.below_pool_target) {
                            tracing::info!(upstream = %name, reason = %error_code, "the pool refused a block candidate below its share target (not counted against the pool)");
                            continue;
                        }
                        window.push(false);
                        tracing::debug!(upstream = %name, reason = %error_code, "share rejected upstream");
                        if window.rejects() >= spec.limits.reject_streak {
                            return Ended::Down(format!("{} of the last 20 shares rejected (last: {error_code})", window.rejects()));
                        }
                    }
                    Message::Reconnect { new_host, new_port } => {
                        let host = if new_host.is_empty() { host.to_string() } else { new_host };
                        return Ended::Redirect(format!("{host}:{new_port}"));
                    }
                    Message::CloseChannel { reason_code, .. } => return Ended::Down(format!("pool closed our channel: {reason_code}")),
                    other => tracing::debug!(upstream = %name, message = other.name(), "ignoring SV2 message"),
                }
            }
            cmd = commands.recv() => {
                let share = match cmd {
                    Some(UpstreamCommand::Submit(s)) => s,
                    Some(UpstreamCommand::Close) | None => {
                        let _ = writer.send(&Message::CloseChannel { channel_id, reason_code: "switching".into() }).await;
                        return Ended::Closed;
                    }
                };
                let Ok(job_id) = share.job_id.parse::<u32>() else { continue };
                seq = seq.wrapping_add(1);
                pending.insert(seq, Sent::now(&share));
                stats.submitted.fetch_add(1, Ordering::Relaxed);
                let m = Message::SubmitSharesExtended { channel_id, sequence_number: seq, job_id, nonce: share.nonce, ntime: share.ntime, version: share.version, extranonce: share.extranonce };
                if let Err(e) = writer.send(&m).await {
                    return Ended::Down(format!("write to {address} failed: {e}"));
                }
            }
            _ = tick.tick() => {
                if last_job.elapsed() > spec.limits.no_job {
                    return Ended::Down(format!("no job for {} s", last_job.elapsed().as_secs()));
                }
                if let Some(oldest) = pending.values().map(|s| s.at).min() {
                    if oldest.elapsed() > spec.limits.no_submit_reply {
                        return Ended::Down(format!("no reply to a submit for {} s", oldest.elapsed().as_secs()));
                    }
                }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn emit_job(
    emitter: &Emitter,
    mask: &mut u32,
    coin_mask: u32,
    job_id: u32,
    job: FutureJob,
    prev_hash: [u8; 32],
    nbits: u32,
    ntime: u32,
    clean: bool,
    target: Target,
) {
    let allowed = if job.version_rolling_allowed {
        coin_mask & BIP320_MASK
    } else {
        0
    };
    if allowed != *mask {
        *mask = allowed;
        emitter.emit(UpstreamEvent::VersionMask(allowed)).await;
    }
    emitter
        .emit(UpstreamEvent::Job(UpstreamJob {
            job_id: job_id.to_string(),
            prev_hash,
            coinbase1: job.prefix,
            coinbase2: job.suffix,
            merkle_branch: job.merkle_path,
            version: job.version,
            nbits,
            ntime,
            clean,
            target,
            block_target: None,
        }))
        .await;
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
