//! SV2 miners (Noise NX with the proxy's authority key): SetupConnection for the mining
//! protocol, standard channels (header-only: the proxy computes each channel's merkle root),
//! extended channels (the miner rolls its own extranonce part), group channel membership,
//! SetTarget from per-channel vardiff, UpdateChannel, CloseChannel, and Reconnect only as the
//! last resort when an extended channel cannot follow a switch.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use defpool_core::share::{JobBook, Reject, ShareClass, Submission, SubmittedVersion};
use defpool_core::work::{Target, HASHES_PER_DIFFICULTY};
use defpool_stratum::sv2::{
    self, error_code, setup_flags, AuthorityKeypair, EncodedFrame, FrameLimits, Message, Protocol,
    Sv2Error, Sv2Reader, Sv2Writer,
};
use defpool_stratum::vardiff::Vardiff;
use tokio::net::TcpStream;
use tokio::sync::{watch, OwnedSemaphorePermit};

use super::{forward, session_ended, share_target, RETARGET_EVERY};
use crate::context::{Context, PortSettings};
use crate::group::{now_ms, GroupShared};
use crate::identity::{parse_username, MinerIdentity};
use crate::layout::Prefix;
use crate::template::JobTemplate;

const JOBS_KEPT: usize = 12;
const GROUP_CHANNEL_ID: u32 = 1;
/// SV2 carries only "rolling allowed": the BIP320 bits.
const BIP320_MASK: u32 = 0x1fff_e000;
/// CloseChannel / OpenMiningChannel.Error reason when there is no work to give.
const NO_WORK: &str = "upstream-unavailable";
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
const CERT_VALIDITY: Duration = Duration::from_secs(24 * 3600);

fn unix_now() -> u32 {
    (now_ms() / 1000) as u32
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Standard,
    Extended,
}

struct Channel {
    kind: Kind,
    identity: Arc<MinerIdentity>,
    prefix: Prefix,
    /// Bytes the miner rolls (extended) or we fill with zeros (standard).
    rolled: usize,
    vardiff: Vardiff,
    /// The miner's limit: our target is never easier than this.
    max_target: Target,
    sent_target: Option<Target>,
    /// The current work's share cap (see `JobTemplate::share_cap`).
    cap: Option<Target>,
    /// Jobs sent, each with its template (one list: a second one beside it cost ~200 B per
    /// channel); the padding a job's coinbase used is read back from the job.
    book: JobBook<Arc<JobTemplate>>,
    /// Headers of accepted shares → their template's `seq`. The book catches duplicates per
    /// job id; a template re-sent under a new id (vardiff) must not credit the same header
    /// twice. Pruned with the book's jobs.
    accepted: HashMap<[u8; 80], u64>,
    current: Option<Arc<JobTemplate>>,
    /// How many times the current template was re-sent (vardiff) on this channel.
    resends: u32,
    seen_epoch: u64,
}

impl Channel {
    fn target(&self, algorithm: defpool_core::Algorithm) -> Target {
        let mut t = share_target(self.vardiff.difficulty(), algorithm);
        if let Some(cap) = self.cap {
            t = t.easier(cap);
        }
        t.harder(self.max_target)
    }

    fn full_extranonce(&self) -> Vec<u8> {
        let mut e = self.prefix.to_vec();
        e.resize(self.prefix.len() + self.rolled, 0);
        e
    }
}

/// A connection's channels, sorted by id (binary search: a translating proxy may open thousands
/// on one connection). A vector sized to its content instead of a hash map: a map reserves
/// buckets for several entries, where a miner's connection has one channel. Boxed entries: a
/// channel is a few hundred bytes.
#[derive(Default)]
struct ChannelMap(Vec<(u32, Box<Channel>)>);

impl ChannelMap {
    fn find(&self, id: u32) -> Result<usize, usize> {
        self.0.binary_search_by_key(&id, |(k, _)| *k)
    }

    fn get(&self, id: &u32) -> Option<&Channel> {
        self.find(*id).ok().map(|i| &*self.0[i].1)
    }

    fn get_mut(&mut self, id: &u32) -> Option<&mut Channel> {
        self.find(*id).ok().map(|i| &mut *self.0[i].1)
    }

    fn insert(&mut self, id: u32, ch: Box<Channel>) {
        match self.find(id) {
            Ok(i) => self.0[i].1 = ch,
            Err(i) => {
                if self.0.capacity() == 0 {
                    // One channel is the common case: no room reserved for four.
                    self.0.reserve_exact(1);
                }
                self.0.insert(i, (id, ch));
            }
        }
    }

    fn remove(&mut self, id: &u32) -> Option<Box<Channel>> {
        self.find(*id).ok().map(|i| self.0.remove(i).1)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn keys(&self) -> impl Iterator<Item = &u32> {
        self.0.iter().map(|(k, _)| k)
    }

    fn values(&self) -> impl Iterator<Item = &Channel> {
        self.0.iter().map(|(_, c)| &**c)
    }

    fn iter(&self) -> impl Iterator<Item = (&u32, &Channel)> {
        self.0.iter().map(|(k, c)| (k, &**c))
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = (&u32, &mut Channel)> {
        self.0.iter_mut().map(|(k, c)| (&*k, &mut **c))
    }
}

struct Session {
    ctx: Arc<Context>,
    group: Arc<GroupShared>,
    port: Arc<PortSettings>,
    peer: SocketAddr,
    writer: Sv2Writer,
    channels: ChannelMap,
    next_channel: u32,
    version_rolling: bool,
    closing: Option<String>,
    /// The port's connection limit, released when the session ends.
    _permit: OwnedSemaphorePermit,
}

/// What woke an SV2 session.
enum Wake {
    /// Boxed, both: this value stays in the task while the session handles it.
    Message(Result<Box<Message>, Box<Sv2Error>>),
    /// The session's slice has a new template (`false`: the proxy is shutting down).
    Templates(bool),
    Timer,
}

/// Difficulty (stratum convention) at which `hashrate` makes `per_minute` shares.
fn difficulty_for(
    hashrate: f32,
    per_minute: f64,
    algorithm: defpool_core::Algorithm,
) -> Option<f64> {
    let h = hashrate as f64;
    (h.is_finite() && h > 0.0).then(|| {
        h * 60.0 / per_minute / HASHES_PER_DIFFICULTY * algorithm.stratum_difficulty_factor()
    })
}

/// Serves one SV2 connection until it ends, holding `permit` (the port's connection limit) as
/// long.
pub fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    port: Arc<PortSettings>,
    ctx: Arc<Context>,
    group: Arc<GroupShared>,
    keys: Arc<AuthorityKeypair>,
    permit: OwnedSemaphorePermit,
) -> impl Future<Output = ()> + Send {
    // The handshake takes the arguments and is boxed: a task keeps room for its future's
    // arguments (and for the handshake's state) for as long as the connection lives, where
    // they are needed only until the handshake is done.
    let started = Box::pin(handshake(stream, peer, port, ctx, group, keys, permit));
    async move {
        let Some((mut s, mut reader)) = started.await else {
            return;
        };
        // One task per connection: the session reads the frames itself (`Sv2Reader::recv` is
        // cancel-safe), no reader task and message channel per idle miner.
        s.group.miners.fetch_add(1, Ordering::Relaxed);
        let reason = s.run(&mut reader).await;
        session_ended("SV2", &s.peer, &reason, &s.ctx, &s.group);
        let mut prefixes = s.group.prefixes.lock().expect("prefix lock");
        for ch in s.channels.values() {
            prefixes.release(&ch.prefix);
        }
    }
}

/// The Noise handshake; the session and its reader, or `None` (logged and counted) if it
/// failed.
async fn handshake(
    stream: TcpStream,
    peer: SocketAddr,
    port: Arc<PortSettings>,
    ctx: Arc<Context>,
    group: Arc<GroupShared>,
    keys: Arc<AuthorityKeypair>,
    permit: OwnedSemaphorePermit,
) -> Option<(Session, Sv2Reader)> {
    let limits = FrameLimits {
        max_frame_bytes: port.max_message_bytes,
    };
    let conn =
        sv2::accept_with_timeout(stream, &keys, CERT_VALIDITY, limits, Duration::from_secs(5))
            .await;
    let (reader, writer) = match conn {
        Ok(c) => c.into_split(),
        Err(e) => {
            if e.is_protocol_violation() {
                ctx.counters
                    .protocol_violations
                    .fetch_add(1, Ordering::Relaxed);
            }
            tracing::info!(peer = %peer, error = %e, "SV2 handshake failed; closing that connection");
            ctx.counters.disconnects.fetch_add(1, Ordering::Relaxed);
            return None;
        }
    };
    let session = Session {
        ctx,
        group,
        port,
        peer,
        writer,
        channels: ChannelMap::default(),
        next_channel: GROUP_CHANNEL_ID + 1,
        version_rolling: false,
        closing: None,
        _permit: permit,
    };
    Some((session, reader))
}

impl Session {
    async fn send(&mut self, m: &Message) -> Result<(), String> {
        self.writer
            .send(m)
            .await
            .map_err(|e| format!("write failed: {e}"))
    }

    async fn run(&mut self, reader: &mut Sv2Reader) -> String {
        // Boxed: once per connection, and its timeout's timer would otherwise stay in every
        // idle connection's task.
        if let Err(why) = Box::pin(self.setup(reader)).await {
            return why;
        }
        self.serve_channels(reader).await
    }

    /// Reads and answers SetupConnection; `Err` with the reason to close.
    async fn setup(&mut self, reader: &mut Sv2Reader) -> Result<(), String> {
        let setup = match tokio::time::timeout(SETUP_TIMEOUT, reader.recv()).await {
            Ok(Ok(m)) => m,
            Ok(Err(Sv2Error::Closed)) => return Err("closed before SetupConnection".into()),
            Ok(Err(e)) => return Err(self.violation(&e)),
            Err(_) => return Err("no SetupConnection in time".into()),
        };
        match setup {
            Message::SetupConnection {
                protocol,
                min_version,
                max_version,
                flags,
                ..
            } => {
                let error = if protocol != Protocol::Mining {
                    Some((0, error_code::UNSUPPORTED_PROTOCOL))
                } else if !(min_version..=max_version).contains(&sv2::PROTOCOL_VERSION) {
                    Some((0, error_code::PROTOCOL_VERSION_MISMATCH))
                } else if flags & setup_flags::REQUIRES_WORK_SELECTION != 0 {
                    Some((
                        setup_flags::REQUIRES_WORK_SELECTION,
                        error_code::UNSUPPORTED_FEATURE_FLAGS,
                    ))
                } else {
                    None
                };
                if let Some((flags, code)) = error {
                    let _ = self
                        .send(&Message::SetupConnectionError {
                            flags,
                            error_code: code.into(),
                        })
                        .await;
                    return Err(format!("SetupConnection refused: {code}"));
                }
                self.version_rolling = flags & setup_flags::REQUIRES_VERSION_ROLLING != 0;
                self.send(&Message::SetupConnectionSuccess {
                    used_version: sv2::PROTOCOL_VERSION,
                    flags: 0,
                })
                .await
            }
            other => {
                self.ctx
                    .counters
                    .protocol_violations
                    .fetch_add(1, Ordering::Relaxed);
                Err(format!(
                    "protocol violation: {} before SetupConnection",
                    other.name()
                ))
            }
        }
    }

    /// Channels, jobs and shares until the connection ends; the reason.
    async fn serve_channels(&mut self, reader: &mut Sv2Reader) -> String {
        // Templates through this session's slice: new blocks and switches at once, routine
        // updates at the slice's turn (see `UPDATE_SPREAD`).
        let mut templates: watch::Receiver<Option<Arc<JobTemplate>>> =
            self.group.subscribe(&self.peer);
        let idle = self.port.idle_timeout;
        // One timer for the idle deadline and the retarget, re-armed only when it fires (see
        // the SV1 session).
        let mut last_activity = tokio::time::Instant::now();
        let mut next_retarget = last_activity + RETARGET_EVERY;
        let idle_timer = tokio::time::sleep_until((last_activity + idle).min(next_retarget));
        tokio::pin!(idle_timer);
        loop {
            if let Some(why) = self.closing.take() {
                return why;
            }
            // What woke the session, handled after the `select!`: awaiting inside its branches
            // would keep their outputs in the task beside the futures awaited. The message is
            // boxed as it arrives (136 bytes inline).
            let wake = tokio::select! {
                m = std::future::poll_fn(|cx| reader.poll_recv(cx).map_ok(Box::new).map_err(Box::new)) => Wake::Message(m),
                changed = templates.changed(), if !self.channels.is_empty() => Wake::Templates(changed.is_ok()),
                _ = &mut idle_timer => Wake::Timer,
            };
            let r = match wake {
                Wake::Message(m) => match m {
                    Ok(m) => {
                        last_activity = tokio::time::Instant::now();
                        // Boxed: the share path's futures (verifier, outbox) would otherwise
                        // size the task of every idle connection.
                        Box::pin(self.on_message(*m)).await
                    }
                    Err(e) if matches!(*e, Sv2Error::Closed) => {
                        return "miner closed the connection".into()
                    }
                    Err(e) => return self.violation(&e),
                },
                Wake::Templates(false) => return "proxy shutting down".into(),
                Wake::Templates(true) => {
                    let t = templates.borrow_and_update().clone();
                    match t {
                        Some(t) => self.broadcast(t).await,
                        None if self.ctx.close_without_work => {
                            return Box::pin(self.close_all(NO_WORK)).await;
                        }
                        None => Ok(()),
                    }
                }
                Wake::Timer => {
                    let now = tokio::time::Instant::now();
                    let deadline = last_activity + idle;
                    if now >= deadline {
                        return format!("idle for {} s", idle.as_secs());
                    }
                    let retarget = now >= next_retarget;
                    if retarget {
                        next_retarget = now + RETARGET_EVERY;
                    }
                    idle_timer.as_mut().reset(deadline.min(next_retarget));
                    if retarget && !self.channels.is_empty() {
                        // Boxed, as the share path: every ten seconds at most, and its futures
                        // would otherwise size every idle connection's task.
                        Box::pin(self.retarget_all()).await
                    } else {
                        Ok(())
                    }
                }
            };
            if let Err(e) = r {
                return e;
            }
        }
    }

    fn violation(&self, e: &Sv2Error) -> String {
        if e.is_protocol_violation() {
            self.ctx
                .counters
                .protocol_violations
                .fetch_add(1, Ordering::Relaxed);
            format!("protocol violation: {e}")
        } else {
            e.to_string()
        }
    }

    async fn on_message(&mut self, m: Message) -> Result<(), String> {
        if matches!(
            m,
            Message::SubmitSharesStandard { .. } | Message::SubmitSharesExtended { .. }
        ) {
            let started = std::time::Instant::now();
            let answered = self.on_channel_message(m).await;
            self.ctx.counters.share_answer.record(started.elapsed());
            return answered;
        }
        self.on_channel_message(m).await
    }

    async fn on_channel_message(&mut self, m: Message) -> Result<(), String> {
        match m {
            Message::OpenStandardMiningChannel {
                request_id,
                user_identity,
                nominal_hash_rate,
                max_target,
            } => {
                self.open(
                    Kind::Standard,
                    request_id,
                    &user_identity,
                    nominal_hash_rate,
                    max_target,
                    0,
                )
                .await
            }
            Message::OpenExtendedMiningChannel {
                request_id,
                user_identity,
                nominal_hash_rate,
                max_target,
                min_extranonce_size,
            } => {
                self.open(
                    Kind::Extended,
                    request_id,
                    &user_identity,
                    nominal_hash_rate,
                    max_target,
                    min_extranonce_size as usize,
                )
                .await
            }
            Message::SubmitSharesStandard {
                channel_id,
                sequence_number,
                job_id,
                nonce,
                ntime,
                version,
            } => {
                self.submit(
                    channel_id,
                    sequence_number,
                    job_id,
                    nonce,
                    ntime,
                    version,
                    None,
                )
                .await
            }
            Message::SubmitSharesExtended {
                channel_id,
                sequence_number,
                job_id,
                nonce,
                ntime,
                version,
                extranonce,
            } => {
                self.submit(
                    channel_id,
                    sequence_number,
                    job_id,
                    nonce,
                    ntime,
                    version,
                    Some(extranonce),
                )
                .await
            }
            Message::UpdateChannel {
                channel_id,
                nominal_hash_rate,
                maximum_target,
            } => {
                let algorithm = self.group.algorithm;
                let spm = self.port.shares_per_minute;
                let Some(ch) = self.channels.get_mut(&channel_id) else {
                    return self
                        .send(&Message::UpdateChannelError {
                            channel_id,
                            error_code: error_code::INVALID_CHANNEL_ID.into(),
                        })
                        .await;
                };
                ch.max_target = Target::from_le_bytes(maximum_target);
                if let Some(d) = difficulty_for(nominal_hash_rate, spm, algorithm) {
                    ch.vardiff.suggest(d, now_ms());
                }
                self.set_target(channel_id).await
            }
            Message::CloseChannel {
                channel_id,
                reason_code,
            } => {
                if let Some(ch) = self.channels.remove(&channel_id) {
                    self.group
                        .prefixes
                        .lock()
                        .expect("prefix lock")
                        .release(&ch.prefix);
                    tracing::debug!(peer = %self.peer, channel_id, reason = %reason_code, "miner closed a channel");
                }
                Ok(())
            }
            other => {
                tracing::debug!(peer = %self.peer, message = other.name(), "ignoring an unexpected SV2 message");
                Ok(())
            }
        }
    }

    async fn open(
        &mut self,
        kind: Kind,
        request_id: u32,
        user: &str,
        hashrate: f32,
        max_target: [u8; 32],
        min_extranonce: usize,
    ) -> Result<(), String> {
        let identity = match parse_username(&self.ctx.registry, self.ctx.network, user) {
            Ok(id) => id,
            Err(e) => {
                tracing::info!(peer = %self.peer, user = %user, reason = %e, "SV2 channel refused");
                return self
                    .send(&Message::OpenMiningChannelError {
                        request_id,
                        error_code: error_code::UNKNOWN_USER.into(),
                    })
                    .await;
            }
        };
        if self.ctx.close_without_work && self.group.templates.borrow().is_none() {
            return self
                .send(&Message::OpenMiningChannelError {
                    request_id,
                    error_code: NO_WORK.into(),
                })
                .await;
        }
        let (mut rolled, room) = self.group.templates.borrow().as_ref().map_or(
            (self.group.space.rolled_bytes, self.group.space.rolled_bytes),
            |t| (t.fold.rolled_bytes, t.fold.rolled_bytes + t.fold.pad),
        );
        if kind == Kind::Extended && min_extranonce > rolled && min_extranonce <= room {
            // A miner (or a translating proxy) that rolls more gets it out of the padding.
            rolled = min_extranonce;
        }
        if kind == Kind::Extended && min_extranonce > rolled {
            tracing::info!(peer = %self.peer, min_extranonce, offered = rolled, "SV2 extended channel refused: min_extranonce_size larger than the upstream's room");
            return self
                .send(&Message::OpenMiningChannelError {
                    request_id,
                    error_code: error_code::MIN_EXTRANONCE_SIZE_TOO_LARGE.into(),
                })
                .await;
        }
        if let Err(e) = self.ctx.announce_user(&identity).await {
            tracing::error!(error = %e, "outbox unavailable; refusing the channel for now");
            return self
                .send(&Message::OpenMiningChannelError {
                    request_id,
                    error_code: "storage-unavailable".into(),
                })
                .await;
        }
        let Some(prefix) = self.group.prefixes.lock().expect("prefix lock").allocate() else {
            return self
                .send(&Message::OpenMiningChannelError {
                    request_id,
                    error_code: error_code::CHANNEL_CAPACITY_EXHAUSTED.into(),
                })
                .await;
        };
        let channel_id = self.next_channel;
        self.next_channel += 1;
        let p = &self.port;
        let mut vardiff = Vardiff::new(
            p.start_difficulty,
            p.min_difficulty,
            p.max_difficulty,
            p.shares_per_minute,
            now_ms(),
        );
        if let Some(d) = difficulty_for(hashrate, p.shares_per_minute, self.group.algorithm) {
            vardiff.suggest(d, now_ms());
        }
        let ch = Box::new(Channel {
            kind,
            identity: Arc::new(identity),
            prefix,
            rolled,
            vardiff,
            max_target: Target::from_le_bytes(max_target),
            sent_target: None,
            cap: self
                .group
                .templates
                .borrow()
                .as_ref()
                .and_then(|t| t.share_cap()),
            book: JobBook::tagged(self.ctx.grace_secs, JOBS_KEPT),
            accepted: HashMap::new(),
            current: None,
            resends: 0,
            seen_epoch: 0,
        });
        let target = ch.target(self.group.algorithm);
        let reply = match kind {
            Kind::Standard => Message::OpenStandardMiningChannelSuccess {
                request_id,
                channel_id,
                target: target.to_le_bytes(),
                extranonce_prefix: ch.full_extranonce(),
                group_channel_id: GROUP_CHANNEL_ID,
            },
            Kind::Extended => Message::OpenExtendedMiningChannelSuccess {
                request_id,
                channel_id,
                target: target.to_le_bytes(),
                extranonce_size: rolled as u16,
                extranonce_prefix: ch.prefix.to_vec(),
                group_channel_id: GROUP_CHANNEL_ID,
            },
        };
        let mut ch = ch;
        ch.sent_target = Some(target);
        self.channels.insert(channel_id, ch);
        self.send(&reply).await?;
        if kind == Kind::Standard {
            let ids: Vec<u32> = self
                .channels
                .iter()
                .filter(|(_, c)| c.kind == Kind::Standard)
                .map(|(id, _)| *id)
                .collect();
            self.send(&Message::SetGroupChannel {
                group_channel_id: GROUP_CHANNEL_ID,
                channel_ids: ids,
            })
            .await?;
        }
        let t = self.group.templates.borrow().clone();
        if let Some(t) = t {
            self.send_job(channel_id, t, true).await?;
        }
        Ok(())
    }

    /// Closes every channel (no work to give) and ends the session.
    async fn close_all(&mut self, reason: &str) -> String {
        let ids: Vec<u32> = self.channels.keys().copied().collect();
        for channel_id in ids {
            let _ = self
                .send(&Message::CloseChannel {
                    channel_id,
                    reason_code: reason.into(),
                })
                .await;
        }
        tracing::info!(peer = %self.peer, reason, "no work: channels closed so the peer fails over");
        format!("channels closed: {reason}")
    }

    async fn broadcast(&mut self, t: Arc<JobTemplate>) -> Result<(), String> {
        // Not to a channel that has `t` or a newer template already (one opened while a
        // routine update was on its way through the slices).
        let ids: Vec<u32> = self
            .channels
            .iter()
            .filter(|(_, c)| c.current.as_ref().is_none_or(|cur| cur.seq < t.seq))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.queue_job(id, t.clone(), false)?;
        }
        self.flush().await
    }

    async fn retarget_all(&mut self) -> Result<(), String> {
        let now = now_ms();
        let ids: Vec<u32> = self
            .channels
            .iter_mut()
            .filter_map(|(id, c)| c.vardiff.retarget(now).map(|_| *id))
            .collect();
        // The work is re-sent under a new job id carrying the new target, so every share is
        // credited at the target its job was sent with (the miner's view too). A device that
        // restarts its nonce range on the re-sent job gets duplicate-share for repeats.
        for id in ids {
            self.set_target(id).await?;
            if let Some(t) = self.channels.get(&id).and_then(|c| c.current.clone()) {
                self.send_job(id, t, false).await?;
            }
        }
        Ok(())
    }

    async fn set_target(&mut self, channel_id: u32) -> Result<(), String> {
        let algorithm = self.group.algorithm;
        let Some(ch) = self.channels.get_mut(&channel_id) else {
            return Ok(());
        };
        let target = ch.target(algorithm);
        if ch.sent_target == Some(target) {
            return Ok(());
        }
        ch.sent_target = Some(target);
        self.ctx
            .set_worker_difficulty(&ch.identity, ch.vardiff.difficulty());
        self.send(&Message::SetTarget {
            channel_id,
            maximum_target: target.to_le_bytes(),
        })
        .await
    }

    async fn send_job(
        &mut self,
        channel_id: u32,
        t: Arc<JobTemplate>,
        force_clean: bool,
    ) -> Result<(), String> {
        self.queue_job(channel_id, t, force_clean)?;
        self.flush().await
    }

    async fn flush(&mut self) -> Result<(), String> {
        self.writer
            .flush()
            .await
            .map_err(|e| format!("write failed: {e}"))
    }

    /// Queues a channel's next job (with its SetTarget and SetNewPrevHash); written by the next
    /// flush, so a job's frames go out in one write.
    fn queue_job(
        &mut self,
        channel_id: u32,
        t: Arc<JobTemplate>,
        force_clean: bool,
    ) -> Result<(), String> {
        let algorithm = self.group.algorithm;
        let version_rolling = self.version_rolling;
        let Some(ch) = self.channels.get_mut(&channel_id) else {
            return Ok(());
        };
        let pad = match ch.kind {
            // The proxy fills a standard channel's extranonce itself: it always follows.
            Kind::Standard => {
                ch.rolled = t.fold.rolled_bytes;
                Some(t.fold.pad)
            }
            // An extended channel keeps its size; the padding absorbs the difference.
            Kind::Extended => t.pad_for(ch.rolled),
        };
        let Some(pad) = pad else {
            // Only an extended channel whose size the new upstream cannot hold ends here.
            self.ctx
                .counters
                .reconnects_sent
                .fetch_add(1, Ordering::Relaxed);
            self.group.switch.lock().expect("switch lock").reconnects += 1;
            tracing::info!(peer = %self.peer, channel_id, "extended channel cannot follow the new upstream's extranonce space: Reconnect sent");
            self.closing = Some("asked to reconnect".into());
            return self.queue(&Message::Reconnect {
                new_host: String::new(),
                new_port: 0,
            });
        };
        let clean = force_clean
            || ch.current.as_ref().is_none_or(|c| !t.continues(c))
            || (t.clean && ch.current.as_ref().is_none_or(|c| c.seq != t.seq));
        // The same job id on every channel of the template, so one encoded frame serves all; a
        // re-send (new target) gets the next resend number.
        ch.resends = match &ch.current {
            Some(c) if c.seq == t.seq => ch.resends + 1,
            _ => 0,
        };
        let job_id = t.sv2_job_id(ch.resends);
        ch.cap = t.share_cap();
        let target = ch.target(algorithm);
        let set_target = (ch.sent_target != Some(target)).then(|| {
            ch.sent_target = Some(target);
            Message::SetTarget {
                channel_id,
                maximum_target: target.to_le_bytes(),
            }
        });
        let rolling_allowed = version_rolling && t.version_mask == BIP320_MASK;
        let mask = if rolling_allowed { BIP320_MASK } else { 0 };
        let job = t.shared_job(job_id as u64, ch.prefix.len(), ch.rolled, pad, mask, target);
        debug_assert_eq!(
            t.pad_of(&job),
            pad,
            "a share's pad is read back from its job"
        );
        let min_ntime = (!clean).then_some(t.job.ntime);
        let standard_job = match ch.kind {
            Kind::Standard => Some(Message::NewMiningJob {
                channel_id,
                job_id,
                min_ntime,
                version: t.job.version,
                merkle_root: job.merkle_root(&ch.full_extranonce()),
            }),
            Kind::Extended => None,
        };
        ch.book.add_tagged(job, t.clone(), clean, unix_now());
        // A share can only be admitted for a kept job: older templates' headers can go.
        if !ch.accepted.is_empty() {
            let oldest = ch.book.tags().map(|j| j.seq).min().unwrap_or(t.seq);
            ch.accepted.retain(|_, seq| *seq >= oldest);
        }
        if t.epoch != ch.seen_epoch {
            ch.seen_epoch = t.epoch;
            let mut timer = self.group.switch.lock().expect("switch lock");
            if let (Some(at), true) = (timer.commanded_at, timer.epoch == t.epoch) {
                timer.first_job_us.push(at.elapsed().as_micros() as u64);
            }
        }
        ch.current = Some(t.clone());
        if let Some(m) = set_target {
            self.queue(&m)?;
        }
        match standard_job {
            Some(m) => self.queue(&m)?,
            None => {
                let frame = t
                    .sv2_extended_job(job_id, pad, rolling_allowed, min_ntime)
                    .map_err(|e| format!("encoding a job: {e}"))?;
                self.queue_for_channel(&frame, channel_id)?;
            }
        }
        if clean {
            let frame = t
                .sv2_prev_hash(job_id)
                .map_err(|e| format!("encoding a job: {e}"))?;
            self.queue_for_channel(&frame, channel_id)?;
        }
        Ok(())
    }

    fn queue(&mut self, m: &Message) -> Result<(), String> {
        self.writer
            .queue(m)
            .map_err(|e| format!("encoding {}: {e}", m.name()))
    }

    fn queue_for_channel(&mut self, frame: &EncodedFrame, channel_id: u32) -> Result<(), String> {
        self.writer
            .queue_for_channel(frame, channel_id)
            .map_err(|e| format!("encoding a job: {e}"))
    }

    /// Answers one submit with a spec error code.
    async fn submit_error(&mut self, channel_id: u32, seq: u32, code: &str) -> Result<(), String> {
        self.send(&Message::SubmitSharesError {
            channel_id,
            sequence_number: seq,
            error_code: code.into(),
        })
        .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn submit(
        &mut self,
        channel_id: u32,
        seq: u32,
        job_id: u32,
        nonce: u32,
        ntime: u32,
        version: u32,
        extranonce: Option<Vec<u8>>,
    ) -> Result<(), String> {
        let Some(ch) = self.channels.get_mut(&channel_id) else {
            self.ctx
                .record_rejected(None, None, error_code::INVALID_CHANNEL_ID)
                .await;
            return self
                .submit_error(channel_id, seq, error_code::INVALID_CHANNEL_ID)
                .await;
        };
        let full = match (&extranonce, ch.kind) {
            (Some(e), Kind::Extended) => {
                let mut f = ch.prefix.to_vec();
                f.extend_from_slice(e);
                f
            }
            _ => ch.full_extranonce(),
        };
        let (template, pad) = match ch.book.get(job_id as u64) {
            Some((job, t)) => (Some(t.clone()), t.pad_of(job)),
            None => (None, 0),
        };
        let sub = Submission {
            extranonce: &full,
            ntime,
            nonce,
            version: SubmittedVersion::Full(version),
        };
        let identity = ch.identity.clone();
        let admitted = ch.book.admit(job_id as u64, &sub, unix_now());
        let (prepared, late) = match admitted {
            Ok(x) => x,
            Err(reject) => {
                let code = match reject {
                    Reject::UnknownJob(_) => error_code::INVALID_JOB_ID,
                    Reject::StaleJob(_) => error_code::STALE_SHARE,
                    Reject::Duplicate => error_code::DUPLICATE_SHARE,
                    Reject::BadExtranonceSize { .. } => error_code::BAD_EXTRANONCE_SIZE,
                    Reject::VersionBitsOutsideMask { .. } => {
                        error_code::INVALID_NON_ROLLABLE_VERSION_BIT
                    }
                    Reject::NtimeOutOfRange { .. } => error_code::INVALID_SHARE,
                };
                self.ctx
                    .record_rejected(Some(&identity), template.as_deref(), reject.code())
                    .await;
                return self.submit_error(channel_id, seq, code).await;
            }
        };
        let Some(template) = template else {
            return self
                .submit_error(channel_id, seq, error_code::INVALID_JOB_ID)
                .await;
        };
        let share_target = prepared.share_target;
        let header = prepared.header.serialize();
        if self
            .channels
            .get(&channel_id)
            .is_some_and(|c| c.accepted.contains_key(&header))
        {
            self.ctx
                .record_rejected(
                    Some(&identity),
                    Some(&template),
                    error_code::DUPLICATE_SHARE,
                )
                .await;
            return self
                .submit_error(channel_id, seq, error_code::DUPLICATE_SHARE)
                .await;
        }
        let checked = match self.ctx.verifier.judge(prepared).await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "share verification failed");
                return self
                    .submit_error(channel_id, seq, error_code::INVALID_SHARE)
                    .await;
            }
        };
        if checked.class == ShareClass::BelowTarget {
            self.ctx
                .record_rejected(
                    Some(&identity),
                    Some(&template),
                    error_code::DIFFICULTY_TOO_LOW,
                )
                .await;
            return self
                .submit_error(channel_id, seq, error_code::DIFFICULTY_TOO_LOW)
                .await;
        }
        forward(&template, &checked, &full, pad, &identity).await;
        if let Err(e) = self
            .ctx
            .accept_share(&identity, &template, &checked, share_target.work(), late)
            .await
        {
            tracing::error!(error = %e, "outbox write failed; share not acknowledged");
            return self
                .submit_error(channel_id, seq, "storage-unavailable")
                .await;
        }
        if let Some(c) = self.channels.get_mut(&channel_id) {
            c.accepted.insert(header, template.seq);
        }
        let shares_sum = (share_target.work() >> 32).clamp(1, u64::MAX as u128) as u64;
        self.send(&Message::SubmitSharesSuccess {
            channel_id,
            last_sequence_number: seq,
            new_submits_accepted_count: 1,
            new_shares_sum: shares_sum,
        })
        .await?;
        let retarget = self
            .channels
            .get_mut(&channel_id)
            .and_then(|c| c.vardiff.record_share(now_ms()));
        if retarget.is_some() {
            self.set_target(channel_id).await?;
            if let Some(t) = self
                .channels
                .get(&channel_id)
                .and_then(|c| c.current.clone())
            {
                self.send_job(channel_id, t, false).await?;
            }
        }
        Ok(())
    }
}
