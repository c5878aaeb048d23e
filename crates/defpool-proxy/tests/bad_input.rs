//! Bad input against one in-process proxy (issue 5, "Bad input"): malformed SV1 JSON, unknown
//! methods, oversized lines and frames, a garbage Noise handshake, SV1 on the SV2 port, invalid
//! payout addresses and users, unknown job and channel ids, duplicate shares, ntime out of
//! range, version bits outside the mask, low-difficulty shares and a share flood; and an SV2
//! upstream with the wrong authority key listed before a good SV1 upstream.
//!
//! Each case checks the exact protocol answer and whether the connection stays open. Two
//! well-behaved miners (loadgen, SV1 and SV2 standard) mine throughout and must keep getting
//! shares accepted with no reject and no disconnect; at the end the proxy thread is still
//! running and a fresh miner still mines.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use defpool_core::hash::{pow_hash, sha256d};
use defpool_core::header::Header;
use defpool_core::merkle::fold_branch;
use defpool_core::{Algorithm, CompactTarget, Target};
use defpool_loadgen::{MinerKind, MinersOptions, PoolOptions, PoolProtocol, TestPool};
use defpool_proxy::proxy::{self, Started};
use defpool_stratum::sv1::{self, Incoming, Notify, PoolMessage, Response};
use defpool_stratum::sv2::{self, AuthorityPublicKey, FrameLimits, Message, Protocol, Sv2Error};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

const TOKEN: &str = "test-admin-token-0123456789";
/// A valid regtest payout address.
const ADDRESS: &str = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080";
/// The same key hash as a mainnet address: valid bech32, wrong network.
const MAINNET_ADDRESS: &str = "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4";
/// [`ADDRESS`] with its last character changed: the checksum fails.
const TYPO_ADDRESS: &str = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt081";
/// The proxy's SV2 authority key pair (and the SV2 test pool's: the proxy expects another).
const PUBLIC_KEY: &str = "9aubsUESvSxGovf93cGCKXsAQwoPGz8JAqLVH36e9wcGa1rPWQB";
const SECRET_KEY: &str = "2Xifp7Jz6CPcphddKSKA9Pqga5mfk82powffv1mRkX1ijdETes";
/// A valid key that did not sign the SV2 test pool's certificate.
const OTHER_PUBLIC_KEY: &str = "9biV8JrgZHbxDZnvN8ysxQ6qJHiFd6ZNFGb73FXB91epVFMbeAs";
/// Both miners' ports refuse lines / frames above this.
const MAX_MESSAGE: usize = 4096;
const DIFFICULTY: f64 = 0.000001;
const IO_TIMEOUT: Duration = Duration::from_secs(5);

fn free_port() -> u16 {
    defpool_loadgen::free_loopback_port().unwrap()
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("defpool-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Awaits `fut`, failing the test after `limit`.
async fn within<T>(what: &str, limit: Duration, fut: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {limit:?}: {what}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Admin endpoint

async fn get_status(admin: SocketAddr) -> Value {
    within("GET /status", IO_TIMEOUT, async {
        let mut s = TcpStream::connect(admin).await.unwrap();
        s.write_all(b"GET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        let body = &out[out.find("\r\n\r\n").expect("HTTP header") + 4..];
        let (start, end) = (body.find('{').unwrap(), body.rfind('}').unwrap());
        serde_json::from_str(&body[start..=end]).unwrap()
    })
    .await
}

/// Accepted shares of one worker of [`ADDRESS`] as the proxy counts them.
async fn worker_accepted(admin: SocketAddr, worker: &str) -> u64 {
    let status = get_status(admin).await;
    status["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["user"] == ADDRESS && w["worker"] == worker)
        .and_then(|w| w["stats"]["accepted_shares"].as_u64())
        .unwrap_or(0)
}

/// Waits (bounded) until `worker` has more accepted shares than `before`; returns the count.
async fn accepted_grows(admin: SocketAddr, worker: &str, before: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = worker_accepted(admin, worker).await;
        if now > before {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "well-behaved miner {worker} got no share accepted for 5 s (stuck at {now})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// A raw SV1 client

/// Whether `header` is a share (`meets`) or clearly not one. A hash that misses the share
/// target but meets the network target is a block candidate, which the proxy accepts; with
/// regtest's `nbits` that is half of all hashes, so "below target" must miss both.
fn judged(header: &[u8; 80], share: Target, nbits: u32, meets: bool) -> bool {
    let hash = pow_hash(Algorithm::Sha256d, header);
    let block = CompactTarget(nbits)
        .to_target()
        .unwrap_or_else(Target::diff1);
    if meets {
        share.is_met_by(&hash)
    } else {
        !share.is_met_by(&hash) && !block.is_met_by(&hash)
    }
}

#[derive(Clone, Debug)]
struct Sv1Job {
    notify: Notify,
    target: Target,
}

struct Sv1Client {
    lines: Lines<BufReader<OwnedReadHalf>>,
    write: OwnedWriteHalf,
    next_id: u64,
    extranonce1: Vec<u8>,
    extranonce2_size: usize,
    difficulty: f64,
    job: Option<Sv1Job>,
}

/// The `[code, message, null]` of an error response.
fn error_of(r: &Response) -> Option<(i64, String)> {
    let e = r.error.as_array()?;
    Some((e.first()?.as_i64()?, e.get(1)?.as_str()?.to_string()))
}

impl Sv1Client {
    async fn connect(port: SocketAddr) -> Sv1Client {
        let stream = within("SV1 connect", IO_TIMEOUT, TcpStream::connect(port))
            .await
            .unwrap();
        let (read, write) = stream.into_split();
        Sv1Client {
            lines: BufReader::new(read).lines(),
            write,
            next_id: 1,
            extranonce1: Vec::new(),
            extranonce2_size: 0,
            difficulty: 1.0,
            job: None,
        }
    }

    async fn send_raw(&mut self, bytes: &[u8]) {
        within("SV1 write", IO_TIMEOUT, self.write.write_all(bytes))
            .await
            .unwrap();
    }

    async fn request(&mut self, method: &str, params: Value) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let mut line = json!({"id": id, "method": method, "params": params}).to_string();
        line.push('\n');
        self.send_raw(line.as_bytes()).await;
        id
    }

    fn on_notification(&mut self, req: &sv1::Request) {
        match PoolMessage::parse(req).expect("the proxy's notifications parse") {
            PoolMessage::SetDifficulty(d) => self.difficulty = d,
            PoolMessage::Notify(n) => {
                let target = Target::from_stratum_difficulty(self.difficulty, Algorithm::Sha256d)
                    .expect("a valid difficulty");
                self.job = Some(Sv1Job { notify: n, target });
            }
            other => panic!("unexpected notification {other:?}"),
        }
    }

    /// The next line, parsed; `None` at end of stream.
    async fn next(&mut self) -> Option<Incoming> {
        let line = within("an SV1 line", IO_TIMEOUT, self.lines.next_line())
            .await
            .expect("SV1 read")?;
        Some(sv1::parse_line(line.as_bytes()).expect("the proxy writes valid JSON-RPC"))
    }

    /// Reads until the response to `id`, applying notifications on the way.
    async fn response(&mut self, id: u64) -> Response {
        loop {
            match self.next().await {
                Some(Incoming::Response(r)) if r.id == json!(id) => return r,
                Some(Incoming::Response(r)) => panic!("response to another id: {r:?}"),
                Some(Incoming::Request(req)) => self.on_notification(&req),
                None => panic!("connection closed while waiting for the response to {id}"),
            }
        }
    }

    async fn call(&mut self, method: &str, params: Value) -> Response {
        let id = self.request(method, params).await;
        self.response(id).await
    }

    /// Whether the proxy closes the connection within `limit` (lines before EOF are ignored).
    async fn closed_within(&mut self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.next_line()).await {
                Err(_) => return false,
                Ok(Ok(Some(_))) => continue,
                Ok(Ok(None)) | Ok(Err(_)) => return true,
            }
        }
    }

    async fn subscribe(&mut self) {
        let r = self
            .call("mining.subscribe", json!(["bad-input-test/1.0"]))
            .await;
        let (en1, size) = sv1::parse_subscribe_result(&r.result).expect("subscribe result");
        self.extranonce1 = en1;
        self.extranonce2_size = size;
    }

    async fn wait_job(&mut self) -> Sv1Job {
        while self.job.is_none() {
            match self.next().await {
                Some(Incoming::Request(req)) => self.on_notification(&req),
                other => panic!("expected a job, got {other:?}"),
            }
        }
        self.job.clone().unwrap()
    }

    /// subscribe + authorize with a fixed difficulty, then the first job.
    async fn ready(port: SocketAddr, worker: &str) -> Sv1Client {
        let mut c = Sv1Client::connect(port).await;
        c.subscribe().await;
        let r = c
            .call(
                "mining.authorize",
                json!([format!("{ADDRESS}.{worker}"), format!("d={DIFFICULTY}")]),
            )
            .await;
        assert_eq!(r.result, json!(true), "{r:?}");
        c.wait_job().await;
        c
    }

    fn header(&self, job: &Sv1Job, extranonce2: &[u8], nonce: u32) -> [u8; 80] {
        let n = &job.notify;
        let mut coinbase = n.coinbase1.clone();
        coinbase.extend_from_slice(&self.extranonce1);
        coinbase.extend_from_slice(extranonce2);
        coinbase.extend_from_slice(&n.coinbase2);
        Header {
            version: n.version,
            prev_hash: n.prev_hash,
            merkle_root: fold_branch(sha256d(&coinbase), &n.merkle_branch),
            ntime: n.ntime,
            nbits: n.nbits,
            nonce,
        }
        .serialize()
    }

    /// The first nonce from `start` whose hash meets (or, with `meets: false`, misses) the
    /// job's share target.
    fn find_nonce(&self, job: &Sv1Job, extranonce2: &[u8], start: u32, meets: bool) -> u32 {
        let mut header = self.header(job, extranonce2, 0);
        for nonce in start..start.saturating_add(2_000_000) {
            header[76..80].copy_from_slice(&nonce.to_le_bytes());
            if judged(&header, job.target, job.notify.nbits, meets) {
                return nonce;
            }
        }
        panic!("no suitable nonce found");
    }

    async fn submit(
        &mut self,
        job_id: &str,
        extranonce2: &[u8],
        ntime: u32,
        nonce: u32,
        version_bits: Option<u32>,
    ) -> Response {
        let mut params = vec![
            json!(format!("{ADDRESS}.raw")),
            json!(job_id),
            json!(hex::encode(extranonce2)),
            json!(sv1::u32_to_hex(ntime)),
            json!(sv1::u32_to_hex(nonce)),
        ];
        if let Some(v) = version_bits {
            params.push(json!(sv1::u32_to_hex(v)));
        }
        self.call("mining.submit", Value::Array(params)).await
    }

    /// Solves the current job with `extranonce2` and submits it; the job, nonce and answer.
    async fn solve_and_submit(&mut self, extranonce2: &[u8]) -> (Sv1Job, u32, Response) {
        let job = self.job.clone().expect("a job");
        let nonce = self.find_nonce(&job, extranonce2, 0, true);
        let r = self
            .submit(
                &job.notify.job_id,
                extranonce2,
                job.notify.ntime,
                nonce,
                None,
            )
            .await;
        (job, nonce, r)
    }
}

#[track_caller]
fn assert_error(r: &Response, code: i64, text: &str) -> String {
    let (got, message) = error_of(r).unwrap_or_else(|| panic!("expected error {code}: {r:?}"));
    assert_eq!(got, code, "{r:?}");
    assert!(
        message.to_lowercase().contains(&text.to_lowercase()),
        "error message {message:?} lacks {text:?}"
    );
    assert_eq!(r.result, Value::Null, "{r:?}");
    message
}

// ---------------------------------------------------------------------------------------------
// A raw SV2 client (standard channel)

#[derive(Clone, Copy, Debug)]
struct Sv2Job {
    job_id: u32,
    version: u32,
    merkle_root: [u8; 32],
    ntime: u32,
    target: Target,
}

struct Sv2Client {
    conn: sv2::Sv2Connection,
    target: Target,
    prev_hash: [u8; 32],
    nbits: u32,
    /// Future jobs (no ntime yet) by id, with the target in force when they came.
    future: Vec<(u32, u32, [u8; 32], Target)>,
    job: Option<Sv2Job>,
}

async fn sv2_connect(port: SocketAddr) -> sv2::Sv2Connection {
    let stream = within("SV2 connect", IO_TIMEOUT, TcpStream::connect(port))
        .await
        .unwrap();
    let key = AuthorityPublicKey::from_base58(PUBLIC_KEY).unwrap();
    within(
        "SV2 handshake",
        IO_TIMEOUT,
        sv2::connect(stream, Some(&key), FrameLimits::default()),
    )
    .await
    .expect("SV2 handshake")
}

impl Sv2Client {
    /// Handshake and SetupConnection (no channel yet).
    async fn setup(port: SocketAddr) -> Sv2Client {
        let mut conn = sv2_connect(port).await;
        conn.send(&Message::SetupConnection {
            protocol: Protocol::Mining,
            min_version: 2,
            max_version: 2,
            flags: 0,
            endpoint_host: "127.0.0.1".into(),
            endpoint_port: port.port(),
            vendor: "bad-input-test".into(),
            hardware_version: "0".into(),
            firmware: "0".into(),
            device_id: "raw".into(),
        })
        .await
        .unwrap();
        let mut c = Sv2Client {
            conn,
            target: Target::from_le_bytes([0; 32]),
            prev_hash: [0; 32],
            nbits: 0,
            future: Vec::new(),
            job: None,
        };
        match c.recv().await {
            Message::SetupConnectionSuccess { .. } => {}
            other => panic!("expected SetupConnection.Success, got {other:?}"),
        }
        c
    }

    async fn recv(&mut self) -> Message {
        let m = within("an SV2 message", IO_TIMEOUT, self.conn.recv())
            .await
            .expect("SV2 read");
        match &m {
            Message::SetTarget { maximum_target, .. } => {
                self.target = Target::from_le_bytes(*maximum_target)
            }
            Message::OpenStandardMiningChannelSuccess { target, .. } => {
                self.target = Target::from_le_bytes(*target)
            }
            Message::NewMiningJob {
                job_id,
                min_ntime,
                version,
                merkle_root,
                ..
            } => match min_ntime {
                Some(ntime) => {
                    self.job = Some(Sv2Job {
                        job_id: *job_id,
                        version: *version,
                        merkle_root: *merkle_root,
                        ntime: *ntime,
                        target: self.target,
                    })
                }
                None => self
                    .future
                    .push((*job_id, *version, *merkle_root, self.target)),
            },
            Message::SetNewPrevHash {
                job_id,
                prev_hash,
                min_ntime,
                nbits,
                ..
            } => {
                self.prev_hash = *prev_hash;
                self.nbits = *nbits;
                let (_, version, root, target) = *self
                    .future
                    .iter()
                    .find(|f| f.0 == *job_id)
                    .expect("SetNewPrevHash names a future job");
                self.future.clear();
                self.job = Some(Sv2Job {
                    job_id: *job_id,
                    version,
                    merkle_root: root,
                    ntime: *min_ntime,
                    target,
                });
            }
            _ => {}
        }
        m
    }

    /// Reads until a message `pick` accepts, applying job updates on the way.
    async fn until<T>(&mut self, mut pick: impl FnMut(&Message) -> Option<T>) -> T {
        loop {
            let m = self.recv().await;
            if let Some(v) = pick(&m) {
                return v;
            }
        }
    }

    async fn open(&mut self, request_id: u32, user: &str) -> Message {
        self.conn
            .send(&Message::OpenStandardMiningChannel {
                request_id,
                user_identity: user.into(),
                nominal_hash_rate: 0.0,
                max_target: [0xff; 32],
            })
            .await
            .unwrap();
        self.until(|m| match m {
            Message::OpenStandardMiningChannelSuccess { .. }
            | Message::OpenMiningChannelError { .. } => Some(m.clone()),
            _ => None,
        })
        .await
    }

    async fn wait_job(&mut self) -> Sv2Job {
        while self.job.is_none() {
            self.recv().await;
        }
        self.job.unwrap()
    }

    fn find_nonce(&self, job: &Sv2Job, start: u32, meets: bool) -> u32 {
        let mut header = Header {
            version: job.version,
            prev_hash: self.prev_hash,
            merkle_root: job.merkle_root,
            ntime: job.ntime,
            nbits: self.nbits,
            nonce: 0,
        }
        .serialize();
        for nonce in start..start.saturating_add(2_000_000) {
            header[76..80].copy_from_slice(&nonce.to_le_bytes());
            if judged(&header, job.target, self.nbits, meets) {
                return nonce;
            }
        }
        panic!("no suitable nonce found");
    }

    /// Submits and returns the answer for `seq` (Success or Error).
    async fn submit(
        &mut self,
        channel_id: u32,
        seq: u32,
        job: &Sv2Job,
        nonce: u32,
    ) -> Result<(), String> {
        self.conn
            .send(&Message::SubmitSharesStandard {
                channel_id,
                sequence_number: seq,
                job_id: job.job_id,
                nonce,
                ntime: job.ntime,
                version: job.version,
            })
            .await
            .unwrap();
        self.until(|m| match m {
            Message::SubmitSharesSuccess {
                last_sequence_number,
                ..
            } if *last_sequence_number == seq => Some(Ok(())),
            Message::SubmitSharesError {
                sequence_number,
                error_code,
                ..
            } if *sequence_number == seq => Some(Err(error_code.clone())),
            _ => None,
        })
        .await
    }

    /// Whether the proxy closes the connection within `limit`.
    async fn closed_within(&mut self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.conn.recv()).await {
                Err(_) => return false,
                Ok(Ok(_)) => continue,
                Ok(Err(Sv2Error::Closed | Sv2Error::Io(_))) => return true,
                Ok(Err(e)) => panic!("unexpected SV2 error {e}"),
            }
        }
    }
}

/// Reads a raw socket until EOF or reset; whether that happened within `limit`.
async fn raw_closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The cases

async fn sv1_cases(port: SocketAddr) {
    // Malformed JSON: a protocol violation, the connection is closed.
    let mut c = Sv1Client::connect(port).await;
    c.subscribe().await;
    c.send_raw(b"{\"id\": 7, \"method\": \"mining.subscribe\", \"params\": [\n")
        .await;
    assert!(
        c.closed_within(IO_TIMEOUT).await,
        "malformed JSON: still open"
    );
    // Valid JSON that is not JSON-RPC: closed too.
    let mut c = Sv1Client::connect(port).await;
    c.send_raw(b"[1, 2, 3]\n").await;
    assert!(c.closed_within(IO_TIMEOUT).await, "JSON array: still open");

    // A line over max_message_bytes: closed, before its end arrives.
    let mut c = Sv1Client::connect(port).await;
    c.subscribe().await;
    let mut long = br#"{"id": 9, "method": "mining.subscribe", "params": [""#.to_vec();
    long.extend(vec![b'a'; MAX_MESSAGE + 100]);
    c.send_raw(&long).await;
    assert!(
        c.closed_within(IO_TIMEOUT).await,
        "oversized line: still open"
    );
    // Just under the limit is fine.
    let mut c = Sv1Client::connect(port).await;
    let agent = "a".repeat(MAX_MESSAGE - 100);
    let r = c.call("mining.subscribe", json!([agent])).await;
    assert!(r.error.is_null(), "{r:?}");

    // Unknown method and bad parameters: an error reply, the connection stays.
    let mut c = Sv1Client::connect(port).await;
    let r = c.call("mining.no_such_method", json!([1, 2])).await;
    let m = assert_error(&r, 20, "unsupported method mining.no_such_method");
    eprintln!("unknown method -> [20, {m:?}]");
    let r = c.call("mining.suggest_difficulty", json!(["lots"])).await;
    let m = assert_error(&r, 20, "difficulty must be a positive number");
    eprintln!("bad params -> [20, {m:?}]");
    // A response-shaped line from the miner is ignored.
    c.send_raw(b"{\"id\": 99, \"result\": true, \"error\": null}\n")
        .await;

    // Submit before subscribe/authorize: 24, the connection stays.
    let r = c.submit("1", &[0; 4], 0x6000_0000, 0, None).await;
    assert_error(&r, 24, "unauthorized");
    c.subscribe().await;
    let r = c.submit("1", &[0; 4], 0x6000_0000, 0, None).await;
    assert_error(&r, 24, "unauthorized");

    // Invalid payout addresses: refused with the reason, the connection stays.
    for (username, why) in [
        (
            format!("{MAINNET_ADDRESS}.w1"),
            "mainnet address on regtest",
        ),
        (format!("{TYPO_ADDRESS}.w1"), "checksum typo"),
    ] {
        let r = c.call("mining.authorize", json!([username, "x"])).await;
        let m = assert_error(&r, 24, "invalid payout address");
        eprintln!("authorize with a {why} -> [24, {m:?}]");
    }
    let r = c
        .call("mining.authorize", json!(["not an account!.w1", "x"]))
        .await;
    let m = assert_error(&r, 24, "account name");
    eprintln!("authorize with a bad account name -> [24, {m:?}]");
    // Still open: a valid authorize now works and brings work.
    let r = c
        .call(
            "mining.authorize",
            json!([format!("{ADDRESS}.raw"), format!("d={DIFFICULTY}")]),
        )
        .await;
    assert_eq!(r.result, json!(true), "{r:?}");
    let job = c.wait_job().await;
    let size = c.extranonce2_size;
    let ntime = job.notify.ntime;
    let job_id = job.notify.job_id.clone();

    // Unknown job ids (hex and not): 21.
    let r = c.submit("7fffffff", &vec![0; size], ntime, 0, None).await;
    assert_error(&r, 21, "job not found");
    let r = c
        .submit("no-such-job", &vec![0; size], ntime, 0, None)
        .await;
    assert_error(&r, 21, "job not found");

    // Wrong extranonce2 size: 20 with the reason.
    let r = c.submit(&job_id, &vec![0; size + 1], ntime, 0, None).await;
    let m = assert_error(&r, 20, "extranonce");
    eprintln!("extranonce2 too long -> [20, {m:?}]");

    // ntime far outside the job's range (both sides): 20 naming ntime.
    for bad in [ntime + 100_000, ntime - 3_600] {
        let r = c.submit(&job_id, &vec![1; size], bad, 0, None).await;
        let m = assert_error(&r, 20, "ntime");
        eprintln!("ntime {bad} (job {ntime}) -> [20, {m:?}]");
    }

    // Version bits outside the granted mask: 20 naming the mask. Without mining.configure the
    // granted mask is empty, so any bit is outside it.
    let r = c
        .submit(&job_id, &vec![2; size], ntime, 0, Some(0x0000_2000))
        .await;
    let m = assert_error(&r, 20, "outside mask");
    eprintln!("version bits without a mask -> [20, {m:?}]");
    let mut v = Sv1Client::connect(port).await;
    let r = v
        .call(
            "mining.configure",
            json!([["version-rolling"], {"version-rolling.mask": "1fffe000", "version-rolling.min-bit-count": 2}]),
        )
        .await;
    let granted = r.result["version-rolling.mask"]
        .as_str()
        .map(|m| u32::from_str_radix(m, 16).unwrap())
        .expect("configure grants a mask");
    v.subscribe().await;
    let r = v
        .call(
            "mining.authorize",
            json!([format!("{ADDRESS}.raw"), format!("d={DIFFICULTY}")]),
        )
        .await;
    assert_eq!(r.result, json!(true), "{r:?}");
    let vjob = v.wait_job().await;
    let bits = 0x8000_0000u32 | 1; // never in a BIP320 mask
    assert_eq!(bits & granted, 0);
    let r = v
        .submit(
            &vjob.notify.job_id,
            &vec![2; v.extranonce2_size],
            vjob.notify.ntime,
            0,
            Some(bits),
        )
        .await;
    let m = assert_error(&r, 20, "outside mask");
    eprintln!("version bits outside the granted mask {granted:#010x} -> [20, {m:?}]");
    if granted != 0 {
        // Bits inside the mask are fine (if the share meets the target).
        let en2 = vec![3; v.extranonce2_size];
        let rolled = granted & granted.wrapping_neg();
        let mut j = vjob.clone();
        j.notify.version = (j.notify.version & !granted) | rolled;
        let nonce = v.find_nonce(&j, &en2, 0, true);
        let r = v
            .submit(&j.notify.job_id, &en2, j.notify.ntime, nonce, Some(rolled))
            .await;
        assert_eq!(r.result, json!(true), "rolled share: {r:?}");
    }
    drop(v);

    // A share below the target: 23.
    let en2 = vec![4; size];
    let low = c.find_nonce(&job, &en2, 0, false);
    let r = c.submit(&job_id, &en2, ntime, low, None).await;
    assert_error(&r, 23, "low difficulty");

    // A good share, then the same again: accepted, then 22.
    let en2 = vec![5; size];
    let (solved, nonce, r) = c.solve_and_submit(&en2).await;
    assert_eq!(r.result, json!(true), "{r:?}");
    let n = &solved.notify;
    let r = c.submit(&n.job_id, &en2, n.ntime, nonce, None).await;
    assert_error(&r, 22, "duplicate");

    // After all that the connection still mines.
    let (_, _, r) = c.solve_and_submit(&[6; 8][..size]).await;
    assert_eq!(r.result, json!(true), "{r:?}");
}

/// The same work as `b`: a job re-sent under a new id (vardiff), not a new job.
fn same_sv1_work(a: &Notify, b: &Notify) -> bool {
    (
        a.prev_hash,
        &a.coinbase1,
        &a.coinbase2,
        &a.merkle_branch,
        a.version,
        a.nbits,
        a.ntime,
    ) == (
        b.prev_hash,
        &b.coinbase1,
        &b.coinbase2,
        &b.merkle_branch,
        b.version,
        b.nbits,
        b.ntime,
    )
}

/// Vardiff re-sends the current work under a new job id with a new difficulty: a share already
/// accepted under the old id, resubmitted under the new one, is the same header and must be a
/// duplicate (else it is credited, and forwarded upstream, twice).
async fn sv1_resent_job_duplicate(port: SocketAddr) {
    let mut c = Sv1Client::connect(port).await;
    c.subscribe().await;
    // No fixed difficulty: vardiff runs.
    let r = c
        .call(
            "mining.authorize",
            json!([format!("{ADDRESS}.vardiff"), "x"]),
        )
        .await;
    assert_eq!(r.result, json!(true), "{r:?}");
    let mut prev = c.wait_job().await;
    let size = c.extranonce2_size;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut counter = 0u64;
    // Mine fast until vardiff raises the difficulty (30 shares after at least 1 s).
    let resent = loop {
        let job = c.job.clone().unwrap();
        if job.notify.job_id != prev.notify.job_id {
            if same_sv1_work(&job.notify, &prev.notify) {
                break job;
            }
            prev = job;
        }
        assert!(Instant::now() < deadline, "vardiff never re-sent the job");
        counter += 1;
        let en2: Vec<u8> = counter.to_be_bytes()[8 - size.min(8)..].to_vec();
        let (_, _, r) = c.solve_and_submit(&en2).await;
        assert_eq!(r.result, json!(true), "{r:?}");
    };
    assert!(resent.target < prev.target, "vardiff made it harder");
    let en2 = vec![0xee; size];
    let nonce = c.find_nonce(&resent, &en2, 0, true);
    let ntime = prev.notify.ntime;
    let r = c
        .submit(&prev.notify.job_id, &en2, ntime, nonce, None)
        .await;
    assert_eq!(r.result, json!(true), "under the old id: {r:?}");
    let r = c
        .submit(&resent.notify.job_id, &en2, ntime, nonce, None)
        .await;
    assert_error(&r, 22, "duplicate");
    eprintln!(
        "vardiff re-sent job {} as {} after {counter} shares: the same share under both ids is a duplicate",
        prev.notify.job_id, resent.notify.job_id
    );
}

/// 2,000 submits written back to back: every one answered, the connection stays.
async fn sv1_flood(port: SocketAddr) {
    const N: usize = 2_000;
    let mut c = Sv1Client::ready(port, "flood").await;
    let job = c.job.clone().unwrap();
    let size = c.extranonce2_size;
    let mut buf = Vec::new();
    let first_id = c.next_id;
    for i in 0..N {
        let id = first_id + i as u64;
        let (job_id, nonce) = match i % 4 {
            0 => ("dead".to_string(), "00000000".to_string()),
            1 => (job.notify.job_id.clone(), "zz".to_string()),
            _ => (
                job.notify.job_id.clone(),
                sv1::u32_to_hex(0x8000_0000 + i as u32),
            ),
        };
        let line = json!({"id": id, "method": "mining.submit", "params": [
            format!("{ADDRESS}.flood"), job_id, hex::encode(vec![7u8; size]),
            sv1::u32_to_hex(job.notify.ntime), nonce,
        ]});
        buf.extend_from_slice(line.to_string().as_bytes());
        buf.push(b'\n');
    }
    c.next_id += N as u64;
    let started = Instant::now();
    let Sv1Client { write, lines, .. } = &mut c;
    let writer = async {
        write.write_all(&buf).await.unwrap();
    };
    let reader = async {
        let mut answers = std::collections::BTreeMap::<String, u64>::new();
        let mut seen = 0;
        while seen < N {
            let line = lines.next_line().await.unwrap().expect("flood: closed");
            match sv1::parse_line(line.as_bytes()).unwrap() {
                Incoming::Response(r) => {
                    assert_eq!(r.id, json!(first_id + seen as u64), "answers in order");
                    let key = match error_of(&r) {
                        Some((code, _)) => code.to_string(),
                        None => format!("result {}", r.result),
                    };
                    *answers.entry(key).or_default() += 1;
                    seen += 1;
                }
                Incoming::Request(_) => {}
            }
        }
        answers
    };
    let ((), answers) = within("the flood", Duration::from_secs(20), async {
        tokio::join!(writer, reader)
    })
    .await;
    eprintln!(
        "flood of {N} submits answered in {:?}: {answers:?}",
        started.elapsed()
    );
    assert_eq!(answers.values().sum::<u64>(), N as u64);
    assert_eq!(answers.get("21"), Some(&(N as u64 / 4)), "{answers:?}");
    assert_eq!(answers.get("20"), Some(&(N as u64 / 4)), "{answers:?}");
    let low = answers.get("23").copied().unwrap_or(0);
    let ok = answers.get("result true").copied().unwrap_or(0);
    assert_eq!(low + ok, N as u64 / 2, "{answers:?}");
    // Still connected and mining.
    let (_, _, r) = c.solve_and_submit(&[8; 8][..size]).await;
    assert_eq!(r.result, json!(true), "after the flood: {r:?}");
}

async fn sv2_cases(port: SocketAddr) {
    // A raw client that stays connected through the garbage connections below.
    let mut c = Sv2Client::setup(port).await;

    // An invalid user: unknown-user, the connection stays.
    for user in [
        format!("{MAINNET_ADDRESS}.w1"),
        format!("{TYPO_ADDRESS}.w1"),
        "not an account!".to_string(),
    ] {
        match c.open(1, &user).await {
            Message::OpenMiningChannelError {
                request_id,
                error_code,
            } => {
                assert_eq!((request_id, error_code.as_str()), (1, "unknown-user"));
            }
            other => panic!("{user}: expected OpenMiningChannel.Error, got {other:?}"),
        }
    }
    let channel_id = match c.open(2, &format!("{ADDRESS}.raw2")).await {
        Message::OpenStandardMiningChannelSuccess { channel_id, .. } => channel_id,
        other => panic!("expected OpenStandardMiningChannel.Success, got {other:?}"),
    };
    let job = c.wait_job().await;

    // A garbage Noise handshake closes only that connection.
    let mut g = TcpStream::connect(port).await.unwrap();
    let garbage: Vec<u8> = (0..300u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    g.write_all(&garbage).await.unwrap();
    assert!(
        raw_closed_within(&mut g, Duration::from_secs(7)).await,
        "garbage handshake: still open"
    );
    // SV1 JSON on the SV2 port: closed at once.
    let mut j = TcpStream::connect(port).await.unwrap();
    j.write_all(b"{\"id\": 1, \"method\": \"mining.subscribe\", \"params\": []}\n")
        .await
        .unwrap();
    assert!(
        raw_closed_within(&mut j, Duration::from_secs(2)).await,
        "SV1 on the SV2 port: still open"
    );

    // Unknown channel id: invalid-channel-id.
    let r = c.submit(channel_id + 1000, 1, &job, 0).await;
    assert_eq!(r, Err("invalid-channel-id".to_string()));
    // Unknown job id: invalid-job-id.
    let mut unknown = job;
    unknown.job_id = job.job_id.wrapping_add(10_000);
    let r = c.submit(channel_id, 2, &unknown, 0).await;
    assert_eq!(r, Err("invalid-job-id".to_string()));
    // ntime out of range, version bits outside the mask (no version rolling negotiated).
    let mut late = job;
    late.ntime += 100_000;
    let r = c.submit(channel_id, 3, &late, 0).await;
    assert_eq!(r, Err("invalid-share".to_string()));
    let mut rolled = job;
    rolled.version ^= 0x0000_2000;
    let r = c.submit(channel_id, 4, &rolled, 0).await;
    assert_eq!(r, Err("invalid-non-rollable-version-bit".to_string()));
    // Below target: difficulty-too-low.
    let low = c.find_nonce(&job, 0, false);
    let r = c.submit(channel_id, 5, &job, low).await;
    assert_eq!(r, Err("difficulty-too-low".to_string()));
    // A good share, then the same again: Success, then duplicate-share.
    let job = c.job.unwrap();
    let nonce = c.find_nonce(&job, 0, true);
    assert_eq!(c.submit(channel_id, 6, &job, nonce).await, Ok(()));
    assert_eq!(
        c.submit(channel_id, 7, &job, nonce).await,
        Err("duplicate-share".to_string())
    );

    // An oversized frame (above max_message_bytes) closes that connection.
    let mut o = Sv2Client::setup(port).await;
    o.conn
        .send(&Message::SetGroupChannel {
            group_channel_id: 1,
            channel_ids: (0..(MAX_MESSAGE as u32 / 4 + 100)).collect(),
        })
        .await
        .unwrap();
    assert!(
        o.closed_within(IO_TIMEOUT).await,
        "oversized frame: still open"
    );
    // A message before SetupConnection is a violation too.
    let mut p = sv2_connect(port).await;
    p.send(&Message::OpenStandardMiningChannel {
        request_id: 1,
        user_identity: ADDRESS.into(),
        nominal_hash_rate: 0.0,
        max_target: [0xff; 32],
    })
    .await
    .unwrap();
    let r = within("SV2 close", IO_TIMEOUT, p.recv()).await;
    assert!(
        matches!(r, Err(Sv2Error::Closed | Sv2Error::Io(_))),
        "channel before SetupConnection: {r:?}"
    );

    // The first raw client was never disturbed: it still mines.
    let job = c.job.unwrap();
    let nonce = c.find_nonce(&job, 1 << 30, true);
    assert_eq!(c.submit(channel_id, 8, &job, nonce).await, Ok(()));
}

/// Vardiff re-sends the work under a new job id (SetTarget + NewMiningJob with the same merkle
/// root): the same share under the new id is a duplicate, not new work.
async fn sv2_resent_job_duplicate(port: SocketAddr) {
    let mut c = Sv2Client::setup(port).await;
    let channel_id = match c.open(1, &format!("{ADDRESS}.vardiff2")).await {
        Message::OpenStandardMiningChannelSuccess { channel_id, .. } => channel_id,
        other => panic!("expected OpenStandardMiningChannel.Success, got {other:?}"),
    };
    c.wait_job().await;
    let mut prev = c.job.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut seq, mut start) = (100u32, 1u32 << 31);
    let resent = loop {
        let job = c.job.unwrap();
        if job.job_id != prev.job_id {
            if (job.merkle_root, job.version, job.ntime)
                == (prev.merkle_root, prev.version, prev.ntime)
            {
                break job;
            }
            prev = job;
        }
        assert!(Instant::now() < deadline, "vardiff never re-sent the job");
        let nonce = c.find_nonce(&job, start, true);
        start = nonce + 1;
        seq += 1;
        assert_eq!(c.submit(channel_id, seq, &job, nonce).await, Ok(()));
    };
    assert!(resent.target < prev.target, "vardiff made it harder");
    let nonce = c.find_nonce(&resent, 3 << 30, true);
    assert_eq!(c.submit(channel_id, seq + 1, &prev, nonce).await, Ok(()));
    assert_eq!(
        c.submit(channel_id, seq + 2, &resent, nonce).await,
        Err("duplicate-share".to_string()),
        "the same header under a re-sent job id"
    );
    eprintln!(
        "SV2: vardiff re-sent job {} as {}: the same share under both ids is a duplicate",
        prev.job_id, resent.job_id
    );
}

// ---------------------------------------------------------------------------------------------

async fn start_pool(
    opts: PoolOptions,
) -> (
    SocketAddr,
    oneshot::Sender<()>,
    tokio::task::JoinHandle<defpool_loadgen::PoolReport>,
) {
    let pool = TestPool::bind(opts).await.unwrap();
    let addr = pool.local_addr();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        pool.run(async move {
            let _ = rx.await;
        })
        .await
        .unwrap()
    });
    (addr, tx, task)
}

fn good_miners(port: SocketAddr, kind: MinerKind, worker: &str, secs: u64) -> MinersOptions {
    let mut o = MinersOptions::new(port, kind, Algorithm::Sha256d);
    o.username = format!("{ADDRESS}.{worker}");
    o.password = format!("d={DIFFICULTY}");
    o.duration = Duration::from_secs(secs);
    o.target_shares_per_sec = Some(10.0);
    if kind.is_sv2() {
        o.authority_public_key = Some(PUBLIC_KEY.into());
    }
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_survives_bad_input() {
    let test_started = Instant::now();
    let dir = temp_dir("bad-input");
    // The SV2 pool signs with PUBLIC_KEY; the proxy is told to expect OTHER_PUBLIC_KEY.
    let mut sv2_opts = PoolOptions::new(
        "127.0.0.1:0".parse().unwrap(),
        PoolProtocol::Sv2,
        "BTC",
        Algorithm::Sha256d,
    );
    sv2_opts.authority = Some((PUBLIC_KEY.into(), SECRET_KEY.into()));
    let (wrong_key_pool, sv2_stop, sv2_task) = start_pool(sv2_opts).await;
    let mut sv1_opts = PoolOptions::new(
        "127.0.0.1:0".parse().unwrap(),
        PoolProtocol::Sv1,
        "BTC",
        Algorithm::Sha256d,
    );
    // Few job changes, none clean within the test: the raw clients' jobs stay current.
    sv1_opts.job_interval = Duration::from_secs(10);
    let (good_pool, sv1_stop, sv1_task) = start_pool(sv1_opts).await;

    let config = format!(
        r#"
network = "regtest"
[proxy]
id = "bad-input-proxy"
outbox_path = "{outbox}"
admin_listen = "127.0.0.1:{admin_port}"
admin_token = "{TOKEN}"
authority_public_key = "{PUBLIC_KEY}"
authority_secret_key = "{SECRET_KEY}"
grace_secs = 2
[[proxy.ports]]
algorithm = "sha256d"
protocol = "sv1"
listen = "127.0.0.1:{sv1_port}"
start_difficulty = {DIFFICULTY}
min_difficulty = 0.000000001
max_message_bytes = {MAX_MESSAGE}
# Fixed difficulty: vardiff never re-sends work to the SV2 miners here.
[[proxy.ports]]
algorithm = "sha256d"
protocol = "sv2"
listen = "127.0.0.1:{sv2_port}"
start_difficulty = {DIFFICULTY}
min_difficulty = {DIFFICULTY}
max_difficulty = {DIFFICULTY}
max_message_bytes = {MAX_MESSAGE}
[[proxy.ports]]
algorithm = "sha256d"
protocol = "sv2"
listen = "127.0.0.1:{sv2_vardiff_port}"
start_difficulty = {DIFFICULTY}
min_difficulty = 0.000000001
max_message_bytes = {MAX_MESSAGE}
[[upstreams]]
name = "btc-wrong-key"
coin = "BTC"
protocol = "sv2"
url = "stratum2+tcp://{wrong_key_pool}"
authority_public_key = "{OTHER_PUBLIC_KEY}"
username = "defpool-proxy"
[[upstreams]]
name = "btc-sv1"
coin = "BTC"
protocol = "sv1"
url = "stratum+tcp://{good_pool}"
username = "defpool-proxy"
password = "x"
"#,
        outbox = dir.join("outbox.db").display(),
        admin_port = free_port(),
        sv1_port = free_port(),
        sv2_port = free_port(),
        sv2_vardiff_port = free_port(),
    );
    let config_path = dir.join("proxy.toml");
    std::fs::write(&config_path, config).unwrap();
    let valid = defpool_config::load(&config_path).unwrap();
    let (started_tx, started_rx) = oneshot::channel::<Started>();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let proxy_thread = std::thread::spawn(move || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
            .block_on(proxy::run(valid, Some(started_tx), async move {
                let _ = stop_rx.await;
            }))
    });
    let started = within("proxy start", IO_TIMEOUT, started_rx).await.unwrap();
    // In the configured order.
    let ports: Vec<SocketAddr> = started.ports.iter().map(|p| p.2).collect();
    let (sv1_port, sv2_port, sv2_vardiff_port) = (ports[0], ports[1], ports[2]);
    let admin = started.admin;

    // The wrong-key upstream is refused and the proxy fails over to the SV1 one.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = get_status(admin).await;
        let g = &status["groups"][0]["status"];
        let down = g["upstreams"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u["name"] == "btc-wrong-key" && u["state"] == "down");
        if g["active_upstream"] == "btc-sv1" && down {
            eprintln!("upstreams: {}", g["upstreams"]);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no failover from the wrong-key upstream: {g}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The refused pool is healthy: only its key is not the one configured.
    let key = |k: &str| AuthorityPublicKey::from_base58(k).unwrap();
    let s = TcpStream::connect(wrong_key_pool).await.unwrap();
    let r = within(
        "SV2 handshake",
        IO_TIMEOUT,
        sv2::connect(s, Some(&key(OTHER_PUBLIC_KEY)), FrameLimits::default()),
    )
    .await;
    assert!(
        matches!(r, Err(Sv2Error::AuthorityMismatch { .. })),
        "{:?}",
        r.err()
    );
    let s = TcpStream::connect(wrong_key_pool).await.unwrap();
    let r = within(
        "SV2 handshake",
        IO_TIMEOUT,
        sv2::connect(s, Some(&key(PUBLIC_KEY)), FrameLimits::default()),
    )
    .await;
    assert!(r.is_ok(), "{:?}", r.err());
    drop(r);

    // The well-behaved miners, connected throughout.
    let good_secs = 16;
    let good_sv1 = tokio::spawn(defpool_loadgen::run_miners(
        good_miners(sv1_port, MinerKind::Sv1, "good-sv1", good_secs),
        None,
    ));
    let good_sv2 = tokio::spawn(defpool_loadgen::run_miners(
        good_miners(sv2_port, MinerKind::Sv2Standard, "good-sv2", good_secs),
        None,
    ));
    let mut sv1_count = accepted_grows(admin, "good-sv1", 0).await;
    let mut sv2_count = accepted_grows(admin, "good-sv2", 0).await;

    let t = Instant::now();
    sv1_cases(sv1_port).await;
    sv1_resent_job_duplicate(sv1_port).await;
    eprintln!("SV1 cases took {:?}", t.elapsed());
    sv1_count = accepted_grows(admin, "good-sv1", sv1_count).await;
    sv2_count = accepted_grows(admin, "good-sv2", sv2_count).await;

    let t = Instant::now();
    sv1_flood(sv1_port).await;
    eprintln!("flood took {:?}", t.elapsed());
    sv1_count = accepted_grows(admin, "good-sv1", sv1_count).await;
    sv2_count = accepted_grows(admin, "good-sv2", sv2_count).await;

    let t = Instant::now();
    sv2_cases(sv2_port).await;
    sv2_resent_job_duplicate(sv2_vardiff_port).await;
    eprintln!("SV2 cases took {:?}", t.elapsed());
    accepted_grows(admin, "good-sv1", sv1_count).await;
    accepted_grows(admin, "good-sv2", sv2_count).await;

    // The wrong-key upstream is still refused on every retry; the good one stays active.
    let status = get_status(admin).await;
    assert_eq!(status["groups"][0]["status"]["active_upstream"], "btc-sv1");
    let violations = status["counters"]["protocol_violations"].as_u64().unwrap();
    eprintln!("counters: {}", status["counters"]);
    // SV1: malformed JSON, not JSON-RPC, oversized line; SV2: garbage handshake, SV1 on the
    // SV2 port, oversized frame, a channel before SetupConnection.
    assert!(violations >= 7, "protocol violations counted: {violations}");

    for (name, run) in [("good-sv1", good_sv1), ("good-sv2", good_sv2)] {
        let report = within("good miners", Duration::from_secs(good_secs + 10), run)
            .await
            .unwrap()
            .unwrap();
        eprintln!(
            "{name}: {} accepted, {} rejected {:?}, {} disconnects",
            report.shares_accepted,
            report.shares_rejected,
            report.rejects_by_reason,
            report.disconnects
        );
        assert_eq!(report.connected, 1, "{name}: {report:?}");
        assert_eq!(report.disconnects, 0, "{name}: {report:?}");
        assert_eq!(report.connect_failures, 0, "{name}: {report:?}");
        assert_eq!(report.shares_rejected, 0, "{name}: {report:?}");
        assert!(report.shares_accepted >= 20, "{name}: {report:?}");
    }

    // Nothing panicked: the proxy is still running, and a fresh miner still mines.
    assert!(!proxy_thread.is_finished(), "the proxy thread ended");
    let mut last = good_miners(sv1_port, MinerKind::Sv1, "final", 5);
    last.max_shares = Some(5);
    let report = within(
        "final miner",
        Duration::from_secs(15),
        defpool_loadgen::run_miners(last, None),
    )
    .await
    .unwrap();
    assert!(report.shares_accepted >= 5, "{report:?}");
    assert_eq!(report.shares_rejected, 0, "{report:?}");

    let _ = stop_tx.send(());
    within("proxy stop", Duration::from_secs(10), async {
        while !proxy_thread.is_finished() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    proxy_thread.join().expect("proxy thread panicked").unwrap();
    let _ = sv1_stop.send(());
    let _ = sv2_stop.send(());
    let sv1_report = within("SV1 pool", IO_TIMEOUT, sv1_task).await.unwrap();
    let sv2_report = within("SV2 pool", IO_TIMEOUT, sv2_task).await.unwrap();
    eprintln!(
        "SV1 pool: {} shares accepted, {} rejected; wrong-key SV2 pool: {} connections, {} shares",
        sv1_report.shares_accepted,
        sv1_report.shares_rejected,
        sv2_report.connections,
        sv2_report.shares_accepted
    );
    assert!(sv1_report.shares_accepted > 0);
    assert_eq!(sv1_report.shares_rejected, 0, "{sv1_report:?}");
    assert!(
        sv2_report.connections >= 1,
        "the proxy never tried the wrong-key pool"
    );
    assert_eq!(sv2_report.shares_accepted, 0);
    eprintln!("test took {:?}", test_started.elapsed());
    let _ = std::fs::remove_dir_all(&dir);
}
