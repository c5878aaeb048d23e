//! Helpers for the API tests: a real server (`server::run`) on a temp SQLite file with ports 0,
//! a control-wire client that sends real batches, and a minimal HTTP/1.1 + WebSocket client.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use defpool_control::{
    decode, encode, Batch, Event, Message, ProxyId, Record, UserRecord, WorkRecord,
};
use defpool_core::secret::Secret;
use defpool_core::{Algorithm, Ticker};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

pub const ADMIN: &str = "api-test-admin-token-0123456789";
pub const PROXY_TOKEN: &str = "api-test-proxy-token-0123456789";
pub const PROXY: &str = "api-proxy";
/// A regtest BTC address (the config's network is regtest).
pub const ALICE: &str = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080";
pub const BOB: &str = "bcrt1qwqf5y96a6l2npql6z3h5gjcs6ze47f7h42wryz";

pub struct TestServer {
    pub api: SocketAddr,
    pub control: SocketAddr,
    pub dir: PathBuf,
    pub db: PathBuf,
    pub database_url: String,
    pg_schema: Option<String>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    /// Starts the server on SQLite; `extra` is appended to the `[server]` section.
    pub async fn start(name: &str, extra: &str) -> TestServer {
        TestServer::start_on(Db::Sqlite, name, extra).await
    }

    /// Starts the server on `db` (PostgreSQL: a fresh schema of the test database at
    /// `DEFPOOL_TEST_POSTGRES`, default `postgres://postgres@127.0.0.1:5432/test`).
    pub async fn start_on(db_kind: Db, name: &str, extra: &str) -> TestServer {
        let dir = std::env::temp_dir().join(format!("defpool-api-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let db = dir.join("server.db");
        let (database_url, pg_schema) = match db_kind {
            Db::Sqlite => (format!("sqlite:{}", db.display()), None),
            Db::Postgres => {
                let (url, schema) = pg_schema(name).await;
                (url, Some(schema))
            }
        };
        let config = dir.join("server.toml");
        std::fs::write(
            &config,
            format!(
                r#"network = "regtest"
[server]
database_url = "sqlite:{db}"
control_listen = "127.0.0.1:3340"
api_listen = "127.0.0.1:8080"
admin_token = "{ADMIN}"
{extra}
[[server.proxies]]
id = "{PROXY}"
token = "{PROXY_TOKEN}"
"#,
                db = db.display()
            ),
        )
        .unwrap();
        let mut valid = defpool_config::load(&config).expect("test config is valid");
        // Ports 0 (the config refuses them: clients need fixed ports); `Started` says which.
        let s = valid.config.server.as_mut().unwrap();
        s.api_listen = "127.0.0.1:0".parse().unwrap();
        s.control_listen = "127.0.0.1:0".parse().unwrap();
        s.database_url = database_url.clone();
        let (started_tx, started_rx) = oneshot::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            defpool_server::server::run(valid, Some(started_tx), async move {
                let _ = stop_rx.await;
            })
            .await
            .expect("server runs");
        });
        let started = tokio::time::timeout(Duration::from_secs(30), started_rx)
            .await
            .expect("server started in time")
            .expect("server started");
        TestServer {
            api: started.api,
            control: started.control,
            dir,
            db,
            database_url,
            pg_schema,
            stop: Some(stop_tx),
            task: Some(task),
        }
    }

    /// A second connection to the server's store, to compare the API's figures with.
    pub async fn store(&self) -> defpool_store::Store {
        defpool_store::Store::connect(&self.database_url)
            .await
            .unwrap()
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Some(schema) = self.pg_schema.take() {
            use sqlx::Connection;
            if let Ok(mut c) = sqlx::PgConnection::connect(&pg_admin_url()).await {
                let _ = sqlx::Executor::execute(
                    &mut c,
                    format!("DROP SCHEMA IF EXISTS {schema} CASCADE").as_str(),
                )
                .await;
            }
        }
    }

    pub async fn get(&self, path: &str) -> Resp {
        http(self.api, "GET", path, None, None).await
    }

    pub async fn admin(&self, method: &str, path: &str, body: Option<&str>) -> Resp {
        http(self.api, method, path, Some(ADMIN), body).await
    }
}

/// Which database the server runs on.
#[derive(Clone, Copy, Debug)]
pub enum Db {
    Sqlite,
    Postgres,
}

fn pg_admin_url() -> String {
    std::env::var("DEFPOOL_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

/// A fresh schema for one test; the URL selects it.
async fn pg_schema(name: &str) -> (String, String) {
    use sqlx::Connection;
    let admin = pg_admin_url();
    let mut c = sqlx::PgConnection::connect(&admin)
        .await
        .unwrap_or_else(|e| {
            panic!("PostgreSQL is unreachable ({e}): start it or set DEFPOOL_TEST_POSTGRES")
        });
    let schema = format!("defpool_api_{name}_{}", std::process::id());
    for sql in [
        format!("DROP SCHEMA IF EXISTS {schema} CASCADE"),
        format!("CREATE SCHEMA {schema}"),
    ] {
        sqlx::Executor::execute(&mut c, sql.as_str()).await.unwrap();
    }
    let _ = c.close().await;
    let sep = if admin.contains('?') { '&' } else { '?' };
    (
        format!("{admin}{sep}options=-csearch_path%3D{schema}"),
        schema,
    )
}

/// A parsed HTTP response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }

    /// The error code of a JSON error body.
    pub fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("no error code: {} {}", self.status, self.body))
            .to_string()
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`), read to the end.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Resp {
    http_raw(addr, method, path, token, body.map(|b| b.as_bytes()), "").await
}

pub async fn http_raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&[u8]>,
    extra_headers: &str,
) -> Resp {
    let mut s = TcpStream::connect(addr).await.expect("API reachable");
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra_headers}");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    let body = body.unwrap_or_default();
    if !body.is_empty() || matches!(method, "POST" | "PUT") {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    // A body the server refuses early may be cut short: that is fine.
    let _ = s.write_all(body).await;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut raw))
        .await
        .expect("response in time")
        .ok();
    parse_response(&raw)
}

pub fn parse_response(raw: &[u8]) -> Resp {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .get("transfer-encoding")
        .is_some_and(|t| t.contains("chunked"))
    {
        body = dechunk(&body);
    }
    Resp {
        status,
        headers,
        body: String::from_utf8_lossy(&body).to_string(),
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = b.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&b[..end]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = end + 2;
        let stop = (start + size).min(b.len());
        out.extend_from_slice(&b[start..stop]);
        b = &b[(stop + 2).min(b.len())..];
    }
    out
}

// ---- the control wire ----

/// A proxy connected over the real control protocol.
pub struct ControlClient {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
    pub sequence: u64,
}

impl ControlClient {
    pub async fn connect(addr: SocketAddr) -> ControlClient {
        let s = TcpStream::connect(addr).await.unwrap();
        let (r, w) = s.into_split();
        let mut c = ControlClient {
            reader: BufReader::new(r),
            writer: w,
            sequence: 0,
        };
        c.send(&Message::Hello {
            proxy_id: ProxyId(PROXY.into()),
            token: Secret::new(PROXY_TOKEN),
            group: "default".into(),
            algorithms: vec![Algorithm::Sha256d, Algorithm::Scrypt],
            last_acked_sequence: 0,
        })
        .await;
        match c.recv().await {
            Message::Welcome {
                last_applied_sequence,
                ..
            } => c.sequence = last_applied_sequence,
            other => panic!("expected Welcome, got {other:?}"),
        }
        c
    }

    async fn send(&mut self, m: &Message) {
        let mut b = encode(m);
        b.push(b'\n');
        self.writer.write_all(&b).await.unwrap();
    }

    async fn recv(&mut self) -> Message {
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(20), self.reader.read_line(&mut line))
            .await
            .expect("control reply in time")
            .unwrap();
        decode(line.trim_end().as_bytes()).unwrap()
    }

    /// Sends the next batch and waits for its acknowledgement (assignment pushes in between
    /// are skipped).
    pub async fn batch(&mut self, records: Vec<Record>) {
        self.sequence += 1;
        let sequence = self.sequence;
        self.send(&Message::Batch(Batch {
            proxy_id: ProxyId(PROXY.into()),
            sequence,
            created_at_ms: now_ms(),
            records,
        }))
        .await;
        loop {
            match self.recv().await {
                Message::Ack { sequence: s } if s == sequence => return,
                Message::Assign(_) => {}
                other => panic!("expected Ack {sequence}, got {other:?}"),
            }
        }
    }
}

impl ControlClient {
    /// The next batch in sequence (not sent).
    pub fn next_batch(&mut self, records: Vec<Record>) -> Batch {
        self.sequence += 1;
        Batch {
            proxy_id: ProxyId(PROXY.into()),
            sequence: self.sequence,
            created_at_ms: now_ms(),
            records,
        }
    }

    /// Sends batches back to back in one write, without waiting (as a proxy with a send window
    /// does when the server is behind), then returns the sequences acknowledged, in order.
    pub async fn pipeline(&mut self, batches: &[Batch]) -> Vec<u64> {
        let mut bytes = Vec::new();
        for b in batches {
            bytes.extend(encode(&Message::Batch(b.clone())));
            bytes.push(b'\n');
        }
        self.writer.write_all(&bytes).await.unwrap();
        let mut acks = Vec::with_capacity(batches.len());
        while acks.len() < batches.len() {
            match self.recv().await {
                Message::Ack { sequence } => acks.push(sequence),
                Message::Assign(_) => {}
                other => panic!("expected an Ack, got {other:?}"),
            }
        }
        acks
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

pub fn ticker(s: &str) -> Ticker {
    s.parse().unwrap()
}

pub fn user(u: &str, at: u64) -> Record {
    Record::User(UserRecord {
        user: u.into(),
        payout_address: Some(u.into()),
        first_seen_ms: at,
    })
}

/// Work of `w` expected hashes by `user.worker` on `coin`, ending at `to_ms`.
pub fn work(u: &str, worker: &str, coin: &str, w: u128, rejected: u64, to_ms: u64) -> Record {
    let mut rej = BTreeMap::new();
    if rejected > 0 {
        rej.insert("stale-share".to_string(), rejected);
    }
    Record::Work(WorkRecord {
        user: u.into(),
        worker: worker.into(),
        coin: ticker(coin),
        epoch: 1,
        upstream: format!("{}-pool", coin.to_lowercase()),
        accepted_work: w,
        accepted_shares: 10,
        late_work: 0,
        late_shares: 0,
        rejected: rej,
        from_ms: to_ms.saturating_sub(30_000),
        to_ms,
    })
}

pub fn block_candidate(coin: &str, hash: &str, u: &str, at: u64) -> Record {
    Record::Event(Event::BlockCandidate {
        coin: ticker(coin),
        epoch: 1,
        upstream: format!("{}-pool", coin.to_lowercase()),
        user: u.into(),
        worker: "rig1".into(),
        block_hash: hash.into(),
        height: Some(100),
        at_ms: at,
    })
}

/// Seeds two users with work on LTC and BTC, and one LTC block candidate. Returns the block hash.
pub async fn seed(c: &mut ControlClient) -> String {
    let now = now_ms();
    let hash = format!("{:064x}", now);
    c.batch(vec![
        user(ALICE, now - 120_000),
        user(BOB, now - 120_000),
        work(ALICE, "rig1", "LTC", 5_000_000_000_000, 2, now - 60_000),
        work(ALICE, "rig2", "LTC", 1_000_000_000_000, 0, now - 1_000),
        work(ALICE, "rig1", "BTC", 7_000_000_000_000, 0, now - 1_000),
        work(BOB, "default", "LTC", 3_000_000_000_000, 1, now - 1_000),
        block_candidate("LTC", &hash, ALICE, now - 500),
    ])
    .await;
    hash
}

// ---- live feed clients ----

/// An SSE subscription: yields `(event, data)` pairs.
pub struct SseClient {
    reader: BufReader<TcpStream>,
    pub status: u16,
}

impl SseClient {
    pub async fn connect(addr: SocketAddr, path: &str) -> SseClient {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        let mut reader = BufReader::new(s);
        let mut status_line = String::new();
        reader.read_line(&mut status_line).await.unwrap();
        let status = status_line.split(' ').nth(1).unwrap().parse().unwrap();
        loop {
            let mut l = String::new();
            reader.read_line(&mut l).await.unwrap();
            if l == "\r\n" || l.is_empty() {
                break;
            }
        }
        SseClient { reader, status }
    }

    /// The next event (skipping keep-alive comments and chunk framing), within `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Option<(String, serde_json::Value)> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut event = String::new();
        loop {
            let mut l = String::new();
            let n = tokio::time::timeout_at(deadline, self.reader.read_line(&mut l))
                .await
                .ok()?
                .ok()?;
            if n == 0 {
                return None;
            }
            let l = l.trim_end();
            if let Some(e) = l
                .strip_prefix("event: ")
                .or_else(|| l.strip_prefix("event:"))
            {
                event = e.trim().to_string();
            } else if let Some(d) = l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")) {
                return Some((event, serde_json::from_str(d.trim()).unwrap()));
            }
        }
    }
}

/// A minimal WebSocket client (text frames in, nothing but the handshake out).
pub struct WsClient {
    stream: BufReader<TcpStream>,
}

impl WsClient {
    /// Performs the handshake; returns the HTTP status and, on 101, the client.
    pub async fn connect(addr: SocketAddr, path: &str) -> (u16, Option<WsClient>) {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!(
                "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let mut reader = BufReader::new(s);
        let mut status_line = String::new();
        reader.read_line(&mut status_line).await.unwrap();
        let status: u16 = status_line.split(' ').nth(1).unwrap().parse().unwrap();
        loop {
            let mut l = String::new();
            reader.read_line(&mut l).await.unwrap();
            if l == "\r\n" || l.is_empty() {
                break;
            }
        }
        (
            status,
            (status == 101).then_some(WsClient { stream: reader }),
        )
    }

    /// The next text message as JSON (control frames skipped), within `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Option<serde_json::Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let mut head = [0u8; 2];
            tokio::time::timeout_at(deadline, self.stream.read_exact(&mut head))
                .await
                .ok()?
                .ok()?;
            let opcode = head[0] & 0x0f;
            let mut len = u64::from(head[1] & 0x7f);
            if len == 126 {
                let mut b = [0u8; 2];
                self.stream.read_exact(&mut b).await.ok()?;
                len = u64::from(u16::from_be_bytes(b));
            } else if len == 127 {
                let mut b = [0u8; 8];
                self.stream.read_exact(&mut b).await.ok()?;
                len = u64::from_be_bytes(b);
            }
            let mut payload = vec![0u8; len as usize];
            self.stream.read_exact(&mut payload).await.ok()?;
            match opcode {
                0x1 => return Some(serde_json::from_slice(&payload).unwrap()),
                0x8 => return None,
                _ => {}
            }
        }
    }
}
