//! Shared fixtures for the proxy's end-to-end tests: free loopback ports, test pools, a proxy on
//! its own thread and runtime (as in its own process), the admin endpoint, outbox totals.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use defpool_control::{ProxyId, Record};
use defpool_core::Algorithm;
use defpool_loadgen::{PoolOptions, PoolProtocol, PoolReport, TestPool};
use defpool_proxy::outbox::{Outbox, OutboxOptions};
use defpool_proxy::proxy::{self, Started};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

pub const TOKEN: &str = "test-admin-token-0123456789";
pub const ADDRESS: &str = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080";
pub const PROXY_PUB: &str = "9aubsUESvSxGovf93cGCKXsAQwoPGz8JAqLVH36e9wcGa1rPWQB";
pub const PROXY_SEC: &str = "2Xifp7Jz6CPcphddKSKA9Pqga5mfk82powffv1mRkX1ijdETes";

pub fn free_port() -> u16 {
    defpool_loadgen::free_loopback_port().unwrap()
}

pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("defpool-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub struct RunningPool {
    pub addr: SocketAddr,
    pub authority: Option<String>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<PoolReport>,
}

impl RunningPool {
    pub async fn stop(mut self) -> PoolReport {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.task.await.unwrap()
    }
}

pub async fn pool(tag: &str, protocol: PoolProtocol) -> RunningPool {
    pool_with(tag, protocol, |_| {}).await
}

/// A test pool with options changed by `adjust`.
pub async fn pool_with(
    tag: &str,
    protocol: PoolProtocol,
    adjust: impl FnOnce(&mut PoolOptions),
) -> RunningPool {
    let mut opts = PoolOptions::new(
        "127.0.0.1:0".parse().unwrap(),
        protocol,
        tag,
        Algorithm::Sha256d,
    );
    opts.job_interval = Duration::from_millis(700);
    // Room beyond the proxy's 7 bytes, so extended channels may roll more (out of the padding).
    opts.extranonce2_size = 12;
    adjust(&mut opts);
    let pool = TestPool::bind(opts).await.unwrap();
    let addr = pool.local_addr();
    let authority = pool.authority_public_key();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        pool.run(async move {
            let _ = rx.await;
        })
        .await
        .unwrap()
    });
    RunningPool {
        addr,
        authority,
        stop: Some(tx),
        task,
    }
}

/// An upstream as config TOML and as assignment JSON.
pub struct Up<'a> {
    pub name: &'a str,
    pub coin: &'a str,
    pub pool: &'a RunningPool,
}

impl Up<'_> {
    fn kind(&self) -> &'static str {
        if self.pool.authority.is_some() {
            "sv2"
        } else {
            "sv1"
        }
    }

    fn url(&self) -> String {
        if self.pool.authority.is_some() {
            format!("stratum2+tcp://{}", self.pool.addr)
        } else {
            format!("stratum+tcp://{}", self.pool.addr)
        }
    }

    pub fn toml(&self) -> String {
        let key = self
            .pool
            .authority
            .as_ref()
            .map(|k| format!("authority_public_key = \"{k}\"\n"))
            .unwrap_or_default();
        format!(
            "[[upstreams]]\nname = \"{}\"\ncoin = \"{}\"\nprotocol = \"{}\"\nurl = \"{}\"\n{key}username = \"defpool-proxy\"\npassword = \"x\"\n",
            self.name,
            self.coin,
            self.kind(),
            self.url()
        )
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({"name": self.name, "coin": self.coin, "kind": self.kind(),
            "address": self.url(), "authority_public_key": self.pool.authority,
            "username": "defpool-proxy", "password": "x"})
    }
}

pub fn assignment(epoch: u64, coin: &str, ups: &[Up<'_>]) -> String {
    let upstreams: Vec<_> = ups.iter().map(|u| u.json()).collect();
    serde_json::json!({
        "epoch": epoch, "group": "default", "algorithm": "sha256d",
        "targets": [{"coin": coin, "weight": 1}],
        "upstreams": upstreams, "issued_at_ms": 0, "reason": "test"
    })
    .to_string()
}

pub async fn http(admin: SocketAddr, method: &str, path: &str, body: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(admin).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

pub async fn post_assignment(admin: SocketAddr, body: &str) -> String {
    http(admin, "POST", "/assign", body).await
}

/// A proxy on its own thread and runtime.
pub struct RunningProxy {
    pub started: Started,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), defpool_proxy::proxy::ProxyError>>>,
}

impl RunningProxy {
    pub fn port(&self, protocol: defpool_config::StratumProtocol) -> SocketAddr {
        self.started
            .ports
            .iter()
            .find(|p| p.1 == protocol)
            .expect("port of that protocol")
            .2
    }

    /// The sha256d port a miner of `kind` connects to (SV2 or SV1).
    pub fn port_for(&self, kind: defpool_loadgen::MinerKind) -> SocketAddr {
        self.port(if kind.is_sv2() {
            defpool_config::StratumProtocol::Sv2
        } else {
            defpool_config::StratumProtocol::Sv1
        })
    }

    pub fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.thread.take().unwrap().join().unwrap().unwrap();
    }
}

/// Proxy config with SV1 and SV2 sha256d ports and the given upstreams.
pub fn proxy_config(dir: &Path, id: &str, ups: &[Up<'_>]) -> PathBuf {
    let mut config = format!(
        r#"network = "regtest"
[proxy]
id = "{id}"
outbox_path = "{outbox}"
admin_listen = "127.0.0.1:{admin}"
admin_token = "{TOKEN}"
authority_public_key = "{PROXY_PUB}"
authority_secret_key = "{PROXY_SEC}"
grace_secs = 2
[[proxy.ports]]
algorithm = "sha256d"
protocol = "sv1"
listen = "127.0.0.1:{sv1}"
start_difficulty = 0.000001
min_difficulty = 0.000000001
[[proxy.ports]]
algorithm = "sha256d"
protocol = "sv2"
listen = "127.0.0.1:{sv2}"
start_difficulty = 0.000001
min_difficulty = 0.000000001
"#,
        outbox = dir.join("outbox.db").display(),
        admin = free_port(),
        sv1 = free_port(),
        sv2 = free_port(),
    );
    for u in ups {
        config.push_str(&u.toml());
    }
    let path = dir.join("proxy.toml");
    std::fs::write(&path, config).unwrap();
    path
}

pub async fn start_proxy(config: &Path) -> RunningProxy {
    let valid = defpool_config::load(config).unwrap();
    let (started_tx, started_rx) = oneshot::channel::<Started>();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
            .block_on(proxy::run(valid, Some(started_tx), async move {
                let _ = stop_rx.await;
            }))
    });
    let started = started_rx.await.unwrap();
    RunningProxy {
        started,
        stop: Some(stop_tx),
        thread: Some(thread),
    }
}

/// Credited work per (worker, coin) in an outbox (all of it sealed first), and the appended
/// total.
pub async fn outbox_by_coin(path: &Path, id: &str) -> (BTreeMap<(String, String), u128>, u128) {
    let outbox = Outbox::open(
        path,
        ProxyId(id.into()),
        OutboxOptions {
            seal_interval: Duration::ZERO,
            ..OutboxOptions::default()
        },
    )
    .await
    .unwrap();
    while outbox.seal().await.unwrap().is_some() {}
    let mut by_coin: BTreeMap<(String, String), u128> = BTreeMap::new();
    for batch in outbox.unacknowledged(1_000_000).await.unwrap() {
        for r in batch.records {
            if let Record::Work(w) = r {
                *by_coin
                    .entry((w.worker.clone(), w.coin.as_str().to_string()))
                    .or_default() += w.accepted_work + w.late_work;
            }
        }
    }
    let appended = outbox.totals().await.unwrap().appended_work;
    (by_coin, appended)
}
