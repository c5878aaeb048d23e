//! SV1 miners (with and without extranonce.subscribe) mine through the proxy to SV1 pools,
//! through two switches and one failover: nobody is disconnected and every acknowledged share is
//! in the outbox under the coin whose job it solved.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use defpool_control::Record;
use defpool_core::Algorithm;
use defpool_loadgen::{MinerKind, MinersOptions, PoolOptions, PoolProtocol, TestPool};
use defpool_proxy::outbox::{Outbox, OutboxOptions};
use defpool_proxy::proxy::{self, Started};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

const TOKEN: &str = "test-admin-token-0123456789";
const ADDRESS: &str = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("defpool-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn pool(
    tag: &str,
) -> (
    SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<defpool_loadgen::PoolReport>,
) {
    let mut opts = PoolOptions::new(
        "127.0.0.1:0".parse().unwrap(),
        PoolProtocol::Sv1,
        tag,
        Algorithm::Sha256d,
    );
    opts.job_interval = Duration::from_millis(700);
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

fn assignment(epoch: u64, coin: &str, ups: &[(&str, &str, SocketAddr)]) -> String {
    let upstreams: Vec<_> = ups
        .iter()
        .map(|(name, coin, addr)| {
            serde_json::json!({"name": name, "coin": coin, "kind": "sv1", "address": format!("stratum+tcp://{addr}"), "username": "defpool-proxy", "password": "x"})
        })
        .collect();
    serde_json::json!({
        "epoch": epoch, "group": "default", "algorithm": "sha256d",
        "targets": [{"coin": coin, "weight": 1}],
        "upstreams": upstreams, "issued_at_ms": 0, "reason": "test"
    })
    .to_string()
}

async fn post(admin: SocketAddr, body: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(admin).await.unwrap();
    let req = format!(
        "POST /assign HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sv1_miners_follow_switches_and_a_failover_without_disconnects() {
    let dir = temp_dir("switch-sv1");
    let (btc_a, btc_a_stop, btc_a_task) = pool("BTC").await;
    let (btc_b, btc_b_stop, btc_b_task) = pool("BTC").await;
    let (bch, bch_stop, bch_task) = pool("BCH").await;
    let outbox_path = dir.join("outbox.db");
    let config = format!(
        r#"
network = "regtest"
[proxy]
id = "test-proxy"
outbox_path = "{outbox}"
admin_listen = "127.0.0.1:{admin_port}"
admin_token = "{TOKEN}"
grace_secs = 2
[[proxy.ports]]
algorithm = "sha256d"
protocol = "sv1"
listen = "127.0.0.1:{miner_port}"
start_difficulty = 0.000001
min_difficulty = 0.000000001
[[upstreams]]
name = "btc-a"
coin = "BTC"
protocol = "sv1"
url = "stratum+tcp://{btc_a}"
username = "defpool-proxy"
password = "x"
[[upstreams]]
name = "btc-b"
coin = "BTC"
protocol = "sv1"
url = "stratum+tcp://{btc_b}"
username = "defpool-proxy"
password = "x"
[[upstreams]]
name = "bch"
coin = "BCH"
protocol = "sv1"
url = "stratum+tcp://{bch}"
username = "defpool-proxy"
password = "x"
"#,
        outbox = outbox_path.display(),
        admin_port = free_port(),
        miner_port = free_port(),
    );
    let config_path = dir.join("proxy.toml");
    std::fs::write(&config_path, config).unwrap();
    let valid = defpool_config::load(&config_path).unwrap();
    let (started_tx, started_rx) = oneshot::channel::<Started>();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    // The proxy gets its own runtime, as in its own process.
    let proxy_task = std::thread::spawn(move || {
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
    let port = started.ports[0].2;
    let admin = started.admin;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut runs = Vec::new();
    for kind in [MinerKind::Sv1, MinerKind::Sv1ExtranonceSubscribe] {
        let mut o = MinersOptions::new(port, kind, Algorithm::Sha256d);
        o.count = 3;
        o.username = ADDRESS.into();
        o.password = "d=0.000001".into();
        o.duration = Duration::from_secs(11);
        o.version_rolling = kind == MinerKind::Sv1;
        o.target_shares_per_sec = Some(60.0);
        runs.push(tokio::spawn(defpool_loadgen::run_miners(o, None)));
    }
    let ups = [
        ("btc-a", "BTC", btc_a),
        ("btc-b", "BTC", btc_b),
        ("bch", "BCH", bch),
    ];
    tokio::time::sleep(Duration::from_secs(2)).await;
    let r = post(admin, &assignment(1, "BCH", &ups)).await;
    assert!(r.contains("applied"), "{r}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let r = post(admin, &assignment(2, "BTC", &ups)).await;
    assert!(r.contains("applied"), "{r}");
    // A stale epoch is refused.
    let r = post(admin, &assignment(1, "BCH", &ups)).await;
    assert!(r.contains("stale"), "{r}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Failover: the active BTC pool dies.
    btc_a_stop.send(()).unwrap();
    let btc_a_report = btc_a_task.await.unwrap();

    let mut by_coin_miners: BTreeMap<String, u128> = BTreeMap::new();
    let mut total = 0u128;
    for run in runs {
        let report = run.await.unwrap().unwrap();
        assert_eq!(report.disconnects, 0, "{report:?}");
        assert!(report.shares_accepted > 20, "{report:?}");
        for (coin, w) in &report.accepted_work_by_coin {
            *by_coin_miners.entry(coin.clone()).or_default() += w;
        }
        total += report.accepted_work_total;
    }
    let _ = stop_tx.send(());
    proxy_task.join().unwrap().unwrap();
    btc_b_stop.send(()).unwrap();
    bch_stop.send(()).unwrap();
    let btc_b_report = btc_b_task.await.unwrap();
    let bch_report = bch_task.await.unwrap();
    assert!(btc_a_report.shares_accepted > 0);
    assert!(bch_report.shares_accepted > 0, "{bch_report:?}");
    assert!(
        btc_b_report.shares_accepted > 0,
        "failover never reached btc-b: {btc_b_report:?}"
    );

    // The outbox holds exactly what miners were told was accepted, per coin.
    let outbox = Outbox::open(
        &outbox_path,
        defpool_control::ProxyId("test-proxy".into()),
        OutboxOptions {
            seal_interval: Duration::ZERO,
            ..OutboxOptions::default()
        },
    )
    .await
    .unwrap();
    while outbox.seal().await.unwrap().is_some() {}
    let mut by_coin_outbox: BTreeMap<String, u128> = BTreeMap::new();
    for batch in outbox.unacknowledged(100_000).await.unwrap() {
        for r in batch.records {
            if let Record::Work(w) = r {
                *by_coin_outbox
                    .entry(w.coin.as_str().to_string())
                    .or_default() += w.accepted_work + w.late_work;
            }
        }
    }
    eprintln!(
        "miners by coin {by_coin_miners:?}; pools: btc-a {} btc-b {} bch {} shares",
        btc_a_report.shares_accepted, btc_b_report.shares_accepted, bch_report.shares_accepted
    );
    assert_eq!(by_coin_outbox, by_coin_miners);
    assert_eq!(outbox.totals().await.unwrap().appended_work, total);
    assert!(by_coin_miners.contains_key("BTC") && by_coin_miners.contains_key("BCH"));
}
