//! API load benchmark: a real server (SQLite in a temp dir, loopback) seeded over the control
//! wire with users, workers and a day of work, then N concurrent keep-alive clients for a
//! bounded time (and request count) on `GET /api/status` and `GET /api/users/{address}`.
//! Prints req/s and p50/p99/max latency per endpoint as JSON.
//!
//! `cargo run --release -p defpool-server --example api_load -- [--secs 20] [--clients 16]
//!  [--users 200] [--max-requests 2000000]`

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use defpool_control::{decode, encode, Batch, Message, ProxyId, Record, UserRecord, WorkRecord};
use defpool_core::secret::Secret;
use defpool_core::Algorithm;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const ADMIN: &str = "api-load-admin-token-0123456789";
const PROXY_TOKEN: &str = "api-load-proxy-token-0123456789";
/// Valid regtest BTC addresses (heavy users, the ones queried).
const ADDRESSES: [&str; 4] = [
    "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080",
    "bcrt1qwqf5y96a6l2npql6z3h5gjcs6ze47f7h42wryz",
    "bcrt1q0ygllsf3wx0lpdc2yr7alqmhnjatnup8k4gkcr",
    "bcrt1qgsed3h7tczt7jucy9hnhyhy2uwdwvrcdddmcct",
];

struct Opts {
    secs: u64,
    clients: usize,
    users: usize,
    max_requests: u64,
}

fn opts() -> Opts {
    let mut o = Opts {
        secs: 20,
        clients: 16,
        users: 200,
        max_requests: 2_000_000,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let v = pair.get(1).map(|s| s.as_str()).unwrap_or_default();
        match pair[0].as_str() {
            "--secs" => o.secs = v.parse().expect("--secs N"),
            "--clients" => o.clients = v.parse().expect("--clients N"),
            "--users" => o.users = v.parse().expect("--users N"),
            "--max-requests" => o.max_requests = v.parse().expect("--max-requests N"),
            other => panic!("unknown option {other}"),
        }
    }
    o.secs = o.secs.clamp(1, 300);
    o.clients = o.clients.clamp(1, 256);
    o
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

async fn start_server(dir: &std::path::Path) -> (SocketAddr, SocketAddr) {
    let cfg = dir.join("server.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"network = "regtest"
[server]
database_url = "sqlite:{}"
admin_token = "{ADMIN}"
whitelist = ["LTC", "BTC"]
[server.rate_limit]
requests_per_sec = 1000000
burst = 1000000
[[server.proxies]]
id = "load"
token = "{PROXY_TOKEN}"
"#,
            dir.join("server.db").display()
        ),
    )
    .unwrap();
    let mut valid = defpool_config::load(&cfg).expect("valid config");
    let s = valid.config.server.as_mut().unwrap();
    s.api_listen = "127.0.0.1:0".parse().unwrap();
    s.control_listen = "127.0.0.1:0".parse().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let _ = defpool_server::server::run(valid, Some(tx), std::future::pending()).await;
    });
    let started = rx.await.expect("server started");
    (started.api, started.control)
}

/// Seeds users (4 addresses with 8 workers each, the rest account names with 2) and a day of
/// work per worker in 10-minute periods on LTC and BTC, over the real control wire.
async fn seed(control: SocketAddr, users: usize) -> u64 {
    let s = TcpStream::connect(control).await.unwrap();
    let (r, mut w) = s.into_split();
    let mut r = BufReader::new(r);
    let send = |m: Message| {
        let mut b = encode(&m);
        b.push(b'\n');
        b
    };
    w.write_all(&send(Message::Hello {
        proxy_id: ProxyId("load".into()),
        token: Secret::new(PROXY_TOKEN),
        group: "default".into(),
        algorithms: vec![Algorithm::Sha256d, Algorithm::Scrypt],
        last_acked_sequence: 0,
    }))
    .await
    .unwrap();
    let mut line = String::new();
    r.read_line(&mut line).await.unwrap();
    let now = now_ms();
    let names: Vec<String> = ADDRESSES
        .iter()
        .map(|a| a.to_string())
        .chain((ADDRESSES.len()..users).map(|i| format!("user{i:05}")))
        .collect();
    let mut records = 0u64;
    for (i, name) in names.iter().enumerate() {
        let workers = if i < ADDRESSES.len() { 8 } else { 2 };
        let mut batch = vec![Record::User(UserRecord {
            user: name.clone(),
            payout_address: (i < ADDRESSES.len()).then(|| name.clone()),
            first_seen_ms: now - 86_400_000,
        })];
        for wk in 0..workers {
            for period in 0..144u64 {
                let to = now - period * 600_000;
                let coin = if period.is_multiple_of(2) {
                    "LTC"
                } else {
                    "BTC"
                };
                let mut rejected = BTreeMap::new();
                rejected.insert("stale-share".to_string(), period % 3);
                batch.push(Record::Work(WorkRecord {
                    user: name.clone(),
                    worker: format!("rig{wk}"),
                    coin: coin.parse().unwrap(),
                    epoch: 1,
                    upstream: format!("{}-pool", coin.to_lowercase()),
                    accepted_work: 1_000_000_000_000 + (i as u128) * 1000 + period as u128,
                    accepted_shares: 100,
                    late_work: 0,
                    late_shares: 0,
                    rejected,
                    from_ms: to - 600_000,
                    to_ms: to,
                }));
            }
        }
        records += batch.len() as u64;
        let sequence = i as u64 + 1;
        w.write_all(&send(Message::Batch(Batch {
            proxy_id: ProxyId("load".into()),
            sequence,
            created_at_ms: now,
            records: batch,
        })))
        .await
        .unwrap();
        line.clear();
        r.read_line(&mut line).await.unwrap();
        match decode(line.trim_end().as_bytes()).unwrap() {
            Message::Ack { .. } => {}
            other => panic!("seeding: {other:?}"),
        }
    }
    records
}

/// One keep-alive connection; requests one path at a time, reading `Content-Length` bodies.
struct Conn {
    r: BufReader<TcpStream>,
    host: SocketAddr,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Conn {
        let s = TcpStream::connect(addr).await.unwrap();
        s.set_nodelay(true).unwrap();
        Conn {
            r: BufReader::new(s),
            host: addr,
        }
    }

    async fn get(&mut self, path: &str) -> u16 {
        let req = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", self.host);
        self.r.get_mut().write_all(req.as_bytes()).await.unwrap();
        let mut status_line = String::new();
        self.r.read_line(&mut status_line).await.unwrap();
        let status: u16 = status_line.split(' ').nth(1).unwrap().parse().unwrap();
        let mut len = 0usize;
        loop {
            let mut l = String::new();
            self.r.read_line(&mut l).await.unwrap();
            if l == "\r\n" {
                break;
            }
            if let Some(v) = l.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0u8; len];
        self.r.read_exact(&mut body).await.unwrap();
        status
    }
}

fn summary(mut lat: Vec<Duration>, secs: f64) -> serde_json::Value {
    lat.sort();
    let q = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(0.0)
    };
    serde_json::json!({
        "requests": lat.len(),
        "req_per_sec": (lat.len() as f64 / secs).round(),
        "p50_ms": (q(0.50) * 1000.0).round() / 1000.0,
        "p99_ms": (q(0.99) * 1000.0).round() / 1000.0,
        "max_ms": (lat.last().map(|d| d.as_secs_f64() * 1000.0).unwrap_or(0.0) * 1000.0).round() / 1000.0,
    })
}

#[tokio::main]
async fn main() {
    let o = opts();
    let dir = std::env::temp_dir().join(format!("defpool-api-load-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (api, control) = start_server(&dir).await;
    let t = Instant::now();
    let records = seed(control, o.users).await;
    eprintln!(
        "seeded {} users, {records} records in {:.1} s",
        o.users,
        t.elapsed().as_secs_f64()
    );
    let deadline = Instant::now() + Duration::from_secs(o.secs);
    let budget = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(o.max_requests));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..o.clients {
        let budget = budget.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(api).await;
            let (mut status_lat, mut user_lat) = (Vec::new(), Vec::new());
            let mut errors = 0u64;
            let mut i = c;
            while Instant::now() < deadline
                && budget
                    .fetch_update(
                        std::sync::atomic::Ordering::Relaxed,
                        std::sync::atomic::Ordering::Relaxed,
                        |b| b.checked_sub(1),
                    )
                    .is_ok()
            {
                let (path, lat) = if i.is_multiple_of(2) {
                    ("/api/status".to_string(), &mut status_lat)
                } else {
                    (
                        format!("/api/users/{}", ADDRESSES[(i / 2) % ADDRESSES.len()]),
                        &mut user_lat,
                    )
                };
                let t = Instant::now();
                if conn.get(&path).await != 200 {
                    errors += 1;
                }
                lat.push(t.elapsed());
                i += 1;
            }
            (status_lat, user_lat, errors)
        }));
    }
    let (mut status_lat, mut user_lat, mut errors) = (Vec::new(), Vec::new(), 0);
    for t in tasks {
        let (s, u, e) = t.await.unwrap();
        status_lat.extend(s);
        user_lat.extend(u);
        errors += e;
    }
    let secs = started.elapsed().as_secs_f64();
    let total = status_lat.len() + user_lat.len();
    let report = serde_json::json!({
        "clients": o.clients,
        "users": o.users,
        "seconds": (secs * 10.0).round() / 10.0,
        "total_req_per_sec": (total as f64 / secs).round(),
        "non_200": errors,
        "status": summary(status_lat, secs),
        "user": summary(user_lat, secs),
    });
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
    let _ = std::fs::remove_dir_all(&dir);
}
