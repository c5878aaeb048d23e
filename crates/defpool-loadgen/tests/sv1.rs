//! SV1 miners against the SV1 test pool on loopback: both sides must agree share for share.

use std::time::Duration;

use defpool_core::coin::Algorithm;
use defpool_loadgen::{
    run_miners, MinerKind, MinersOptions, MinersReport, PoolOptions, PoolProtocol, PoolReport,
    TestPool,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

struct Running {
    addr: std::net::SocketAddr,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<PoolReport>,
}

async fn pool(opts: PoolOptions) -> Running {
    let pool = TestPool::bind(opts).await.unwrap();
    let addr = pool.local_addr();
    let (stop, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        pool.run(async {
            let _ = rx.await;
        })
        .await
        .unwrap()
    });
    Running { addr, stop, task }
}

fn pool_opts(tag: &str, algorithm: Algorithm) -> PoolOptions {
    let mut o = PoolOptions::new(
        "127.0.0.1:0".parse().unwrap(),
        PoolProtocol::Sv1,
        tag,
        algorithm,
    );
    o.job_interval = Duration::from_millis(300);
    o
}

fn miners(addr: std::net::SocketAddr, kind: MinerKind, algorithm: Algorithm) -> MinersOptions {
    let mut o = MinersOptions::new(addr, kind, algorithm);
    o.count = 4;
    o.username = "tb1qloadgen".into();
    o.duration = Duration::from_secs(2);
    o.max_shares = Some(400);
    o
}

async fn mine(
    pool_o: PoolOptions,
    miner_o: impl FnOnce(std::net::SocketAddr) -> MinersOptions,
) -> (MinersReport, PoolReport) {
    let p = pool(pool_o).await;
    let report = run_miners(miner_o(p.addr), None).await.unwrap();
    p.stop.send(()).unwrap();
    let pool_report = p.task.await.unwrap();
    (report, pool_report)
}

fn assert_agree(m: &MinersReport, p: &PoolReport, tag: &str) {
    assert!(m.shares_accepted > 0, "no share accepted: {m:#?}");
    assert_eq!(m.connected, m.miners, "{m:#?}");
    assert_eq!(m.disconnects, 0, "{m:#?}");
    assert_eq!(m.shares_unanswered, 0, "{m:#?}");
    assert_eq!(m.shares_accepted, p.shares_accepted, "{m:#?}\n{p:#?}");
    assert_eq!(m.accepted_work_by_coin, p.accepted_work_by_coin);
    assert_eq!(m.accepted_work_total, p.accepted_work);
    assert_eq!(
        m.accepted_work_by_coin.keys().collect::<Vec<_>>(),
        vec![tag]
    );
    assert!(m.latency_us_p50 > 0 && m.latency_us_p50 <= m.latency_us_p99);
    assert!(m.latency_us_p99 <= m.latency_us_max);
    assert!(m.shares_per_sec > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sv1_miners_and_pool_agree() {
    let (m, p) = mine(pool_opts("BTC", Algorithm::Sha256d), |a| {
        miners(a, MinerKind::Sv1, Algorithm::Sha256d)
    })
    .await;
    assert_agree(&m, &p, "BTC");
    // Stale shares after a clean job may be refused, nothing else.
    for reason in m.rejects_by_reason.keys() {
        assert!(reason.contains("Stale") || reason.contains("Job"), "{m:#?}");
    }
    assert_eq!(p.connections, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extranonce_subscribe_and_version_rolling() {
    let (m, p) = mine(pool_opts("LTC", Algorithm::Sha256d), |a| {
        let mut o = miners(a, MinerKind::Sv1ExtranonceSubscribe, Algorithm::Sha256d);
        o.version_rolling = true;
        o
    })
    .await;
    assert_agree(&m, &p, "LTC");
    assert!(!p
        .shares_rejected_by_reason
        .contains_key("invalid-version-bits"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_that_ignores_configure_still_gets_valid_shares() {
    let mut po = pool_opts("BCH", Algorithm::Sha256d);
    po.ignore_configure = true;
    let (m, p) = mine(po, |a| {
        let mut o = miners(a, MinerKind::Sv1, Algorithm::Sha256d);
        o.version_rolling = true;
        o
    })
    .await;
    assert_agree(&m, &p, "BCH");
    assert!(!p
        .shares_rejected_by_reason
        .contains_key("invalid-version-bits"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrypt_miners_and_pool_agree() {
    let (m, p) = mine(pool_opts("DOGE", Algorithm::Scrypt), |a| {
        let mut o = miners(a, MinerKind::Sv1, Algorithm::Scrypt);
        o.count = 2;
        o.max_shares = Some(40);
        o
    })
    .await;
    assert_agree(&m, &p, "DOGE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_shares_bounds_the_run_and_pacing_holds_the_rate() {
    let (m, p) = mine(pool_opts("BTC", Algorithm::Sha256d), |a| {
        let mut o = miners(a, MinerKind::Sv1, Algorithm::Sha256d);
        o.duration = Duration::from_secs(20);
        o.max_shares = Some(30);
        o.target_shares_per_sec = Some(40.0);
        o
    })
    .await;
    assert_agree(&m, &p, "BTC");
    assert_eq!(m.shares_submitted, 30);
    // 30 shares at 40/s: well under the 20 s bound, and not much faster than the pace.
    assert!(m.elapsed_secs < 10.0 && m.elapsed_secs > 0.4, "{m:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_miners_connect_and_submit_nothing() {
    let (m, p) = mine(pool_opts("BTC", Algorithm::Sha256d), |a| {
        let mut o = miners(a, MinerKind::Sv1, Algorithm::Sha256d);
        o.count = 50;
        o.hash = false;
        o.duration = Duration::from_millis(800);
        o.connect_rate_per_sec = 200;
        o
    })
    .await;
    assert_eq!(m.connected, 50);
    assert_eq!(m.shares_submitted, 0);
    assert!(m.jobs_received >= 50);
    assert_eq!(p.connections, 50);
}

#[tokio::test]
async fn non_loopback_targets_are_refused() {
    let o = MinersOptions::new(
        "192.0.2.1:3333".parse().unwrap(),
        MinerKind::Sv1,
        Algorithm::Sha256d,
    );
    let e = run_miners(o, None).await.unwrap_err();
    assert!(e.to_string().contains("loopback"), "{e}");
    let po = PoolOptions::new(
        "0.0.0.0:0".parse().unwrap(),
        PoolProtocol::Sv1,
        "BTC",
        Algorithm::Sha256d,
    );
    assert!(TestPool::bind(po).await.is_err());
}

async fn read_json(r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> serde_json::Value {
    let mut line = String::new();
    let n = tokio::time::timeout(Duration::from_secs(5), r.read_line(&mut line))
        .await
        .unwrap()
        .unwrap();
    assert!(n > 0, "connection closed");
    serde_json::from_str(&line).unwrap()
}

/// The reply with this id, skipping notifications.
async fn reply(r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>, id: u64) -> serde_json::Value {
    loop {
        let v = read_json(r).await;
        if v["id"] == id {
            return v;
        }
    }
}

#[tokio::test]
async fn malformed_submits_earn_errors_not_disconnects() {
    let mut po = pool_opts("BTC", Algorithm::Sha256d);
    let dir = std::env::temp_dir().join(format!("loadgen-pool-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let stats = dir.join("pool.json");
    po.stats_path = Some(stats.clone());
    let p = pool(po).await;
    let (rd, mut wr) = TcpStream::connect(p.addr).await.unwrap().into_split();
    let mut rd = BufReader::new(rd);
    let send = |line: &str| format!("{line}\n");
    wr.write_all(send(r#"{"id":1,"method":"mining.subscribe","params":["test"]}"#).as_bytes())
        .await
        .unwrap();
    let sub = reply(&mut rd, 1).await;
    assert_eq!(sub["result"][2], 8);
    wr.write_all(send(r#"{"id":2,"method":"mining.authorize","params":["a.b","x"]}"#).as_bytes())
        .await
        .unwrap();
    assert_eq!(reply(&mut rd, 2).await["result"], true);
    for (id, line) in [
        (
            3,
            r#"{"id":3,"method":"mining.submit","params":["a.b","1","zz","0","0"]}"#,
        ),
        (4, r#"{"id":4,"method":"mining.submit","params":["a.b"]}"#),
        (
            5,
            r#"{"id":5,"method":"mining.submit","params":["a.b","ffff","0000000000000000","6000000a","00000001"]}"#,
        ),
        (
            6,
            r#"{"id":6,"method":"mining.submit","params":["a.b","1","00","60000000","00000001"]}"#,
        ),
        (7, r#"{"id":7,"method":"mining.frobnicate","params":[]}"#),
    ] {
        wr.write_all(send(line).as_bytes()).await.unwrap();
        let r = reply(&mut rd, id).await;
        assert!(r["result"].is_null(), "{r}");
        assert!(r["error"].is_array(), "{r}");
        if id == 5 {
            assert_eq!(r["error"][0], 21, "{r}");
        }
    }
    // Still connected and served.
    wr.write_all(send(r#"{"id":8,"method":"mining.extranonce.subscribe","params":[]}"#).as_bytes())
        .await
        .unwrap();
    assert_eq!(reply(&mut rd, 8).await["result"], true);
    // Broken JSON is a protocol violation: the pool closes the connection.
    wr.write_all(b"{not json\n").await.unwrap();
    let mut rest = String::new();
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let mut l = String::new();
            if rd.read_line(&mut l).await.unwrap_or(0) == 0 {
                break;
            }
            rest.push_str(&l);
        }
    })
    .await
    .expect("the pool closes after a protocol violation");
    assert!(rest.contains("\"error\":[20"), "{rest}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let written: PoolReport = serde_json::from_slice(&std::fs::read(&stats).unwrap()).unwrap();
    assert_eq!(written.shares_rejected, 4, "{written:#?}");
    p.stop.send(()).unwrap();
    let report = p.task.await.unwrap();
    assert_eq!(report.shares_accepted, 0);
    assert_eq!(report.shares_rejected_by_reason["malformed"], 2);
    assert_eq!(report.shares_rejected_by_reason["invalid-job-id"], 1);
    assert_eq!(report.connections_open, 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_latency_counts_only_shares_sent_after_the_given_time() {
    // From the start: every answered share counts.
    let (m, _) = mine(pool_opts("BTC", Algorithm::Sha256d), |a| {
        let mut o = miners(a, MinerKind::Sv1, Algorithm::Sha256d);
        o.latency_after = Some(Duration::ZERO);
        o
    })
    .await;
    let steady = m.steady_latency.clone().expect("asked for a steady window");
    assert!(steady.shares > 0, "{m:#?}");
    assert_eq!(
        steady.shares,
        m.shares_accepted + m.shares_rejected,
        "{m:#?}"
    );
    assert_eq!(steady.latency_us_max, m.latency_us_max);
    assert!(steady.latency_us_p50 <= steady.latency_us_p99);

    // After the end of the run: none counts, although shares were answered.
    let (m, _) = mine(pool_opts("BTC", Algorithm::Sha256d), |a| {
        let mut o = miners(a, MinerKind::Sv1, Algorithm::Sha256d);
        o.latency_after = Some(Duration::from_secs(60));
        o
    })
    .await;
    assert!(m.shares_accepted > 0, "{m:#?}");
    let steady = m.steady_latency.clone().expect("asked for a steady window");
    assert_eq!((steady.shares, steady.latency_us_max), (0, 0), "{m:#?}");

    // Not asked for: not reported.
    let (m, _) = mine(pool_opts("BTC", Algorithm::Sha256d), |a| {
        miners(a, MinerKind::Sv1, Algorithm::Sha256d)
    })
    .await;
    assert_eq!(m.steady_latency, None);
}
