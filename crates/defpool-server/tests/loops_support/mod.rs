//! Helpers for the decision loop and ledger service tests: a real store (a SQLite temp file, or
//! a PostgreSQL schema of its own), a validated config from TOML text, a clock the test moves,
//! and a control-wire client.
//!
//! PostgreSQL: `DEFPOOL_TEST_POSTGRES` (default `postgres://postgres@127.0.0.1:5432/test`); if it
//! is unreachable the PostgreSQL tests fail, unless `DEFPOOL_SKIP_POSTGRES=1`.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use defpool_config::Validated;
use defpool_control::{decode, encode, Message, ProxyId};
use defpool_core::secret::Secret;
use defpool_core::Algorithm;
use defpool_server::state::Clock;
use defpool_store::Store;
use sqlx::Connection;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

static COUNTER: AtomicU32 = AtomicU32::new(0);

pub fn unique(name: &str) -> String {
    format!(
        "{name}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

const DEFAULT_PG: &str = "postgres://postgres@127.0.0.1:5432/test";

/// A fresh database; removed when dropped.
pub struct TestDb {
    pub store: Store,
    pub url: String,
    cleanup: Cleanup,
}

enum Cleanup {
    File(PathBuf),
    Schema { admin_url: String, schema: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl TestDb {
    /// `None` when PostgreSQL is skipped on purpose.
    pub async fn open(backend: Backend, name: &str) -> Option<TestDb> {
        match backend {
            Backend::Sqlite => Some(TestDb::sqlite(name).await),
            Backend::Postgres => TestDb::postgres(name).await,
        }
    }

    pub async fn sqlite(name: &str) -> TestDb {
        let path = std::env::temp_dir().join(format!("defpool-{}.db", unique(name)));
        remove_sqlite(&path);
        let url = format!("sqlite:{}", path.display());
        let store = Store::connect(&url).await.expect("open SQLite");
        store.migrate().await.expect("migrate SQLite");
        TestDb {
            store,
            url,
            cleanup: Cleanup::File(path),
        }
    }

    pub async fn postgres(name: &str) -> Option<TestDb> {
        if std::env::var("DEFPOOL_SKIP_POSTGRES").as_deref() == Ok("1") {
            eprintln!("DEFPOOL_SKIP_POSTGRES=1: skipping the PostgreSQL half");
            return None;
        }
        let admin_url =
            std::env::var("DEFPOOL_TEST_POSTGRES").unwrap_or_else(|_| DEFAULT_PG.to_string());
        let mut admin = sqlx::PgConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "PostgreSQL is unreachable ({e}); start it, point DEFPOOL_TEST_POSTGRES at \
                     a server, or set DEFPOOL_SKIP_POSTGRES=1"
                )
            });
        let schema = format!("defpool_{}", unique(name));
        for sql in [
            format!("DROP SCHEMA IF EXISTS {schema} CASCADE"),
            format!("CREATE SCHEMA {schema}"),
        ] {
            sqlx::Executor::execute(&mut admin, sql.as_str())
                .await
                .expect("schema");
        }
        admin.close().await.ok();
        let sep = if admin_url.contains('?') { '&' } else { '?' };
        let url = format!("{admin_url}{sep}options=-csearch_path%3D{schema}");
        let store = Store::connect(&url).await.expect("connect PostgreSQL");
        store.migrate().await.expect("migrate PostgreSQL");
        Some(TestDb {
            store,
            url,
            cleanup: Cleanup::Schema { admin_url, schema },
        })
    }
}

fn remove_sqlite(path: &std::path::Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        match &self.cleanup {
            Cleanup::File(path) => remove_sqlite(path),
            Cleanup::Schema { admin_url, schema } => {
                let (url, schema) = (admin_url.clone(), schema.clone());
                let done = std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("runtime");
                    rt.block_on(async move {
                        if let Ok(mut c) = sqlx::PgConnection::connect(&url).await {
                            let sql = format!("DROP SCHEMA IF EXISTS {schema} CASCADE");
                            let _ = sqlx::Executor::execute(&mut c, sql.as_str()).await;
                            let _ = c.close().await;
                        }
                    })
                });
                let _ = done.join();
            }
        }
    }
}

/// A scratch directory, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("defpool-{}", unique(name)));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes `toml` to `dir/server.toml` and loads it as the binary would.
pub fn config(dir: &TempDir, toml: &str) -> Validated {
    let path = dir.0.join("server.toml");
    std::fs::write(&path, toml).unwrap();
    defpool_config::load(&path).unwrap_or_else(|e| panic!("test config: {e}"))
}

/// A clock the test sets.
#[derive(Clone)]
pub struct ManualClock(pub Arc<AtomicU64>);

impl ManualClock {
    pub fn new(at_ms: u64) -> ManualClock {
        ManualClock(Arc::new(AtomicU64::new(at_ms)))
    }

    pub fn set(&self, at_ms: u64) {
        self.0.store(at_ms, Ordering::SeqCst);
    }

    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }

    pub fn now(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }

    pub fn clock(&self) -> Clock {
        let c = self.0.clone();
        Arc::new(move || c.load(Ordering::SeqCst))
    }
}

/// A proxy's side of the control wire.
pub struct ControlClient {
    lines: tokio::io::Lines<BufReader<OwnedReadHalf>>,
    write: OwnedWriteHalf,
}

impl ControlClient {
    /// Connects and says Hello; returns the client and the Welcome.
    pub async fn connect(addr: SocketAddr, proxy: &str, token: &str) -> (ControlClient, Message) {
        let stream = TcpStream::connect(addr).await.expect("connect control");
        stream.set_nodelay(true).unwrap();
        let (read, write) = stream.into_split();
        let mut c = ControlClient {
            lines: BufReader::new(read).lines(),
            write,
        };
        c.send(&Message::Hello {
            proxy_id: ProxyId(proxy.into()),
            token: Secret::new(token),
            group: "default".into(),
            algorithms: Algorithm::ALL.to_vec(),
            last_acked_sequence: 0,
        })
        .await;
        let welcome = c
            .next(Duration::from_secs(10))
            .await
            .expect("a Welcome in time");
        (c, welcome)
    }

    pub async fn send(&mut self, m: &Message) {
        let mut bytes = encode(m);
        bytes.push(b'\n');
        self.write.write_all(&bytes).await.expect("send");
    }

    /// The next message, or `None` if none came within `wait`.
    pub async fn next(&mut self, wait: Duration) -> Option<Message> {
        match tokio::time::timeout(wait, self.lines.next_line()).await {
            Ok(Ok(Some(line))) => Some(decode(line.as_bytes()).expect("a valid message")),
            Ok(Ok(None)) => panic!("the server closed the control connection"),
            Ok(Err(e)) => panic!("control read failed: {e}"),
            Err(_) => None,
        }
    }
}

/// Polls `check` every 20 ms until it returns `Some`, at most `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
