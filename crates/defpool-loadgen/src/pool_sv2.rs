//! The SV2 side of the test pool: Noise NX with an authority key, SetupConnection, extended and
//! standard channels, jobs with SetNewPrevHash, SetTarget, and share submission answered with
//! the spec's error codes.

use std::sync::Arc;
use std::time::Duration;

use defpool_core::share::{Job, JobBook, Submission, SubmittedVersion};
use defpool_core::work::Target;
use defpool_stratum::sv2::{
    self, error_code, AuthorityKeypair, FrameLimits, Message, Protocol, Sv2Writer, PROTOCOL_VERSION,
};
use tokio::net::TcpStream;

use crate::pool::{PoolJob, PoolState, POOL_VERSION_MASK};
use crate::{unix_now, LoadgenError, PoolOptions};

/// How long the certificates the pool signs are valid.
const CERT_VALIDITY: Duration = Duration::from_secs(24 * 3600);

/// Channels one connection may open.
const MAX_CHANNELS: usize = 64;

/// The pool's authority key pair.
#[derive(Clone)]
pub(crate) struct Authority {
    keys: AuthorityKeypair,
}

impl Authority {
    pub fn new(opts: &PoolOptions) -> Result<Authority, LoadgenError> {
        let keys = match &opts.authority {
            Some((public, secret)) => AuthorityKeypair::from_base58(public, secret)
                .map_err(|e| LoadgenError::option("authority", e.to_string()))?,
            None => AuthorityKeypair::generate(),
        };
        Ok(Authority { keys })
    }

    pub fn public_key(&self) -> String {
        self.keys.public_key().to_base58()
    }
}

struct Channel {
    id: u32,
    standard: bool,
    /// Extended: the prefix the pool owns. Standard: the channel's whole extranonce.
    prefix: Vec<u8>,
    book: JobBook,
    /// Whether the channel's jobs allow version rolling.
    rolling: bool,
    /// Whether the channel has had a job (the first is always sent with a prev hash).
    started: bool,
}

pub(crate) async fn connection(stream: TcpStream, state: Arc<PoolState>, authority: Authority) {
    state.connection_opened();
    let peer = stream.peer_addr().ok();
    if let Err(reason) = serve(stream, &state, &authority).await {
        tracing::debug!(?peer, %reason, "test pool: SV2 connection closed");
    }
    state.connection_closed();
}

async fn send_job(wr: &mut Sv2Writer, ch: &mut Channel, pj: &PoolJob) -> Result<(), sv2::Sv2Error> {
    let clean = pj.clean || !ch.started;
    ch.started = true;
    let mask = if ch.rolling { POOL_VERSION_MASK } else { 0 };
    let job = if mask == pj.job.version_mask {
        pj.job.clone()
    } else {
        Arc::new(Job {
            version_mask: mask,
            ..(*pj.job).clone()
        })
    };
    let job_id = job.id as u32;
    let min_ntime = (!clean).then_some(job.ntime);
    let message = if ch.standard {
        Message::NewMiningJob {
            channel_id: ch.id,
            job_id,
            min_ntime,
            version: job.version,
            merkle_root: job.merkle_root(&ch.prefix),
        }
    } else {
        Message::NewExtendedMiningJob {
            channel_id: ch.id,
            job_id,
            min_ntime,
            version: job.version,
            version_rolling_allowed: ch.rolling,
            merkle_path: job.merkle_branch.clone(),
            coinbase_tx_prefix: job.coinbase_prefix.clone(),
            coinbase_tx_suffix: job.coinbase_suffix.clone(),
        }
    };
    wr.send(&message).await?;
    if clean {
        wr.send(&Message::SetNewPrevHash {
            channel_id: ch.id,
            job_id,
            prev_hash: job.prev_hash,
            min_ntime: job.ntime,
            nbits: job.nbits,
        })
        .await?;
    }
    ch.book.add(job, clean, unix_now());
    Ok(())
}

async fn serve(
    stream: TcpStream,
    state: &Arc<PoolState>,
    authority: &Authority,
) -> Result<(), String> {
    let conn = sv2::accept(
        stream,
        &authority.keys,
        CERT_VALIDITY,
        FrameLimits::default(),
    )
    .await
    .map_err(|e| e.to_string())?;
    let (mut rd, mut wr) = conn.into_split();
    let e = |e: sv2::Sv2Error| e.to_string();
    match rd.recv().await.map_err(e)? {
        Message::SetupConnection {
            protocol: Protocol::Mining,
            min_version,
            max_version,
            ..
        } if (min_version..=max_version).contains(&PROTOCOL_VERSION) => {
            wr.send(&Message::SetupConnectionSuccess {
                used_version: PROTOCOL_VERSION,
                flags: 0,
            })
            .await
            .map_err(e)?;
        }
        Message::SetupConnection { protocol, .. } => {
            let error_code = if protocol == Protocol::Mining {
                error_code::PROTOCOL_VERSION_MISMATCH
            } else {
                error_code::UNSUPPORTED_PROTOCOL
            };
            let _ = wr
                .send(&Message::SetupConnectionError {
                    flags: 0,
                    error_code: error_code.into(),
                })
                .await;
            return Err(format!("setup refused: {error_code}"));
        }
        other => return Err(format!("expected SetupConnection, got {}", other.name())),
    };
    // Every channel may roll the BIP320 bits (the pool's success flags do not fix the version).
    let rolling = true;
    let opts = &state.opts;
    let target_bytes = state.share_target.to_le_bytes();
    let mut channels: Vec<Channel> = Vec::new();
    let mut jobs = state.jobs.clone();
    let mut next_channel = 1u32;
    loop {
        tokio::select! {
            msg = rd.recv() => {
                let msg = msg.map_err(e)?;
                match msg {
                    Message::OpenExtendedMiningChannel { request_id, max_target, min_extranonce_size, .. } => {
                        let refusal = if channels.len() >= MAX_CHANNELS {
                            Some(error_code::CHANNEL_CAPACITY_EXHAUSTED)
                        } else if min_extranonce_size as usize > opts.extranonce2_size {
                            Some(error_code::MIN_EXTRANONCE_SIZE_TOO_LARGE)
                        } else if Target::from_le_bytes(max_target) < state.share_target {
                            Some(error_code::MAX_TARGET_OUT_OF_RANGE)
                        } else {
                            None
                        };
                        if let Some(code) = refusal {
                            wr.send(&Message::OpenMiningChannelError { request_id, error_code: code.into() }).await.map_err(e)?;
                            continue;
                        }
                        let prefix = state.extranonce_prefix();
                        let id = next_channel;
                        next_channel += 1;
                        wr.send(&Message::OpenExtendedMiningChannelSuccess {
                            request_id,
                            channel_id: id,
                            target: target_bytes,
                            extranonce_size: opts.extranonce2_size as u16,
                            extranonce_prefix: prefix.clone(),
                            group_channel_id: 0,
                        }).await.map_err(e)?;
                        channels.push(Channel { id, standard: false, prefix, book: JobBook::new(0, 8), rolling, started: false });
                        open_channel(&mut wr, channels.last_mut().expect("just pushed"), &target_bytes, &mut jobs).await.map_err(e)?;
                    }
                    Message::OpenStandardMiningChannel { request_id, max_target, .. } => {
                        if channels.len() >= MAX_CHANNELS || Target::from_le_bytes(max_target) < state.share_target {
                            let code = if channels.len() >= MAX_CHANNELS { error_code::CHANNEL_CAPACITY_EXHAUSTED } else { error_code::MAX_TARGET_OUT_OF_RANGE };
                            wr.send(&Message::OpenMiningChannelError { request_id, error_code: code.into() }).await.map_err(e)?;
                            continue;
                        }
                        let mut prefix = state.extranonce_prefix();
                        prefix.resize(opts.extranonce1_size + opts.extranonce2_size, 0);
                        let id = next_channel;
                        next_channel += 1;
                        wr.send(&Message::OpenStandardMiningChannelSuccess {
                            request_id,
                            channel_id: id,
                            target: target_bytes,
                            extranonce_prefix: prefix.clone(),
                            group_channel_id: 0,
                        }).await.map_err(e)?;
                        channels.push(Channel { id, standard: true, prefix, book: JobBook::new(0, 8), rolling, started: false });
                        open_channel(&mut wr, channels.last_mut().expect("just pushed"), &target_bytes, &mut jobs).await.map_err(e)?;
                    }
                    Message::SubmitSharesExtended { channel_id, sequence_number, job_id, nonce, ntime, version, extranonce } => {
                        let reply = submit(state, &mut channels, channel_id, sequence_number, job_id, nonce, ntime, version, Some(&extranonce));
                        wr.send(&reply).await.map_err(e)?;
                    }
                    Message::SubmitSharesStandard { channel_id, sequence_number, job_id, nonce, ntime, version } => {
                        let reply = submit(state, &mut channels, channel_id, sequence_number, job_id, nonce, ntime, version, None);
                        wr.send(&reply).await.map_err(e)?;
                    }
                    Message::CloseChannel { channel_id, .. } => channels.retain(|c| c.id != channel_id),
                    Message::UpdateChannel { .. } => {}
                    other => tracing::debug!(message = other.name(), "test pool: SV2 message ignored"),
                }
            }
            changed = jobs.changed(), if !channels.is_empty() => {
                if changed.is_err() {
                    return Ok(());
                }
                let current = jobs.borrow_and_update().clone();
                if let Some(pj) = current {
                    for ch in channels.iter_mut() {
                        send_job(&mut wr, ch, &pj).await.map_err(e)?;
                    }
                }
            }
        }
    }
}

/// After a channel opens: its target, then the current job.
async fn open_channel(
    wr: &mut Sv2Writer,
    ch: &mut Channel,
    target: &[u8; 32],
    jobs: &mut tokio::sync::watch::Receiver<Option<Arc<PoolJob>>>,
) -> Result<(), sv2::Sv2Error> {
    wr.send(&Message::SetTarget {
        channel_id: ch.id,
        maximum_target: *target,
    })
    .await?;
    let current = jobs.borrow_and_update().clone();
    if let Some(pj) = current {
        send_job(wr, ch, &pj).await?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn submit(
    state: &PoolState,
    channels: &mut [Channel],
    channel_id: u32,
    sequence_number: u32,
    job_id: u32,
    nonce: u32,
    ntime: u32,
    version: u32,
    extranonce: Option<&[u8]>,
) -> Message {
    let error = |code: &str| Message::SubmitSharesError {
        channel_id,
        sequence_number,
        error_code: code.to_string(),
    };
    let Some(ch) = channels.iter_mut().find(|c| c.id == channel_id) else {
        state.rejected(error_code::INVALID_CHANNEL_ID);
        return error(error_code::INVALID_CHANNEL_ID);
    };
    let mut full = [0u8; 64];
    let n = match (ch.standard, extranonce) {
        (true, None) => {
            full[..ch.prefix.len()].copy_from_slice(&ch.prefix);
            ch.prefix.len()
        }
        (false, Some(en)) if ch.prefix.len() + en.len() <= 32 => {
            full[..ch.prefix.len()].copy_from_slice(&ch.prefix);
            full[ch.prefix.len()..ch.prefix.len() + en.len()].copy_from_slice(en);
            ch.prefix.len() + en.len()
        }
        (false, Some(_)) => {
            state.rejected(error_code::BAD_EXTRANONCE_SIZE);
            return error(error_code::BAD_EXTRANONCE_SIZE);
        }
        // A standard submit on an extended channel or the reverse.
        _ => {
            state.rejected(error_code::INVALID_SHARE);
            return error(error_code::INVALID_SHARE);
        }
    };
    let sub = Submission {
        extranonce: &full[..n],
        ntime,
        nonce,
        version: SubmittedVersion::Full(version),
    };
    match state.check(&mut ch.book, job_id as u64, &sub) {
        Ok(work) => {
            state.accepted(work);
            Message::SubmitSharesSuccess {
                channel_id,
                last_sequence_number: sequence_number,
                new_submits_accepted_count: 1,
                new_shares_sum: u64::try_from(work).unwrap_or(u64::MAX),
            }
        }
        Err(r) => {
            state.rejected(r.reason);
            error(r.reason)
        }
    }
}
