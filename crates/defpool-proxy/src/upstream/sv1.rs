//! An SV1 pool as upstream: subscribe, authorize, configure (BIP310; pools that ignore it are
//! fine), extranonce.subscribe; follows set_difficulty, notify, set_extranonce,
//! set_version_mask and client.reconnect.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use defpool_core::work::Target;
use defpool_stratum::sv1::{
    self, Configure, Incoming, LineReader, MinerRequest, PoolMessage, Submit,
};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::{
    host_port, Emitter, ResultWindow, Sent, UpstreamCommand, UpstreamEvent, UpstreamJob,
    UpstreamSpec, UpstreamStats,
};

const ID_CONFIGURE: u64 = 1;
const ID_SUBSCRIBE: u64 = 2;
const ID_XNSUB: u64 = 3;
const ID_AUTHORIZE: u64 = 4;
const FIRST_SUBMIT_ID: u64 = 100;
/// How many times a pool may send us elsewhere with client.reconnect in a row.
const MAX_REDIRECTS: u32 = 3;

/// Runs until the upstream is down or closed; returns the reason.
pub async fn run(
    spec: UpstreamSpec,
    emitter: &Emitter,
    mut commands: mpsc::Receiver<UpstreamCommand>,
    stats: Arc<UpstreamStats>,
) -> String {
    let mut address = host_port(&spec.upstream.address);
    let mut redirects = 0;
    loop {
        match session(&spec, &address, emitter, &mut commands, &stats).await {
            Ended::Closed => return "closed by the proxy".into(),
            Ended::Down(reason) => return reason,
            Ended::Redirect(next) if redirects < MAX_REDIRECTS => {
                tracing::info!(upstream = %spec.upstream.name, from = %address, to = %next, "pool asked us to reconnect");
                redirects += 1;
                address = next;
            }
            Ended::Redirect(next) => {
                return format!("pool redirected more than {MAX_REDIRECTS} times (last to {next})")
            }
        }
    }
}

enum Ended {
    Closed,
    Down(String),
    Redirect(String),
}

async fn session(
    spec: &UpstreamSpec,
    address: &str,
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
    let _ = stream.set_nodelay(true);
    let (read, mut write) = stream.into_split();
    let mut lines = LineReader::new(BufReader::with_capacity(16 * 1024, read), 1 << 20);

    let mut hello = String::new();
    if spec.coin_version_mask != 0 {
        hello.push_str(
            &MinerRequest::Configure(Configure {
                extensions: vec!["version-rolling".into()],
                version_rolling_mask: Some(spec.coin_version_mask),
                version_rolling_min_bit_count: Some(2),
                minimum_difficulty: None,
            })
            .to_line(ID_CONFIGURE),
        );
    }
    hello.push_str(
        &MinerRequest::Subscribe {
            user_agent: Some(concat!("defpool/", env!("CARGO_PKG_VERSION")).into()),
            session: None,
        }
        .to_line(ID_SUBSCRIBE),
    );
    hello.push_str(&MinerRequest::ExtranonceSubscribe.to_line(ID_XNSUB));
    hello.push_str(
        &MinerRequest::Authorize {
            username: spec.upstream.username.clone(),
            password: spec.upstream.password.expose().to_string(),
        }
        .to_line(ID_AUTHORIZE),
    );
    if let Err(e) = write.write_all(hello.as_bytes()).await {
        return Ended::Down(format!("write to {address} failed: {e}"));
    }

    let mut subscribed: Option<(Vec<u8>, usize)> = None;
    let mut authorized = false;
    let mut ready = false;
    let mut mask = 0u32;
    let mut target: Option<Target> = None;
    let mut last_job = Instant::now();
    let mut pending: HashMap<u64, Sent> = HashMap::new();
    let mut next_id = FIRST_SUBMIT_ID;
    let mut window = ResultWindow::default();
    let mut tick = tokio::time::interval(Duration::from_secs(1));

    loop {
        tokio::select! {
            line = lines.next_line() => {
                let line = match line {
                    Ok(Some(l)) => l,
                    Ok(None) => return Ended::Down(format!("{address} closed the connection")),
                    Err(e) => return Ended::Down(format!("reading from {address}: {e}")),
                };
                let msg = match sv1::parse_line(line) {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(upstream = %name, error = %e, "ignoring a malformed line from the pool");
                        continue;
                    }
                };
                match msg {
                    Incoming::Response(r) => {
                        let id = r.id.as_u64().unwrap_or(0);
                        match id {
                            ID_CONFIGURE => {
                                let granted = sv1::parse_configure_result(&r.result).unwrap_or(0) & spec.coin_version_mask;
                                if granted != mask {
                                    mask = granted;
                                    if ready {
                                        emitter.emit(UpstreamEvent::VersionMask(mask)).await;
                                    }
                                }
                            }
                            ID_SUBSCRIBE => match sv1::parse_subscribe_result(&r.result) {
                                Some(s) => subscribed = Some(s),
                                None => return Ended::Down(format!("subscribe refused: {}", sv1::error_message(&r.error))),
                            },
                            ID_XNSUB => {}
                            ID_AUTHORIZE => {
                                if r.result.as_bool() == Some(true) {
                                    authorized = true;
                                } else {
                                    return Ended::Down(format!("authorization of {:?} refused: {}", spec.upstream.username, sv1::error_message(&r.error)));
                                }
                            }
                            id if id >= FIRST_SUBMIT_ID => if let Some(sent) = pending.remove(&id) {
                                let accepted = r.result.as_bool() == Some(true) && r.error.is_null();
                                if accepted {
                                    stats.accepted.fetch_add(1, Ordering::Relaxed);
                                    window.push(true);
                                } else {
                                    stats.rejected.fetch_add(1, Ordering::Relaxed);
                                    if sent.below_pool_target {
                                        tracing::info!(upstream = %name, reason = %sv1::error_message(&r.error), "the pool refused a block candidate below its share target (not counted against the pool)");
                                    } else {
                                        window.push(false);
                                        tracing::debug!(upstream = %name, reason = %sv1::error_message(&r.error), "share rejected upstream");
                                        if window.rejects() >= spec.limits.reject_streak {
                                            return Ended::Down(format!("{} of the last 20 shares rejected (last: {})", window.rejects(), sv1::error_message(&r.error)));
                                        }
                                    }
                                }
                            }
                            _ => {}
                        }
                        if !ready && authorized {
                            if let Some((en1, size)) = &subscribed {
                                ready = true;
                                last_job = Instant::now();
                                emitter.emit(UpstreamEvent::Ready { extranonce_prefix: en1.clone(), extranonce_size: *size, version_mask: mask }).await;
                            }
                        }
                    }
                    Incoming::Request(req) => match PoolMessage::parse(&req) {
                        Ok(PoolMessage::SetDifficulty(d)) => {
                            target = Target::from_stratum_difficulty(d, spec.algorithm);
                        }
                        Ok(PoolMessage::Notify(n)) => {
                            last_job = Instant::now();
                            let Some(t) = target.or_else(|| Target::from_stratum_difficulty(1.0, spec.algorithm)) else { continue };
                            emitter.emit(UpstreamEvent::Job(UpstreamJob {
                                job_id: n.job_id,
                                prev_hash: n.prev_hash,
                                coinbase1: n.coinbase1,
                                coinbase2: n.coinbase2,
                                merkle_branch: n.merkle_branch,
                                version: n.version,
                                nbits: n.nbits,
                                ntime: n.ntime,
                                clean: n.clean_jobs,
                                target: t,
                                block_target: None,
                            })).await;
                        }
                        Ok(PoolMessage::SetExtranonce { extranonce1, extranonce2_size }) => {
                            subscribed = Some((extranonce1.clone(), extranonce2_size));
                            emitter.emit(UpstreamEvent::Extranonce { extranonce_prefix: extranonce1, extranonce_size: extranonce2_size }).await;
                        }
                        Ok(PoolMessage::SetVersionMask(m)) => {
                            mask = m & spec.coin_version_mask;
                            emitter.emit(UpstreamEvent::VersionMask(mask)).await;
                        }
                        Ok(PoolMessage::Reconnect { host, port, .. }) => {
                            let (cur_host, cur_port) = address.rsplit_once(':').unwrap_or((address, ""));
                            let host = host.filter(|h| !h.is_empty()).unwrap_or_else(|| cur_host.to_string());
                            let port = port.map(|p| p.to_string()).unwrap_or_else(|| cur_port.to_string());
                            return Ended::Redirect(format!("{host}:{port}"));
                        }
                        Ok(PoolMessage::ShowMessage(m)) => tracing::info!(upstream = %name, message = %m, "pool message"),
                        Ok(PoolMessage::Unknown(m)) => tracing::debug!(upstream = %name, method = %m, "ignoring unknown pool method"),
                        Err(e) => tracing::warn!(upstream = %name, error = %e, "ignoring a malformed pool message"),
                    },
                }
            }
            cmd = commands.recv() => {
                let share = match cmd {
                    Some(UpstreamCommand::Submit(s)) => s,
                    Some(UpstreamCommand::Close) | None => return Ended::Closed,
                };
                let sent = Sent::now(&share);
                let rolled = share.version ^ share.job_version;
                let line = MinerRequest::Submit(Submit {
                    worker: spec.upstream.username.clone(),
                    job_id: share.job_id,
                    extranonce2: share.extranonce,
                    ntime: share.ntime,
                    nonce: share.nonce,
                    version_bits: (rolled != 0).then_some(share.version & mask),
                })
                .to_line(next_id);
                pending.insert(next_id, sent);
                next_id += 1;
                stats.submitted.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = write.write_all(line.as_bytes()).await {
                    return Ended::Down(format!("write to {address} failed: {e}"));
                }
            }
            _ = tick.tick() => {
                if !ready && last_job.elapsed() > spec.limits.connect * 2 {
                    return Ended::Down(format!("{address} did not complete subscribe/authorize"));
                }
                if ready && last_job.elapsed() > spec.limits.no_job {
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
