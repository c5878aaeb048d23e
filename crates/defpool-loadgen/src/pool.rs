//! A test upstream pool: serves synthetic but valid work for one coin tag and checks every
//! share with the foundation's validation, counting accepted work.
//!
//! Work: a random previous-block hash, the very easy regtest `nBits`, a plausible coinbase whose
//! prefix carries `/coin:<TAG>/`, a merkle branch of 0..=2 random hashes, a new job every
//! `job_interval` (every 5th one clean / a new block).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use defpool_core::coin::Algorithm;
use defpool_core::hash::sha256d;
use defpool_core::share::{Job, JobBook, Reject, ShareClass, Submission, SubmittedVersion};
use defpool_core::work::{CompactTarget, Target};
use defpool_stratum::sv1::{
    self, error_code, parse_line, result_line, Incoming, LineReader, MinerRequest, Notify,
    PoolMessage,
};
use serde_json::{json, Value};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::{require_loopback, unix_now, LoadgenError, PoolOptions, PoolProtocol, PoolReport};

/// The version bits the test pool lets miners roll (BIP320's general-purpose bits).
pub const POOL_VERSION_MASK: u32 = 0x1fff_e000;

/// Regtest's `nBits`: a very easy network target.
pub const POOL_NBITS: u32 = 0x207f_ffff;

/// The reject reason of a share that misses its target (the SV2 error code).
pub(crate) const LOW_DIFFICULTY: &str = "difficulty-too-low";

/// How many jobs a connection keeps for late shares.
const JOBS_KEPT: usize = 8;

/// A job as the pool generated it, shared by every connection.
#[derive(Debug)]
pub(crate) struct PoolJob {
    /// Version mask [`POOL_VERSION_MASK`]; extranonce size = prefix + client part.
    pub job: Arc<Job>,
    pub clean: bool,
}

/// A small splitmix64 generator: synthetic work needs variety, not secrecy.
pub(crate) struct Rng(u64);

impl Rng {
    pub fn seeded() -> Rng {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x5eed);
        Rng(nanos ^ (std::process::id() as u64) << 32)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn hash(&mut self) -> [u8; 32] {
        sha256d(&self.next_u64().to_le_bytes())
    }
}

/// Coinbase prefix and suffix around `extranonce_size` bytes of extranonce: version, one input
/// spending nothing, a script of height + `/coin:<TAG>/` + the extranonce push; then sequence,
/// one P2PKH output and the lock time.
pub(crate) fn coinbase_parts(
    tag: &str,
    height: u32,
    extranonce_size: usize,
    rng: &mut Rng,
) -> (Vec<u8>, Vec<u8>) {
    let tag = format!("/coin:{tag}/");
    let mut script = vec![0x03];
    script.extend_from_slice(&height.to_le_bytes()[..3]);
    script.push(tag.len() as u8);
    script.extend_from_slice(tag.as_bytes());
    script.push(extranonce_size as u8);
    let script_len = script.len() + extranonce_size;
    let mut prefix = vec![1, 0, 0, 0, 1];
    prefix.extend_from_slice(&[0; 32]);
    prefix.extend_from_slice(&[0xff; 4]);
    prefix.push(script_len as u8);
    prefix.extend_from_slice(&script);
    let mut suffix = vec![0xff; 4];
    suffix.push(1);
    suffix.extend_from_slice(&5_000_000_000u64.to_le_bytes());
    suffix.extend_from_slice(&[25, 0x76, 0xa9, 0x14]);
    suffix.extend_from_slice(&rng.hash()[..20]);
    suffix.extend_from_slice(&[0x88, 0xac]);
    suffix.extend_from_slice(&[0; 4]);
    (prefix, suffix)
}

/// The job generator's state.
pub(crate) struct JobMaker {
    tag: String,
    algorithm: Algorithm,
    extranonce_size: usize,
    share_target: Target,
    nbits: u32,
    block_target: Target,
    rng: Rng,
    seq: u64,
    height: u32,
    prev_hash: [u8; 32],
}

impl JobMaker {
    pub fn new(opts: &PoolOptions, share_target: Target) -> JobMaker {
        let mut rng = Rng::seeded();
        JobMaker {
            tag: opts.coin_tag.clone(),
            algorithm: opts.algorithm,
            extranonce_size: opts.extranonce1_size + opts.extranonce2_size,
            share_target,
            nbits: opts.nbits,
            block_target: {
                let network = CompactTarget(opts.nbits)
                    .to_target()
                    .expect("nbits checked by validate");
                match opts.block_difficulty.and_then(Target::from_difficulty) {
                    Some(stricter) => stricter.harder(network),
                    None => network,
                }
            },
            prev_hash: rng.hash(),
            rng,
            seq: 0,
            height: 100,
        }
    }

    pub fn next_job(&mut self) -> PoolJob {
        let clean = self.seq.is_multiple_of(5);
        if clean && self.seq > 0 {
            self.prev_hash = self.rng.hash();
            self.height += 1;
        }
        self.seq += 1;
        let (prefix, suffix) =
            coinbase_parts(&self.tag, self.height, self.extranonce_size, &mut self.rng);
        let branch = (0..self.seq % 3).map(|_| self.rng.hash()).collect();
        let job = Job {
            id: self.seq,
            algorithm: self.algorithm,
            version: 0x2000_0000,
            version_mask: POOL_VERSION_MASK,
            prev_hash: self.prev_hash,
            coinbase_prefix: prefix,
            coinbase_suffix: suffix,
            extranonce_size: self.extranonce_size,
            merkle_branch: branch,
            nbits: self.nbits,
            ntime: unix_now(),
            share_target: self.share_target,
            block_target: self.block_target,
        };
        PoolJob {
            job: Arc::new(job),
            clean,
        }
    }
}

/// Counters shared by the connections.
pub(crate) struct PoolState {
    pub opts: PoolOptions,
    pub local_addr: SocketAddr,
    pub started: Instant,
    pub share_target: Target,
    pub report: Mutex<PoolReport>,
    pub jobs: watch::Receiver<Option<Arc<PoolJob>>>,
    next_extranonce1: AtomicU32,
}

/// Why a share was refused: the SV1 error and the counter's key.
pub(crate) struct Refusal {
    pub code: i64,
    pub message: String,
    pub reason: &'static str,
}

impl Refusal {
    fn new(code: i64, message: impl Into<String>, reason: &'static str) -> Refusal {
        Refusal {
            code,
            message: message.into(),
            reason,
        }
    }

    pub fn from_reject(r: &Reject) -> Refusal {
        match r {
            Reject::UnknownJob(_) => {
                Refusal::new(error_code::JOB_NOT_FOUND, "Job not found", r.code())
            }
            Reject::StaleJob(_) => Refusal::new(error_code::JOB_NOT_FOUND, "Stale share", r.code()),
            Reject::Duplicate => {
                Refusal::new(error_code::DUPLICATE_SHARE, "Duplicate share", r.code())
            }
            other => Refusal::new(error_code::OTHER, other.to_string(), other.code()),
        }
    }

    pub fn low_difficulty() -> Refusal {
        Refusal::new(
            error_code::LOW_DIFFICULTY,
            "Low difficulty share",
            LOW_DIFFICULTY,
        )
    }
}

impl PoolState {
    pub fn extranonce_prefix(&self) -> Vec<u8> {
        let n = self.next_extranonce1.fetch_add(1, Ordering::Relaxed);
        let size = self.opts.extranonce1_size;
        let bytes = n.to_be_bytes();
        (0..size)
            .map(|i| {
                let from_end = size - 1 - i;
                if from_end < 4 {
                    bytes[3 - from_end]
                } else {
                    0
                }
            })
            .collect()
    }

    pub fn connection_opened(&self) {
        let mut r = self.report.lock().expect("pool stats lock");
        r.connections += 1;
        r.connections_open += 1;
    }

    pub fn connection_closed(&self) {
        let mut r = self.report.lock().expect("pool stats lock");
        r.connections_open = r.connections_open.saturating_sub(1);
    }

    pub fn accepted(&self, work: u128) {
        let mut r = self.report.lock().expect("pool stats lock");
        r.shares_accepted += 1;
        r.accepted_work += work;
        *r.accepted_work_by_coin
            .entry(self.opts.coin_tag.clone())
            .or_default() += work;
    }

    pub fn rejected(&self, reason: &str) {
        let mut r = self.report.lock().expect("pool stats lock");
        r.shares_rejected += 1;
        *r.shares_rejected_by_reason
            .entry(reason.to_string())
            .or_default() += 1;
    }

    /// Check a submission against a connection's jobs: the credited work, or why not.
    pub fn check(
        &self,
        book: &mut JobBook,
        job_id: u64,
        sub: &Submission<'_>,
    ) -> Result<u128, Refusal> {
        let now = unix_now();
        let (prepared, _late) = book
            .admit(job_id, sub, now)
            .map_err(|r| Refusal::from_reject(&r))?;
        let checked = prepared.judge();
        match checked.class {
            ShareClass::BelowTarget => Err(Refusal::low_difficulty()),
            ShareClass::Share | ShareClass::BlockCandidate => Ok(checked.work),
        }
    }

    pub fn snapshot(&self) -> PoolReport {
        let mut r = self.report.lock().expect("pool stats lock").clone();
        r.uptime_secs = self.started.elapsed().as_secs_f64();
        r
    }
}

/// A bound test pool: read its address, then run it.
pub struct TestPool {
    listener: TcpListener,
    state: Arc<PoolState>,
    jobs_tx: watch::Sender<Option<Arc<PoolJob>>>,
    maker: JobMaker,
    authority: Option<crate::pool_sv2::Authority>,
}

fn validate(opts: &PoolOptions) -> Result<Target, LoadgenError> {
    require_loopback("pool listen address", opts.listen)?;
    let tag_ok = !opts.coin_tag.is_empty()
        && opts.coin_tag.len() <= 16
        && opts
            .coin_tag
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/');
    if !tag_ok {
        return Err(LoadgenError::option(
            "coin_tag",
            "1..=16 printable ASCII characters without '/'",
        ));
    }
    if opts.extranonce1_size > 16 || opts.extranonce1_size + opts.extranonce2_size > 32 {
        return Err(LoadgenError::option(
            "extranonce sizes",
            "extranonce1 at most 16 bytes, both together at most 32",
        ));
    }
    if opts.job_interval < Duration::from_millis(10) {
        return Err(LoadgenError::option("job_interval", "at least 10 ms"));
    }
    if opts
        .block_difficulty
        .is_some_and(|d| Target::from_difficulty(d).is_none())
    {
        return Err(LoadgenError::option(
            "block_difficulty",
            "must be a positive number",
        ));
    }
    if CompactTarget(opts.nbits).to_target().is_none() {
        return Err(LoadgenError::option(
            "nbits",
            format!("{:#010x} is not a valid compact target", opts.nbits),
        ));
    }
    Target::from_stratum_difficulty(opts.difficulty, opts.algorithm)
        .ok_or_else(|| LoadgenError::option("difficulty", "must be a positive number"))
}

impl TestPool {
    pub async fn bind(opts: PoolOptions) -> Result<TestPool, LoadgenError> {
        let share_target = validate(&opts)?;
        // A test pool serves as many connections as the miners open.
        if let Err(e) = crate::raise_fd_limit(20_000) {
            tracing::warn!(error = %e, "test pool: could not raise the file-descriptor limit");
        }
        let authority = match opts.protocol {
            PoolProtocol::Sv1 => None,
            PoolProtocol::Sv2 => Some(crate::pool_sv2::Authority::new(&opts)?),
        };
        let listener = TcpListener::bind(opts.listen)
            .await
            .map_err(|e| LoadgenError::io(format!("binding {}", opts.listen), e))?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| LoadgenError::io("reading the bound address", e))?;
        let mut maker = JobMaker::new(&opts, share_target);
        let first = Arc::new(maker.next_job());
        let (jobs_tx, jobs) = watch::channel(Some(first));
        let report = PoolReport {
            protocol: Some(opts.protocol),
            coin_tag: opts.coin_tag.clone(),
            listen: local_addr.to_string(),
            authority_public_key: authority.as_ref().map(|a| a.public_key()),
            jobs: 1,
            ..PoolReport::default()
        };
        let state = Arc::new(PoolState {
            opts,
            local_addr,
            started: Instant::now(),
            share_target,
            report: Mutex::new(report),
            jobs,
            next_extranonce1: AtomicU32::new(1),
        });
        Ok(TestPool {
            listener,
            state,
            jobs_tx,
            maker,
            authority,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.state.local_addr
    }

    /// SV2: the authority public key (base58) clients must expect.
    pub fn authority_public_key(&self) -> Option<String> {
        self.state
            .report
            .lock()
            .expect("pool stats lock")
            .authority_public_key
            .clone()
    }

    /// A handle to read the live report.
    pub fn stats(&self) -> PoolStats {
        PoolStats(self.state.clone())
    }

    /// Serve until `shutdown` completes; the final report.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<PoolReport, LoadgenError> {
        let TestPool {
            listener,
            state,
            jobs_tx,
            mut maker,
            authority,
        } = self;
        tracing::info!(
            listen = %state.local_addr,
            protocol = ?state.opts.protocol,
            coin = %state.opts.coin_tag,
            authority_public_key = authority.as_ref().map(|a| a.public_key()).unwrap_or_default(),
            "test pool listening"
        );
        let mut conns = JoinSet::new();
        let mut job_timer = tokio::time::interval(state.opts.job_interval);
        job_timer.reset();
        let mut stats_timer = tokio::time::interval(Duration::from_secs(1));
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let _ = stream.set_nodelay(true);
                        let state = state.clone();
                        match &authority {
                            None => conns.spawn(sv1_connection(stream, state)),
                            Some(a) => conns.spawn(crate::pool_sv2::connection(stream, state, a.clone())),
                        };
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "test pool: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                _ = job_timer.tick() => {
                    let job = Arc::new(maker.next_job());
                    state.report.lock().expect("pool stats lock").jobs += 1;
                    jobs_tx.send_replace(Some(job));
                }
                _ = stats_timer.tick() => write_stats(&state).await,
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
        conns.shutdown().await;
        write_stats(&state).await;
        Ok(state.snapshot())
    }
}

/// Live view of a running pool's report.
#[derive(Clone)]
pub struct PoolStats(Arc<PoolState>);

impl PoolStats {
    pub fn report(&self) -> PoolReport {
        self.0.snapshot()
    }
}

async fn write_stats(state: &PoolState) {
    let Some(path) = &state.opts.stats_path else {
        return;
    };
    let json = match serde_json::to_vec_pretty(&state.snapshot()) {
        Ok(j) => j,
        Err(e) => {
            tracing::warn!(error = %e, "test pool: stats not serializable");
            return;
        }
    };
    let mut tmp = path.clone().into_os_string();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let result = async {
        tokio::fs::write(&tmp, &json).await?;
        tokio::fs::rename(&tmp, path).await
    }
    .await;
    if let Err(e) = result {
        tracing::warn!(error = %e, path = %path.display(), "test pool: writing stats failed");
    }
}

/// Serve until `shutdown` completes.
pub async fn run_pool(
    opts: PoolOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<PoolReport, LoadgenError> {
    TestPool::bind(opts).await?.run(shutdown).await
}

// ---------------------------------------------------------------------------------------------
// SV1

struct Sv1Conn {
    state: Arc<PoolState>,
    extranonce1: Vec<u8>,
    subscribed: bool,
    authorized: bool,
    /// Granted version-rolling mask (0 = none).
    mask: u32,
    book: JobBook,
    /// Subscribed and authorized: jobs flow.
    sending: bool,
}

fn notify_of(job: &Job, clean: bool) -> String {
    PoolMessage::Notify(Notify {
        job_id: format!("{:x}", job.id),
        prev_hash: job.prev_hash,
        coinbase1: job.coinbase_prefix.clone(),
        coinbase2: job.coinbase_suffix.clone(),
        merkle_branch: job.merkle_branch.clone(),
        version: job.version,
        nbits: job.nbits,
        ntime: job.ntime,
        clean_jobs: clean,
    })
    .to_line()
}

impl Sv1Conn {
    /// The job for this connection (its version mask), recorded in its book; the notify line.
    fn take_job(&mut self, pj: &PoolJob, clean: bool) -> String {
        let job = if self.mask == pj.job.version_mask {
            pj.job.clone()
        } else {
            Arc::new(Job {
                version_mask: self.mask,
                ..(*pj.job).clone()
            })
        };
        let line = notify_of(&job, clean);
        self.book.add(job, clean, unix_now());
        line
    }

    /// Answer one request into `out`.
    fn handle(&mut self, req: sv1::Request, out: &mut String) {
        let id = req.id.clone();
        let parsed = match MinerRequest::parse(&req) {
            Ok(p) => p,
            Err(e) => {
                if req.method == "mining.submit" {
                    self.state.rejected("malformed");
                }
                out.push_str(&sv1::error_line(&id, error_code::OTHER, &e.to_string()));
                return;
            }
        };
        match parsed {
            MinerRequest::Subscribe { .. } => {
                self.subscribed = true;
                out.push_str(&result_line(
                    &id,
                    sv1::subscribe_result(
                        &hex::encode(&self.extranonce1),
                        &self.extranonce1,
                        self.state.opts.extranonce2_size,
                    ),
                ));
            }
            MinerRequest::Authorize { .. } => {
                self.authorized = true;
                out.push_str(&result_line(&id, Value::Bool(true)));
            }
            MinerRequest::Configure(c) => {
                if self.state.opts.ignore_configure {
                    out.push_str(&sv1::error_line(&id, error_code::OTHER, "unsupported"));
                    return;
                }
                let mut result = serde_json::Map::new();
                if c.extensions.iter().any(|e| e == "version-rolling") {
                    let requested = c.version_rolling_mask.unwrap_or(u32::MAX);
                    self.mask = POOL_VERSION_MASK & requested;
                    result.insert("version-rolling".into(), json!(self.mask != 0));
                    result.insert(
                        "version-rolling.mask".into(),
                        json!(sv1::u32_to_hex(self.mask)),
                    );
                }
                for other in c.extensions.iter().filter(|e| *e != "version-rolling") {
                    result.insert(other.clone(), json!(false));
                }
                out.push_str(&result_line(&id, Value::Object(result)));
            }
            MinerRequest::ExtranonceSubscribe => {
                out.push_str(&result_line(&id, Value::Bool(true)));
            }
            MinerRequest::SuggestDifficulty(_) => {
                out.push_str(&result_line(&id, Value::Bool(true)));
            }
            MinerRequest::Submit(s) => {
                let result = if !self.authorized || !self.subscribed {
                    Err(Refusal::new(
                        error_code::UNAUTHORIZED,
                        "Unauthorized worker",
                        "unauthorized",
                    ))
                } else {
                    match u64::from_str_radix(&s.job_id, 16) {
                        Err(_) => Err(Refusal::from_reject(&Reject::UnknownJob(0))),
                        Ok(job_id) => {
                            let mut extranonce = [0u8; 64];
                            let n1 = self.extranonce1.len();
                            let n = n1 + s.extranonce2.len();
                            if n > 32 {
                                Err(Refusal::from_reject(&Reject::BadExtranonceSize {
                                    expected: n1 + self.state.opts.extranonce2_size,
                                    got: n,
                                }))
                            } else {
                                extranonce[..n1].copy_from_slice(&self.extranonce1);
                                extranonce[n1..n].copy_from_slice(&s.extranonce2);
                                let sub = Submission {
                                    extranonce: &extranonce[..n],
                                    ntime: s.ntime,
                                    nonce: s.nonce,
                                    version: match s.version_bits {
                                        Some(bits) => SubmittedVersion::RolledBits(bits),
                                        None => SubmittedVersion::Unrolled,
                                    },
                                };
                                self.state.check(&mut self.book, job_id, &sub)
                            }
                        }
                    }
                };
                match result {
                    Ok(work) => {
                        self.state.accepted(work);
                        out.push_str(&result_line(&id, Value::Bool(true)));
                    }
                    Err(r) => {
                        self.state.rejected(r.reason);
                        out.push_str(&sv1::error_line(&id, r.code, &r.message));
                    }
                }
            }
            MinerRequest::Unknown(m) => {
                out.push_str(&sv1::error_line(
                    &id,
                    error_code::OTHER,
                    &format!("unsupported method {m}"),
                ));
            }
        }
    }
}

async fn sv1_connection(stream: TcpStream, state: Arc<PoolState>) {
    state.connection_opened();
    let peer = stream.peer_addr().ok();
    if let Err(reason) = sv1_serve(stream, state.clone()).await {
        tracing::debug!(?peer, %reason, "test pool: SV1 connection closed");
    }
    state.connection_closed();
}

async fn sv1_serve(stream: TcpStream, state: Arc<PoolState>) -> Result<(), String> {
    let (rd, mut wr) = stream.into_split();
    let mut reader = LineReader::new(BufReader::with_capacity(4096, rd), sv1::DEFAULT_MAX_LINE);
    let mut jobs = state.jobs.clone();
    let mut conn = Sv1Conn {
        extranonce1: state.extranonce_prefix(),
        state,
        subscribed: false,
        authorized: false,
        mask: 0,
        book: JobBook::new(0, JOBS_KEPT),
        sending: false,
    };
    let mut out = String::with_capacity(1024);
    loop {
        tokio::select! {
            line = async { reader.next_line().await.map(|l| l.map(parse_line)) } => {
                let incoming = match line {
                    Ok(Some(Ok(i))) => i,
                    Ok(Some(Err(e))) => {
                        // Unparseable JSON is a protocol violation: say why, then close.
                        let _ = wr.write_all(sv1::error_line(&Value::Null, error_code::OTHER, &e.to_string()).as_bytes()).await;
                        return Err(e.to_string());
                    }
                    Ok(None) => return Ok(()),
                    Err(e) => return Err(e.to_string()),
                };
                let Incoming::Request(req) = incoming else { continue };
                conn.handle(req, &mut out);
                if !conn.sending && conn.subscribed && conn.authorized {
                    conn.sending = true;
                    let current = jobs.borrow_and_update().clone();
                    out.push_str(&PoolMessage::SetDifficulty(conn.state.opts.difficulty).to_line());
                    if let Some(pj) = current {
                        let line = conn.take_job(&pj, true);
                        out.push_str(&line);
                    }
                }
            }
            changed = jobs.changed(), if conn.sending => {
                if changed.is_err() {
                    return Ok(());
                }
                let current = jobs.borrow_and_update().clone();
                if let Some(pj) = current {
                    let line = conn.take_job(&pj, pj.clean);
                    out.push_str(&line);
                }
            }
        }
        if !out.is_empty() {
            wr.write_all(out.as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            out.clear();
        }
    }
}
