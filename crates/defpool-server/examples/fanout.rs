//! Assignment fan-out: how long after an operator's `POST /api/admin/assignments` each of 100
//! connected proxies holds the new assignment.
//!
//! Starts the real server (SQLite in a temp dir, loopback, ports chosen by the OS) with 100
//! `[[server.proxies]]`, connects 100 control clients speaking the real wire (newline-delimited
//! JSON, Hello → Welcome), then pushes N assignments with rising epochs, one at a time. For each
//! push the clock starts just before the POST; every client notes when its `Assign` for that
//! epoch arrives. Prints p50/p99/max over all N × 100 receipts, and the POST round trip.
//!
//! `cargo run --release -p defpool-server --example fanout -- [PUSHES (50)] [CLIENTS (100)]`
//! (bounded: at most 1,000 pushes and 1,000 clients, 10 s per push).

#[path = "support/mod.rs"]
mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use defpool_control::{decode, Message};
use defpool_core::Algorithm;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

const ADMIN_TOKEN: &str = "fanout-admin-token-0123456789abcdef";
const PUSH_TIMEOUT: Duration = Duration::from_secs(10);

fn proxy_id(i: usize) -> String {
    format!("fanout-proxy-{i:04}")
}

fn proxy_token(i: usize) -> String {
    format!("fanout-proxy-token-{i:04}-0123456789")
}

fn config_toml(db: &std::path::Path, clients: usize) -> Result<String, String> {
    let mut out = format!(
        "network = \"regtest\"\n[server]\ndatabase_url = \"sqlite:{}\"\n\
         control_listen = \"127.0.0.1:{}\"\napi_listen = \"127.0.0.1:{}\"\n\
         admin_token = \"{ADMIN_TOKEN}\"\nwhitelist = [\"BTC\", \"BCH\"]\n",
        db.display(),
        support::free_port()?,
        support::free_port()?
    );
    for i in 0..clients {
        out.push_str(&format!(
            "[[server.proxies]]\nid = \"{}\"\ntoken = \"{}\"\n",
            proxy_id(i),
            proxy_token(i)
        ));
    }
    Ok(out)
}

fn assignment_json(epoch: u64) -> String {
    let coin = if epoch.is_multiple_of(2) {
        "BTC"
    } else {
        "BCH"
    };
    serde_json::json!({
        "epoch": epoch, "group": "default", "algorithm": "sha256d",
        "targets": [{"coin": coin, "weight": 1}],
        "upstreams": [{"name": format!("{}-pool", coin.to_lowercase()), "coin": coin,
            "kind": "sv1", "address": "stratum+tcp://127.0.0.1:1", "username": "fanout",
            "password": "x"}],
        "issued_at_ms": 0, "reason": "fan-out benchmark"
    })
    .to_string()
}

/// One control client: Hello, Welcome, then every `Assign`'s epoch and arrival time.
async fn client(
    control: std::net::SocketAddr,
    i: usize,
    welcomed: mpsc::Sender<()>,
    receipts: mpsc::UnboundedSender<(u64, Instant)>,
) -> Result<(), String> {
    // The write half stays open: dropping it would end the session.
    let (read, _write) =
        support::hello(control, proxy_id(i), proxy_token(i), Algorithm::Sha256d).await?;
    let mut lines = BufReader::new(read).lines();
    let mut welcomed = Some(welcomed);
    while let Some(line) = lines
        .next_line()
        .await
        .map_err(|e| format!("client {i}: read: {e}"))?
    {
        let at = Instant::now();
        match decode(line.as_bytes()).map_err(|e| format!("client {i}: {e}"))? {
            Message::Welcome { .. } => {
                if let Some(w) = welcomed.take() {
                    let _ = w.send(()).await;
                }
            }
            Message::Assign(a) => {
                let _ = receipts.send((a.epoch, at));
            }
            Message::Error { code, message } => {
                return Err(format!("client {i}: server error {code}: {message}"))
            }
            _ => {}
        }
    }
    Ok(())
}

/// `POST /api/admin/assignments` over a fresh connection; the response's status line.
async fn post(api: std::net::SocketAddr, body: &str) -> Result<String, String> {
    let mut s = TcpStream::connect(api)
        .await
        .map_err(|e| format!("API connect: {e}"))?;
    s.set_nodelay(true).ok();
    let req = format!(
        "POST /api/admin/assignments HTTP/1.1\r\nHost: 127.0.0.1\r\n\
         Authorization: Bearer {ADMIN_TOKEN}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("API write: {e}"))?;
    let mut out = String::new();
    s.read_to_string(&mut out)
        .await
        .map_err(|e| format!("API read: {e}"))?;
    Ok(out)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn arg(n: usize, default: usize) -> usize {
    std::env::args()
        .nth(n)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
        .clamp(1, 1_000)
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let pushes = arg(1, 50);
    let clients = arg(2, 100);
    let dir: PathBuf = std::env::temp_dir().join(format!("defpool-fanout-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("temp dir: {e}"))?;
    let config = dir.join("server.toml");
    std::fs::write(&config, config_toml(&dir.join("fanout.db"), clients)?)
        .map_err(|e| format!("config: {e}"))?;
    let valid = defpool_config::load(&config).map_err(|e| format!("config: {e}"))?;

    let server = support::Server::start(valid).await?;
    let started = &server.started;

    let (welcome_tx, mut welcome_rx) = mpsc::channel(clients);
    let (receipt_tx, mut receipt_rx) = mpsc::unbounded_channel();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..clients {
        tasks.spawn(client(
            started.control,
            i,
            welcome_tx.clone(),
            receipt_tx.clone(),
        ));
    }
    drop(welcome_tx);
    for n in 0..clients {
        tokio::time::timeout(Duration::from_secs(30), welcome_rx.recv())
            .await
            .map_err(|_| format!("only {n} of {clients} clients welcomed within 30 s"))?;
    }

    let mut receipts = Vec::with_capacity(pushes * clients);
    let mut posts = Vec::with_capacity(pushes);
    let mut missing = 0usize;
    for k in 0..pushes {
        let epoch = 1_000 + k as u64;
        let body = assignment_json(epoch);
        let t0 = Instant::now();
        let response = post(started.api, &body).await?;
        posts.push(t0.elapsed());
        if !response.starts_with("HTTP/1.1 200") {
            return Err(format!(
                "push {epoch}: {}",
                response.lines().next().unwrap_or("")
            ));
        }
        let mut got = 0usize;
        let deadline = tokio::time::Instant::now() + PUSH_TIMEOUT;
        while got < clients {
            match tokio::time::timeout_at(deadline, receipt_rx.recv()).await {
                Ok(Some((e, at))) if e == epoch => {
                    receipts.push(at.saturating_duration_since(t0));
                    got += 1;
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        missing += clients - got;
        // Pushes apart, as decisions are (a decision loop does not fire back to back).
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    server.stop().await;
    tasks.abort_all();
    let _ = std::fs::remove_dir_all(&dir);

    receipts.sort();
    posts.sort();
    println!("assignment fan-out: {pushes} pushes × {clients} control clients, SQLite, loopback");
    println!(
        "  POST → Assign received, over {} receipts: p50 {}, p99 {}, max {}",
        receipts.len(),
        ms(percentile(&receipts, 50.0)),
        ms(percentile(&receipts, 99.0)),
        ms(receipts.last().copied().unwrap_or_default())
    );
    println!(
        "  POST round trip: p50 {}, p99 {}, max {}",
        ms(percentile(&posts, 50.0)),
        ms(percentile(&posts, 99.0)),
        ms(posts.last().copied().unwrap_or_default())
    );
    let within = receipts
        .iter()
        .filter(|d| **d <= Duration::from_millis(100))
        .count();
    println!(
        "  within 100 ms: {within} of {} ({missing} not received within {} s)",
        pushes * clients,
        PUSH_TIMEOUT.as_secs()
    );
    if missing > 0 {
        return Err(format!("{missing} receipts missing"));
    }
    Ok(())
}
