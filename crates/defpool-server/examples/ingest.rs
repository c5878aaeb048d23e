//! Share ingest through the server: work records per second that proxies get acknowledged.
//!
//! Starts the real server (`defpool_server::server::run`, loopback, SQLite in a temp dir or a
//! fresh PostgreSQL schema), connects P control clients speaking the real wire (Hello →
//! Welcome, then `Batch` → `Ack`) and has each send B batches of R work records, keeping up to
//! W batches unacknowledged as the proxy does (its send window is 64). Each client cycles over
//! its own workers (10,000 users × 2 rigs), timestamped now, so a worker's records of one
//! minute land on one work row, as in production. The batches are encoded before the clock
//! starts; the clock runs from the first batch sent to the last acknowledgement. At the end the
//! store's total work must equal what was sent (each batch applied exactly once).
//!
//! Every configuration in the lists runs on a fresh server and database, one after another:
//!
//! `cargo run --release -p defpool-server --example ingest -- --db sqlite,postgres
//!  --proxies 1,4 --run-batches 1,32 [--batches 300] [--records 1000] [--window 64]`
//!
//! `--run-batches` is the server's `ingest_run_batches` (1: each batch in its own transaction,
//! as before runs). Bounded: at most 16 proxies, 10,000 batches of 10,000 records each, and
//! 300 s per configuration. PostgreSQL: `DEFPOOL_TEST_POSTGRES` or
//! `postgres://postgres@127.0.0.1:5432/test`.

#[path = "support/mod.rs"]
mod support;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use defpool_control::{decode, encode, Batch, Message, ProxyId, Record, WorkRecord};
use defpool_core::Algorithm;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const ADMIN_TOKEN: &str = "ingest-admin-token-0123456789abcdef";
const LIMIT: Duration = Duration::from_secs(300);
/// Each client's workers: 10,000 users with two rigs.
const WORKERS: u64 = 20_000;

fn proxy_id(i: usize) -> String {
    format!("ingest-proxy-{i:02}")
}

fn proxy_token(i: usize) -> String {
    format!("ingest-proxy-token-{i:02}-0123456789")
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Db {
    Sqlite,
    Postgres,
}

struct Options {
    dbs: Vec<Db>,
    proxies: Vec<usize>,
    run_batches: Vec<u32>,
    batches: u64,
    records: u64,
    window: usize,
}

fn list<T: std::str::FromStr>(v: &str, what: &str) -> Result<Vec<T>, String> {
    v.split(',')
        .map(|x| x.trim().parse().map_err(|_| format!("--{what}: `{x}`")))
        .collect()
}

fn options() -> Result<Options, String> {
    let mut o = Options {
        dbs: vec![Db::Sqlite],
        proxies: vec![1],
        run_batches: vec![1, 32],
        batches: 300,
        records: 1_000,
        window: 64,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let [key, value] = pair else {
            return Err(format!("`{}` needs a value", pair[0]));
        };
        match key.as_str() {
            "--db" => {
                o.dbs = value
                    .split(',')
                    .map(|d| match d {
                        "sqlite" => Ok(Db::Sqlite),
                        "postgres" => Ok(Db::Postgres),
                        other => Err(format!("--db: `{other}` (sqlite or postgres)")),
                    })
                    .collect::<Result<_, _>>()?
            }
            "--proxies" => o.proxies = list(value, "proxies")?,
            "--run-batches" => o.run_batches = list(value, "run-batches")?,
            "--batches" => o.batches = value.parse().map_err(|_| "--batches".to_string())?,
            "--records" => o.records = value.parse().map_err(|_| "--records".to_string())?,
            "--window" => o.window = value.parse().map_err(|_| "--window".to_string())?,
            other => return Err(format!("unknown option `{other}`")),
        }
    }
    if o.proxies.iter().any(|p| !(1..=16).contains(p))
        || !(1..=10_000).contains(&o.batches)
        || !(1..=10_000).contains(&o.records)
        || !(1..=1_000).contains(&o.window)
        || o.run_batches.iter().any(|r| !(1..=1_000).contains(r))
    {
        return Err("out of bounds: proxies 1..=16, batches and records 1..=10,000, window and run-batches 1..=1,000".into());
    }
    Ok(o)
}

/// A fresh PostgreSQL schema; the URL selects it.
async fn pg_schema() -> Result<(String, String, String), String> {
    use sqlx::Connection;
    let admin = std::env::var("DEFPOOL_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string());
    let mut c = sqlx::PgConnection::connect(&admin)
        .await
        .map_err(|e| format!("PostgreSQL: {e}"))?;
    let schema = format!("defpool_ingest_{}", std::process::id());
    for sql in [
        format!("DROP SCHEMA IF EXISTS {schema} CASCADE"),
        format!("CREATE SCHEMA {schema}"),
    ] {
        sqlx::Executor::execute(&mut c, sql.as_str())
            .await
            .map_err(|e| format!("PostgreSQL: {e}"))?;
    }
    let _ = c.close().await;
    let sep = if admin.contains('?') { '&' } else { '?' };
    Ok((
        format!("{admin}{sep}options=-csearch_path%3D{schema}"),
        admin,
        schema,
    ))
}

async fn drop_schema(admin: &str, schema: &str) {
    use sqlx::Connection;
    if let Ok(mut c) = sqlx::PgConnection::connect(admin).await {
        let _ = sqlx::Executor::execute(
            &mut c,
            format!("DROP SCHEMA IF EXISTS {schema} CASCADE").as_str(),
        )
        .await;
        let _ = c.close().await;
    }
}

/// Client `p`'s batches, each encoded as a wire line, and the work they carry.
fn batches(p: usize, o: &Options) -> (Vec<Vec<u8>>, u128) {
    let mut total = 0u128;
    let lines = (1..=o.batches)
        .map(|seq| {
            let now = now_ms();
            let records = (0..o.records)
                .map(|i| {
                    let k = ((seq - 1) * o.records + i) % WORKERS;
                    let work = (1u128 << 40) + u128::from(k);
                    total += work;
                    let mut rejected = std::collections::BTreeMap::new();
                    if k.is_multiple_of(7) {
                        rejected.insert("stale-share".to_string(), 1);
                    }
                    Record::Work(WorkRecord {
                        user: format!("ltc1qp{p:02}user{:05}", k / 2),
                        worker: format!("rig{}", k % 2),
                        coin: "LTC".parse().expect("LTC is a ticker"),
                        epoch: 1,
                        upstream: "ltc-solo".into(),
                        accepted_work: work,
                        accepted_shares: 30,
                        late_work: 0,
                        late_shares: 0,
                        rejected,
                        from_ms: now - 1_000,
                        to_ms: now,
                    })
                })
                .collect();
            let mut line = encode(&Message::Batch(Batch {
                proxy_id: ProxyId(proxy_id(p)),
                sequence: seq,
                created_at_ms: now,
                records,
            }));
            line.push(b'\n');
            line
        })
        .collect();
    (lines, total)
}

/// One proxy: Hello, Welcome, then its batches with up to `window` unacknowledged. Returns
/// each batch's time from sent to acknowledged.
async fn client(
    control: std::net::SocketAddr,
    p: usize,
    lines: Vec<Vec<u8>>,
    window: usize,
    go: tokio::sync::watch::Receiver<bool>,
) -> Result<Vec<Duration>, String> {
    let (read, mut write) =
        support::hello(control, proxy_id(p), proxy_token(p), Algorithm::Scrypt).await?;
    let mut replies = BufReader::new(read).lines();
    loop {
        match next(&mut replies, p, "Welcome").await? {
            Message::Welcome { .. } => break,
            Message::Error { code, message } => {
                return Err(format!("client {p}: {code}: {message}"))
            }
            _ => {}
        }
    }
    let mut go = go;
    go.wait_for(|g| *g)
        .await
        .map_err(|_| "stopped before the start".to_string())?;
    let total = lines.len();
    let mut sent: VecDeque<(u64, Instant)> = VecDeque::with_capacity(window);
    let mut took = Vec::with_capacity(total);
    let mut lines = lines.into_iter();
    let mut seq = 0u64;
    while took.len() < total {
        while sent.len() < window {
            let Some(line) = lines.next() else { break };
            seq += 1;
            sent.push_back((seq, Instant::now()));
            write
                .write_all(&line)
                .await
                .map_err(|e| format!("client {p}: write: {e}"))?;
        }
        match next(&mut replies, p, "an Ack").await? {
            Message::Ack { sequence } => match sent.pop_front() {
                Some((s, at)) if s == sequence => took.push(at.elapsed()),
                other => {
                    return Err(format!(
                        "client {p}: Ack {sequence} out of order (expected {other:?})"
                    ))
                }
            },
            Message::Error { code, message } => {
                return Err(format!("client {p}: {code}: {message}"))
            }
            _ => {}
        }
    }
    Ok(took)
}

/// The next message from the server.
async fn next(
    replies: &mut tokio::io::Lines<BufReader<tokio::net::tcp::OwnedReadHalf>>,
    p: usize,
    what: &str,
) -> Result<Message, String> {
    match tokio::time::timeout(LIMIT, replies.next_line()).await {
        Ok(Ok(Some(l))) => decode(l.as_bytes()).map_err(|e| format!("client {p}: {e}")),
        Ok(Ok(None)) => Err(format!("client {p}: closed while waiting for {what}")),
        Ok(Err(e)) => Err(format!("client {p}: read: {e}")),
        Err(_) => Err(format!("client {p}: no {what} within {LIMIT:?}")),
    }
}

/// `GET /metrics`; the value of a counter without labels.
async fn counter(api: std::net::SocketAddr, name: &str) -> Result<f64, String> {
    let mut s = TcpStream::connect(api)
        .await
        .map_err(|e| format!("API connect: {e}"))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await
        .map_err(|e| format!("API write: {e}"))?;
    let mut out = String::new();
    s.read_to_string(&mut out)
        .await
        .map_err(|e| format!("API read: {e}"))?;
    out.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .ok_or_else(|| format!("no {name} in /metrics"))
}

fn ms(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3
}

async fn run_one(o: &Options, db: Db, proxies: usize, run_batches: u32) -> Result<(), String> {
    let dir: PathBuf = std::env::temp_dir().join(format!("defpool-ingest-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("temp dir: {e}"))?;
    let (database_url, pg) = match db {
        Db::Sqlite => (format!("sqlite:{}", dir.join("ingest.db").display()), None),
        Db::Postgres => {
            let (url, admin, schema) = pg_schema().await?;
            (url, Some((admin, schema)))
        }
    };
    let mut toml = format!(
        "network = \"regtest\"\n[server]\ndatabase_url = \"sqlite:{}\"\n\
         control_listen = \"127.0.0.1:{}\"\napi_listen = \"127.0.0.1:{}\"\n\
         admin_token = \"{ADMIN_TOKEN}\"\ningest_run_batches = {run_batches}\n\
         [server.rate_limit]\nrequests_per_sec = 1000000\nburst = 1000000\n",
        dir.join("unused.db").display(),
        support::free_port()?,
        support::free_port()?
    );
    for p in 0..proxies {
        toml.push_str(&format!(
            "[[server.proxies]]\nid = \"{}\"\ntoken = \"{}\"\n",
            proxy_id(p),
            proxy_token(p)
        ));
    }
    let config = dir.join("server.toml");
    std::fs::write(&config, toml).map_err(|e| format!("config: {e}"))?;
    let mut valid = defpool_config::load(&config).map_err(|e| format!("config: {e}"))?;
    if let Some(s) = valid.config.server.as_mut() {
        s.database_url = database_url.clone();
    }

    let server = support::Server::start(valid).await?;
    let started = &server.started;

    let mut expected = 0u128;
    let (go_tx, go_rx) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    for p in 0..proxies {
        let (lines, work) = batches(p, o);
        expected += work;
        tasks.spawn(client(started.control, p, lines, o.window, go_rx.clone()));
    }
    // Clients connect and get their Welcome before the clock starts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t0 = Instant::now();
    let _ = go_tx.send(true);
    let mut took = Vec::new();
    let outcome = tokio::time::timeout(LIMIT, async {
        while let Some(r) = tasks.join_next().await {
            took.extend(r.map_err(|e| format!("client task: {e}"))??);
        }
        Ok::<_, String>(())
    })
    .await;
    let elapsed = t0.elapsed();
    let applies = counter(started.api, "defpool_batch_transactions_total").await;
    server.stop().await;
    let stored = match defpool_store::Store::connect(&database_url).await {
        Ok(s) => s.total_work().await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    if let Some((admin, schema)) = pg {
        drop_schema(&admin, &schema).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
    outcome.map_err(|_| format!("not done within {LIMIT:?}"))??;

    let records = o.batches * o.records * proxies as u64;
    took.sort();
    let applies = applies?;
    println!(
        "{db:?}, {proxies} prox{}, run up to {run_batches}: {records} records in {} batches: \
         {:.2} s, {:.0} records/s; {:.1} batches per apply; batch sent → acked p50 {:.1} ms, \
         p99 {:.1} ms, max {:.1} ms",
        if proxies == 1 { "y" } else { "ies" },
        took.len(),
        elapsed.as_secs_f64(),
        records as f64 / elapsed.as_secs_f64(),
        took.len() as f64 / applies.max(1.0),
        ms(&took, 0.5),
        ms(&took, 0.99),
        ms(&took, 1.0),
    );
    let stored = stored?;
    if stored != expected {
        return Err(format!(
            "stored work {stored} != sent {expected}: not exactly once"
        ));
    }
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), String> {
    let o = options()?;
    for &db in &o.dbs {
        for &proxies in &o.proxies {
            for &run in &o.run_batches {
                run_one(&o, db, proxies, run).await?;
            }
        }
    }
    Ok(())
}
