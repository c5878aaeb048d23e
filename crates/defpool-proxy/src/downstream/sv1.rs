//! SV1 miners: subscribe, authorize, configure (BIP310), extranonce.subscribe, suggest_difficulty,
//! submit; we send set_difficulty, notify, set_extranonce, set_version_mask and, as the last
//! resort, client.reconnect.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use defpool_core::share::{JobBook, ShareClass, Submission, SubmittedVersion};
use defpool_core::work::Target;
use defpool_stratum::sv1::{
    self, error_code, error_line, result_line, Incoming, LineReader, MinerRequest, PoolMessage,
    ReleasingReader, Request, Submit,
};
use defpool_stratum::vardiff::Vardiff;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::{watch, OwnedSemaphorePermit};

use super::{forward, session_ended, share_target, sv1_reject, RETARGET_EVERY};
use crate::context::{Context, PortSettings};
use crate::group::{now_ms, GroupShared};
use crate::identity::{parse_password, parse_username, MinerIdentity};
use crate::layout::Prefix;
use crate::template::JobTemplate;

/// Jobs a miner may still submit to (a few blocks' worth plus vardiff re-sends).
const JOBS_KEPT: usize = 12;
/// Capacity of the output buffer kept between writes (a reply fits; a job does not).
const OUT_KEPT: usize = 256;

fn unix_now() -> u32 {
    (now_ms() / 1000) as u32
}

struct Session {
    ctx: Arc<Context>,
    group: Arc<GroupShared>,
    port: Arc<PortSettings>,
    peer: SocketAddr,
    write: OwnedWriteHalf,
    out: String,
    prefix: Option<Prefix>,
    rolled: usize,
    xnsub: bool,
    /// Shared, so a share's records and replies need no copy of it.
    identity: Option<Arc<MinerIdentity>>,
    fixed: bool,
    vardiff: Vardiff,
    sent_difficulty: Option<f64>,
    requested_mask: Option<u32>,
    sent_mask: Option<u32>,
    /// Jobs sent, each with its template (one list: a second one beside it cost ~200 B per
    /// idle miner).
    book: JobBook<Arc<JobTemplate>>,
    /// Headers of accepted shares → their template's `seq`. The book catches duplicates per
    /// job id; a template re-sent under a new id (vardiff) must not credit the same header
    /// twice. Pruned with the book's jobs.
    accepted: HashMap<[u8; 80], u64>,
    /// How many times the current template was re-sent (vardiff) to this miner.
    resends: u32,
    current: Option<Arc<JobTemplate>>,
    seen_epoch: u64,
    closing: Option<&'static str>,
    /// The port's connection limit, released when the session ends.
    _permit: OwnedSemaphorePermit,
}

/// Serves one SV1 miner until it leaves or breaks the protocol, holding `permit` (the port's
/// connection limit) as long.
pub fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    port: Arc<PortSettings>,
    ctx: Arc<Context>,
    group: Arc<GroupShared>,
    permit: OwnedSemaphorePermit,
) -> impl Future<Output = ()> + Send {
    // The session is built here and moved into the future: an `async fn` would keep room for
    // its arguments beside the session in the task of every idle miner.
    let _ = stream.set_nodelay(true);
    let (read, write) = stream.into_split();
    // No read buffer while idle (a BufReader's would stay allocated on every idle miner).
    let mut lines = LineReader::new(ReleasingReader::new(read), port.max_message_bytes);
    let mut templates: watch::Receiver<Option<Arc<JobTemplate>>> = group.subscribe(&peer);
    let now = now_ms();
    let mut s = Session {
        vardiff: Vardiff::new(
            port.start_difficulty,
            port.min_difficulty,
            port.max_difficulty,
            port.shares_per_minute,
            now,
        ),
        book: JobBook::tagged(ctx.grace_secs, JOBS_KEPT),
        ctx,
        group,
        port,
        peer,
        write,
        out: String::new(),
        prefix: None,
        rolled: 0,
        xnsub: false,
        identity: None,
        fixed: false,
        sent_difficulty: None,
        requested_mask: None,
        sent_mask: None,
        accepted: HashMap::new(),
        resends: 0,
        current: None,
        seen_epoch: 0,
        closing: None,
        _permit: permit,
    };
    s.group.miners.fetch_add(1, Ordering::Relaxed);
    // A block, not an `async fn` taking them: a function's future would keep its arguments
    // twice (as captured and as moved into its body).
    async move {
        let s = &mut s;
        let idle = s.port.idle_timeout;
        // One timer per session for both the idle deadline and the vardiff retarget (an interval
        // would be a second, boxed timer on every idle miner), re-armed only when it fires (not on
        // every message): re-arming it per loop iteration was a timer-wheel insert and removal per
        // share and job.
        let mut last_activity = tokio::time::Instant::now();
        let mut next_retarget = last_activity + RETARGET_EVERY;
        let idle_timer = tokio::time::sleep_until((last_activity + idle).min(next_retarget));
        tokio::pin!(idle_timer);
        let reason: String = loop {
            if let Some(why) = s.closing {
                break why.to_string();
            }
            tokio::select! {
                line = lines.next_line() => {
                    match line {
                        Ok(Some(line)) => {
                            last_activity = tokio::time::Instant::now();
                            match sv1::parse_line(line) {
                                Ok(Incoming::Request(req)) => {
                                    // Boxed: the share path's futures (verifier, outbox) would
                                    // otherwise size the task of every idle miner.
                                    if let Err(e) = Box::pin(s.on_request(req)).await {
                                        break format!("write failed: {e}");
                                    }
                                }
                                Ok(Incoming::Response(_)) => {}
                                Err(e) => {
                                    s.ctx.counters.protocol_violations.fetch_add(1, Ordering::Relaxed);
                                    break format!("protocol violation: {e}");
                                }
                            }
                        }
                        Ok(None) => break "miner closed the connection".into(),
                        Err(e) => {
                            if e.is_protocol_violation() {
                                s.ctx.counters.protocol_violations.fetch_add(1, Ordering::Relaxed);
                                break format!("protocol violation: {e}");
                            }
                            break format!("{e}");
                        }
                    }
                }
                // Templates through this session's slice: new blocks and switches at once,
                // routine updates at the slice's turn (see `UPDATE_SPREAD`).
                changed = templates.changed(), if s.ready() => {
                    if changed.is_err() {
                        break "proxy shutting down".into();
                    }
                    let t = templates.borrow_and_update().clone();
                    // Not if the session has it or a newer one already (it started since).
                    if let Some(t) = t.filter(|t| s.current.as_ref().is_none_or(|c| c.seq < t.seq)) {
                        if let Err(e) = s.send_job(t, false).await {
                            break format!("write failed: {e}");
                        }
                    }
                }
                _ = &mut idle_timer => {
                    let now = tokio::time::Instant::now();
                    let deadline = last_activity + idle;
                    if now >= deadline {
                        break format!("idle for {} s", idle.as_secs());
                    }
                    if now >= next_retarget {
                        next_retarget = now + RETARGET_EVERY;
                        if s.ready() && !s.fixed {
                            if let Some(d) = s.vardiff.retarget(now_ms()) {
                                if let Err(e) = s.difficulty_changed(d).await {
                                    break format!("write failed: {e}");
                                }
                            }
                        }
                    }
                    idle_timer.as_mut().reset(deadline.min(next_retarget));
                }
            }
        };
        session_ended("SV1", &s.peer, &reason, &s.ctx, &s.group);
        if let Some(p) = &s.prefix {
            s.group.prefixes.lock().expect("prefix lock").release(p);
        }
    }
}

impl Session {
    fn ready(&self) -> bool {
        self.prefix.is_some() && self.identity.is_some()
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if !self.out.is_empty() {
            let r = self.write.write_all(self.out.as_bytes()).await;
            self.out.clear();
            // An idle miner keeps no job-sized buffer.
            if self.out.capacity() > OUT_KEPT {
                self.out = String::new();
            }
            r?;
        }
        Ok(())
    }

    async fn reply_ok(&mut self, id: &Value, result: Value) -> std::io::Result<()> {
        self.out.push_str(&result_line(id, result));
        self.flush().await
    }

    async fn reply_err(&mut self, id: &Value, code: i64, msg: &str) -> std::io::Result<()> {
        self.out.push_str(&error_line(id, code, msg));
        self.flush().await
    }

    async fn on_request(&mut self, req: Request) -> std::io::Result<()> {
        let parsed = match MinerRequest::parse(&req) {
            Ok(p) => p,
            Err(e) => {
                return self
                    .reply_err(&req.id, error_code::OTHER, &e.to_string())
                    .await
            }
        };
        match parsed {
            MinerRequest::Subscribe { .. } => {
                if self.prefix.is_none() {
                    let Some(prefix) = self.group.prefixes.lock().expect("prefix lock").allocate()
                    else {
                        tracing::error!("extranonce prefixes exhausted");
                        return self
                            .reply_err(&req.id, error_code::OTHER, "proxy full")
                            .await;
                    };
                    self.prefix = Some(prefix);
                    self.rolled = self
                        .group
                        .templates
                        .borrow()
                        .as_ref()
                        .map_or(self.group.space.rolled_bytes, |t| t.fold.rolled_bytes);
                }
                let prefix = self.prefix.expect("allocated");
                let session = hex::encode(prefix);
                self.reply_ok(
                    &req.id,
                    sv1::subscribe_result(&session, &prefix, self.rolled),
                )
                .await?;
                self.start_if_ready().await
            }
            MinerRequest::Authorize { username, password } => {
                match parse_username(&self.ctx.registry, self.ctx.network, &username) {
                    Ok(id) => {
                        if let Err(e) = self.ctx.announce_user(&id).await {
                            tracing::error!(error = %e, "outbox unavailable; refusing the miner for now");
                            return self
                                .reply_err(&req.id, error_code::OTHER, "proxy storage unavailable")
                                .await;
                        }
                        let opts = parse_password(&password);
                        if let Some(d) = opts.fixed_difficulty {
                            self.fixed = true;
                            self.vardiff.suggest(d, now_ms());
                        }
                        tracing::debug!(peer = %self.peer, user = %id.user, worker = %id.worker, "SV1 miner authorized");
                        self.identity = Some(Arc::new(id));
                        self.reply_ok(&req.id, json!(true)).await?;
                        self.start_if_ready().await
                    }
                    Err(e) => {
                        tracing::info!(peer = %self.peer, username = %username, reason = %e, "SV1 authorize refused");
                        self.reply_err(&req.id, error_code::UNAUTHORIZED, &e.to_string())
                            .await
                    }
                }
            }
            MinerRequest::Configure(c) => {
                let mut result = serde_json::Map::new();
                if c.extensions.iter().any(|e| e == "version-rolling") {
                    let requested = c.version_rolling_mask.unwrap_or(0xffff_ffff);
                    self.requested_mask = Some(requested);
                    let granted = requested & self.template_mask();
                    self.sent_mask = Some(granted);
                    result.insert("version-rolling".into(), json!(true));
                    result.insert(
                        "version-rolling.mask".into(),
                        json!(sv1::u32_to_hex(granted)),
                    );
                }
                if c.extensions.iter().any(|e| e == "minimum-difficulty") {
                    if let Some(d) = c.minimum_difficulty {
                        if !self.fixed && d > self.vardiff.difficulty() {
                            self.vardiff.suggest(d, now_ms());
                        }
                    }
                    result.insert("minimum-difficulty".into(), json!(true));
                }
                for ext in &c.extensions {
                    if ext != "version-rolling" && ext != "minimum-difficulty" {
                        result.insert(ext.clone(), json!(false));
                    }
                }
                self.reply_ok(&req.id, Value::Object(result)).await
            }
            MinerRequest::ExtranonceSubscribe => {
                self.xnsub = true;
                self.reply_ok(&req.id, json!(true)).await
            }
            MinerRequest::SuggestDifficulty(d) => {
                if !self.fixed {
                    let d = self.vardiff.suggest(d, now_ms());
                    if self.ready() {
                        self.reply_ok(&req.id, json!(true)).await?;
                        return self.difficulty_changed(d).await;
                    }
                }
                self.reply_ok(&req.id, json!(true)).await
            }
            MinerRequest::Submit(sub) => {
                let started = std::time::Instant::now();
                let answered = self.on_submit(&req.id, sub).await;
                self.ctx.counters.share_answer.record(started.elapsed());
                answered
            }
            MinerRequest::Unknown(m) => {
                tracing::debug!(peer = %self.peer, method = %m, "unknown SV1 method");
                self.reply_err(
                    &req.id,
                    error_code::OTHER,
                    &format!("unsupported method {m}"),
                )
                .await
            }
        }
    }

    fn template_mask(&self) -> u32 {
        self.group
            .templates
            .borrow()
            .as_ref()
            .map_or(0, |t| t.version_mask)
    }

    async fn start_if_ready(&mut self) -> std::io::Result<()> {
        if !self.ready() || self.current.is_some() {
            return Ok(());
        }
        let t = self.group.templates.borrow().clone();
        match t {
            Some(t) => self.send_job(t, true).await,
            None => Ok(()),
        }
    }

    async fn difficulty_changed(&mut self, _d: f64) -> std::io::Result<()> {
        // SV1 miners apply a new difficulty from the next job: re-send the current work.
        if let Some(t) = self.current.clone() {
            self.send_job(t, false).await?;
        }
        Ok(())
    }

    /// Sends a template as this miner's next job (with any difficulty, mask or extranonce
    /// change it needs first).
    async fn send_job(&mut self, t: Arc<JobTemplate>, force_clean: bool) -> std::io::Result<()> {
        let prefix_len = self.prefix.as_ref().map_or(0, |p| p.len());
        if t.fold.rolled_bytes != self.rolled {
            if self.xnsub {
                self.rolled = t.fold.rolled_bytes;
                let prefix = self.prefix.map(|p| p.to_vec()).unwrap_or_default();
                self.out.push_str(
                    &PoolMessage::SetExtranonce {
                        extranonce1: prefix,
                        extranonce2_size: self.rolled,
                    }
                    .to_line(),
                );
                self.ctx
                    .counters
                    .extranonce_resets
                    .fetch_add(1, Ordering::Relaxed);
                self.group
                    .switch
                    .lock()
                    .expect("switch lock")
                    .extranonce_resets += 1;
                tracing::info!(peer = %self.peer, rolled = self.rolled, "miner's extranonce space changed with the upstream: set_extranonce sent");
            } else {
                self.out.push_str(
                    &PoolMessage::Reconnect {
                        host: None,
                        port: None,
                        wait_secs: 0,
                    }
                    .to_line(),
                );
                self.ctx
                    .counters
                    .reconnects_sent
                    .fetch_add(1, Ordering::Relaxed);
                self.group.switch.lock().expect("switch lock").reconnects += 1;
                tracing::info!(peer = %self.peer, "miner cannot follow the new upstream's extranonce space without extranonce.subscribe: client.reconnect sent");
                self.closing = Some("asked to reconnect");
                return self.flush().await;
            }
        }
        if let Some(requested) = self.requested_mask {
            let mask = requested & t.version_mask;
            if self.sent_mask != Some(mask) {
                self.sent_mask = Some(mask);
                self.out
                    .push_str(&PoolMessage::SetVersionMask(mask).to_line());
            }
        }
        // Never harder than the work's share cap: a hash meeting the block target must reach us.
        let d = match t.share_cap() {
            Some(cap) => self
                .vardiff
                .difficulty()
                .min(cap.stratum_difficulty(t.algorithm)),
            None => self.vardiff.difficulty(),
        };
        if self.sent_difficulty != Some(d) {
            self.sent_difficulty = Some(d);
            self.out.push_str(&PoolMessage::SetDifficulty(d).to_line());
            if let Some(id) = &self.identity {
                self.ctx.set_worker_difficulty(id, d);
            }
        }
        let clean = force_clean
            || t.clean && self.current.as_ref().is_none_or(|c| c.seq != t.seq)
            || self.current.as_ref().is_none_or(|c| !t.continues(c));
        // The same id for every miner of the template (one serialized notify serves all); a
        // re-send of the same template (new difficulty) gets the next resend number.
        self.resends = match &self.current {
            Some(c) if c.seq == t.seq => self.resends + 1,
            _ => 0,
        };
        let id = t.job_id(self.resends);
        let mask = self.sent_mask.unwrap_or(0);
        let job = t.shared_job(
            id,
            prefix_len,
            t.fold.rolled_bytes,
            t.fold.pad,
            mask,
            share_target(d, t.algorithm),
        );
        self.book.add_tagged(job, t.clone(), clean, unix_now());
        // A share can only be admitted for a kept job: older templates' headers can go.
        if !self.accepted.is_empty() {
            let oldest = self.book.tags().map(|j| j.seq).min().unwrap_or(t.seq);
            self.accepted.retain(|_, seq| *seq >= oldest);
        }
        t.sv1_notify()
            .write_line(&mut self.out, &format!("{id:x}"), clean);
        let r = self.flush().await;
        if t.epoch != self.seen_epoch {
            self.seen_epoch = t.epoch;
            let mut timer = self.group.switch.lock().expect("switch lock");
            if let (Some(at), true) = (timer.commanded_at, timer.epoch == t.epoch) {
                timer.first_job_us.push(at.elapsed().as_micros() as u64);
            }
        }
        self.current = Some(t);
        r
    }

    async fn on_submit(&mut self, id: &Value, sub: Submit) -> std::io::Result<()> {
        let (Some(prefix), Some(identity)) = (self.prefix.as_deref(), self.identity.clone()) else {
            self.ctx.record_rejected(None, None, "unauthorized").await;
            return self
                .reply_err(id, error_code::UNAUTHORIZED, "Unauthorized worker")
                .await;
        };
        let Ok(job_id) = u64::from_str_radix(&sub.job_id, 16) else {
            self.ctx.record_rejected(None, None, "invalid-job-id").await;
            return self
                .reply_err(id, error_code::JOB_NOT_FOUND, "Job not found")
                .await;
        };
        let template = self.book.get(job_id).map(|(_, t)| t.clone());
        let mut extranonce = [0u8; 64];
        let en_len = prefix.len() + sub.extranonce2.len();
        if en_len > extranonce.len() {
            return self
                .reply_err(id, error_code::OTHER, "extranonce2 too long")
                .await;
        }
        extranonce[..prefix.len()].copy_from_slice(prefix);
        extranonce[prefix.len()..en_len].copy_from_slice(&sub.extranonce2);
        let submission = Submission {
            extranonce: &extranonce[..en_len],
            ntime: sub.ntime,
            nonce: sub.nonce,
            version: match sub.version_bits {
                Some(bits) => SubmittedVersion::RolledBits(bits),
                None => SubmittedVersion::Unrolled,
            },
        };
        let admitted = self.book.admit(job_id, &submission, unix_now());
        let (prepared, late) = match admitted {
            Ok(x) => x,
            Err(reject) => {
                self.ctx
                    .record_rejected(Some(&identity), template.as_deref(), reject.code())
                    .await;
                let (code, msg) = sv1_reject(&reject);
                return self.reply_err(id, code, &msg).await;
            }
        };
        let Some(template) = template else {
            return self
                .reply_err(id, error_code::JOB_NOT_FOUND, "Job not found")
                .await;
        };
        let share_target: Target = prepared.share_target;
        let header = prepared.header.serialize();
        if self.accepted.contains_key(&header) {
            self.ctx
                .record_rejected(Some(&identity), Some(&template), "duplicate-share")
                .await;
            return self
                .reply_err(id, error_code::DUPLICATE_SHARE, "Duplicate share")
                .await;
        }
        let checked = match self.ctx.verifier.judge(prepared).await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "share verification failed");
                return self
                    .reply_err(id, error_code::OTHER, "internal error")
                    .await;
            }
        };
        if checked.class == ShareClass::BelowTarget {
            self.ctx
                .record_rejected(Some(&identity), Some(&template), "difficulty-too-low")
                .await;
            return self
                .reply_err(id, error_code::LOW_DIFFICULTY, "Low difficulty share")
                .await;
        }
        forward(
            &template,
            &checked,
            &extranonce[..en_len],
            template.fold.pad,
            &identity,
        )
        .await;
        if let Err(e) = self
            .ctx
            .accept_share(&identity, &template, &checked, share_target.work(), late)
            .await
        {
            // Not durable, so not acknowledged: the miner's counter stays honest.
            tracing::error!(error = %e, "outbox write failed; share not acknowledged");
            return self
                .reply_err(id, error_code::OTHER, "share could not be stored; retry")
                .await;
        }
        self.accepted.insert(header, template.seq);
        self.reply_ok(id, json!(true)).await?;
        if !self.fixed {
            if let Some(d) = self.vardiff.record_share(now_ms()) {
                self.difficulty_changed(d).await?;
            }
        }
        Ok(())
    }
}
