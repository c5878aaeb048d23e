//! Real processes on loopback: a test pool, the proxy, and simulated SV1 miners. The proxy is
//! killed with SIGKILL under load and restarted; afterwards its outbox holds every share the
//! miners were told was accepted (counted independently by the load generator).

mod common;

use common::*;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use defpool_control::{ProxyId, Record};
use defpool_proxy::outbox::{Outbox, OutboxOptions};

const ADDRESS: &str = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080";

fn wait_for_port(port: u16) {
    let until = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < until, "port {port} never opened");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn outbox_work(path: &Path) -> (u128, u128) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let outbox = Outbox::open(
                path,
                ProxyId("kill-proxy".into()),
                OutboxOptions {
                    seal_interval: Duration::ZERO,
                    ..OutboxOptions::default()
                },
            )
            .await
            .unwrap();
            while outbox.seal().await.unwrap().is_some() {}
            let mut work = 0u128;
            let mut sequences = std::collections::BTreeSet::new();
            for batch in outbox.unacknowledged(1_000_000).await.unwrap() {
                assert!(sequences.insert(batch.sequence), "sequence twice");
                for r in &batch.records {
                    if let Record::Work(w) = r {
                        work += w.accepted_work + w.late_work;
                    }
                }
            }
            let appended = outbox.totals().await.unwrap().appended_work;
            (work, appended)
        })
}

#[test]
fn sigkill_under_load_loses_no_acknowledged_share() {
    let dir: PathBuf = std::env::temp_dir().join(format!("defpool-kill-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (pool_port, miner_port, admin_port) = (free_port(), free_port(), free_port());
    let _pool = defpool(
        &[
            "loadgen",
            "pool",
            "--listen",
            &format!("127.0.0.1:{pool_port}"),
            "--coin",
            "BTC",
            "--job-interval-ms",
            "1000",
        ],
        &dir.join("pool.log"),
    );
    wait_for_port(pool_port);
    let outbox = dir.join("outbox.db");
    let config = dir.join("proxy.toml");
    std::fs::write(
        &config,
        format!(
            r#"network = "regtest"
[proxy]
id = "kill-proxy"
outbox_path = "{}"
admin_listen = "127.0.0.1:{admin_port}"
admin_token = "kill-test-admin-token-0123"
{port_and_pool}"#,
            outbox.display(),
            port_and_pool = sv1_port_and_pool(miner_port, pool_port),
        ),
    )
    .unwrap();
    let config_arg = config.to_str().unwrap().to_string();
    let mut proxy = defpool(
        &["proxy", "--config", &config_arg],
        &dir.join("proxy-1.log"),
    );
    wait_for_port(miner_port);
    let report = dir.join("miners.json");
    let mut miners = defpool(
        &[
            "loadgen",
            "miners",
            "--url",
            &format!("127.0.0.1:{miner_port}"),
            "--kind",
            "sv1",
            "--count",
            "20",
            "--username",
            ADDRESS,
            "--password",
            "d=0.000001",
            "--duration",
            "9",
            "--shares-per-sec",
            "400",
            "--report",
            report.to_str().unwrap(),
        ],
        &dir.join("miners.log"),
    );
    for round in 0..2 {
        std::thread::sleep(Duration::from_millis(2500));
        proxy.0.kill().unwrap(); // SIGKILL
        proxy.0.wait().unwrap();
        proxy = defpool(
            &["proxy", "--config", &config_arg],
            &dir.join(format!("proxy-{}.log", round + 2)),
        );
        wait_for_port(miner_port);
    }
    let status = miners.0.wait().unwrap();
    assert!(status.success(), "loadgen failed: see {}", dir.display());
    // A clean stop of the last proxy.
    let _ = Command::new("kill").arg(proxy.0.id().to_string()).status();
    let until = Instant::now() + Duration::from_secs(10);
    while proxy.0.try_wait().unwrap().is_none() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(proxy);

    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let acked: u128 = report["accepted_work_total"]
        .as_str()
        .map(|s| s.parse().unwrap())
        .or_else(|| report["accepted_work_total"].as_u64().map(u128::from))
        .unwrap();
    let accepted = report["shares_accepted"].as_u64().unwrap();
    let unanswered = report["shares_unanswered"].as_u64().unwrap() as u128;
    assert!(accepted > 200, "too little load to mean anything: {report}");
    let (stored, appended) = outbox_work(&outbox);
    eprintln!(
        "acked {accepted} shares ({acked} work), {unanswered} unanswered, {} disconnects; outbox {stored}",
        report["disconnects"]
    );
    assert_eq!(
        stored, appended,
        "batches and the appended counter disagree"
    );
    // Every acknowledged share is stored; the only surplus allowed is shares that were
    // committed but whose answer died with the proxy.
    let per_share = acked / accepted as u128;
    assert!(
        stored >= acked,
        "lost acknowledged work: stored {stored} < acked {acked}"
    );
    assert!(
        stored - acked <= (unanswered + 40) * per_share,
        "stored {stored} acked {acked} unanswered {unanswered}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
