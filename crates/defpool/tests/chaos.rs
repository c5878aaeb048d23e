//! The chaos test of the control plane, real processes on loopback: a test pool, the server (on
//! SQLite), a proxy connected to it, and simulated miners. The server is killed with SIGKILL and
//! restarted, then the proxy, twice over, under load. Afterwards the store holds exactly the
//! work the proxy's outbox took in (nothing lost, nothing applied twice), which covers every
//! share the miners were told was accepted (counted independently by the load generator).

mod common;

use common::*;

use std::process::Command;
use std::time::{Duration, Instant};

use defpool_control::ProxyId;
use defpool_proxy::outbox::{Outbox, OutboxOptions};

const ADDRESS: &str = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080";

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn killing_server_and_proxy_under_load_loses_and_duplicates_nothing() {
    let dir = std::env::temp_dir().join(format!("defpool-chaos-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (pool_port, control_port, miner_port, admin_port, api_port) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
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
    let store_path = dir.join("server.db");
    let outbox_path = dir.join("outbox.db");
    let server_cfg = dir.join("server.toml");
    std::fs::write(
        &server_cfg,
        format!(
            r#"network = "regtest"
[server]
database_url = "sqlite:{store}"
control_listen = "127.0.0.1:{control_port}"
api_listen = "127.0.0.1:{api_port}"
admin_token = "chaos-test-admin-token-0123"
whitelist = ["BTC"]
[[server.proxies]]
id = "chaos-proxy"
token = "chaos-test-proxy-token-0123"
"#,
            store = store_path.display()
        ),
    )
    .unwrap();
    let proxy_cfg = dir.join("proxy.toml");
    std::fs::write(
        &proxy_cfg,
        format!(
            r#"network = "regtest"
[proxy]
id = "chaos-proxy"
server_url = "tcp://127.0.0.1:{control_port}"
server_token = "chaos-test-proxy-token-0123"
outbox_path = "{outbox}"
admin_listen = "127.0.0.1:{admin_port}"
admin_token = "chaos-test-admin-token-0123"
{port_and_pool}"#,
            outbox = outbox_path.display(),
            port_and_pool = sv1_port_and_pool(miner_port, pool_port),
        ),
    )
    .unwrap();
    let (scfg, pcfg) = (
        server_cfg.to_str().unwrap().to_string(),
        proxy_cfg.to_str().unwrap().to_string(),
    );
    let mut server = defpool(&["server", "--config", &scfg], &dir.join("server.log"));
    wait_port(control_port);
    wait_port(pool_port);
    let mut proxy = defpool(&["proxy", "--config", &pcfg], &dir.join("proxy.log"));
    wait_port(miner_port);
    let report = dir.join("miners.json");
    let mut miners = defpool(
        &[
            "loadgen",
            "miners",
            "--url",
            &format!("127.0.0.1:{miner_port}"),
            "--count",
            "10",
            "--username",
            ADDRESS,
            "--password",
            "d=0.000001",
            "--duration",
            "14",
            "--shares-per-sec",
            "300",
            "--report",
            report.to_str().unwrap(),
        ],
        &dir.join("miners.log"),
    );
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(2500));
        server.kill9();
        std::thread::sleep(Duration::from_millis(500));
        server = defpool(&["server", "--config", &scfg], &dir.join("server.log"));
        wait_port(control_port);
        std::thread::sleep(Duration::from_millis(2500));
        proxy.kill9();
        proxy = defpool(&["proxy", "--config", &pcfg], &dir.join("proxy.log"));
        wait_port(miner_port);
    }
    assert!(
        miners.0.wait().unwrap().success(),
        "loadgen failed: see {}",
        dir.display()
    );
    // Let the proxy drain its outbox into the server, then stop both cleanly.
    std::thread::sleep(Duration::from_secs(4));
    for p in [&mut proxy, &mut server] {
        let _ = Command::new("kill").arg(p.0.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while p.0.try_wait().unwrap().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let acked: u128 = report["accepted_work_total"]
        .as_u64()
        .map(u128::from)
        .unwrap();
    let accepted = report["shares_accepted"].as_u64().unwrap();
    let unanswered = report["shares_unanswered"].as_u64().unwrap() as u128;
    assert!(accepted > 300, "too little load to mean anything: {report}");

    let (stored, outbox) = rt().block_on(async {
        let outbox = Outbox::open(
            &outbox_path,
            ProxyId("chaos-proxy".into()),
            OutboxOptions {
                seal_interval: Duration::ZERO,
                ..OutboxOptions::default()
            },
        )
        .await
        .unwrap();
        let totals = outbox.totals().await.unwrap();
        let store = defpool_store::Store::connect(&format!("sqlite:{}", store_path.display()))
            .await
            .unwrap();
        let stored = store.total_work().await.unwrap();
        (stored, totals)
    });
    eprintln!(
        "chaos: miners acked {accepted} shares ({acked} work, {unanswered} unanswered); outbox appended {}, held {}; server stored {stored}",
        outbox.appended_work, outbox.held_work
    );
    assert_eq!(outbox.held_work, 0, "the outbox drained");
    assert_eq!(
        stored, outbox.appended_work,
        "exactly once: everything the proxy took in, once"
    );
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
