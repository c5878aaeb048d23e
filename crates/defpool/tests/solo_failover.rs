//! Solo mode's bad-input path, real processes: the coin adapter's daemon is unreachable (a
//! closed RPC port). The adapter says so in its log and refuses channels for want of work; the
//! proxy fails over to its next upstream for the coin (an SV1 pool) and miners keep mining,
//! without a disconnect. No litecoind needed.

mod common;

use common::*;

use std::process::{Command, Stdio};

#[test]
fn an_unreachable_daemon_sends_the_proxy_to_its_next_upstream() {
    let dir = std::env::temp_dir().join(format!("defpool-solo-fail-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (adapter_port, pool_port, proxy_port, admin_port, dead_rpc) = (
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
            "LTC",
            "--algorithm",
            "scrypt",
            "--job-interval-ms",
            "2000",
        ],
        &dir.join("pool.log"),
    );
    let config = dir.join("solo.toml");
    std::fs::write(
        &config,
        format!(
            r#"network = "regtest"
[[adapters]]
name = "ltc-solo"
coin = "LTC"
listen = "127.0.0.1:{adapter_port}"
authority_public_key = "9biV8JrgZHbxDZnvN8ysxQ6qJHiFd6ZNFGb73FXB91epVFMbeAs"
authority_secret_key = "AFnAZb3koYMnb6xkbYddrgt2o61Te77FMQqdtBRj5PZDCbRu5"
rpc_url = "http://127.0.0.1:{dead_rpc}"
rpc_user = "defpool"
rpc_password = "not-a-real-password-anyway"
payout_address = "rltc1q6nd2hlt7wk9fhnr88j0uquy869l4vkeddecfu7"
outbox_path = "{adapter_db}"

[proxy]
id = "fail-proxy"
outbox_path = "{proxy_db}"
admin_listen = "127.0.0.1:{admin_port}"
admin_token = "fail-test-admin-token-0123"
[[proxy.ports]]
algorithm = "scrypt"
protocol = "sv1"
listen = "127.0.0.1:{proxy_port}"
start_difficulty = 0.004
min_difficulty = 0.000001

[[upstreams]]
name = "ltc-solo"
coin = "LTC"
protocol = "adapter"
url = "stratum2+tcp://127.0.0.1:{adapter_port}"
authority_public_key = "9biV8JrgZHbxDZnvN8ysxQ6qJHiFd6ZNFGb73FXB91epVFMbeAs"
payout_scheme = "solo"

[[upstreams]]
name = "ltc-pool"
coin = "LTC"
protocol = "sv1"
url = "stratum+tcp://127.0.0.1:{pool_port}"
username = "proxy"
password = "x"
"#,
            adapter_db = dir.join("adapter.db").display(),
            proxy_db = dir.join("proxy.db").display(),
        ),
    )
    .unwrap();
    let cfg = config.to_str().unwrap().to_string();
    let _adapter = defpool(&["adapter", "--config", &cfg], &dir.join("adapter.log"));
    wait_port(adapter_port);
    wait_port(pool_port);
    let _proxy = defpool(&["proxy", "--config", &cfg], &dir.join("proxy.log"));
    wait_port(proxy_port);
    let report = dir.join("miners.json");
    let status = Command::new(env!("CARGO_BIN_EXE_defpool"))
        .args([
            "loadgen",
            "miners",
            "--url",
            &format!("127.0.0.1:{proxy_port}"),
            "--algorithm",
            "scrypt",
            "--count",
            "2",
            "--username",
            "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080",
            "--password",
            "d=0.004",
            "--duration",
            "8",
            "--report",
            report.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(report["disconnects"], 0, "{report}");
    assert!(report["shares_accepted"].as_u64().unwrap() > 0, "{report}");
    assert!(
        report["accepted_work_by_coin"].get("LTC").is_some(),
        "work went to the LTC pool: {report}"
    );
    let adapter_log = std::fs::read_to_string(dir.join("adapter.log")).unwrap();
    assert!(
        adapter_log.contains("unreachable"),
        "the adapter names the cause: {adapter_log}"
    );
    assert!(
        !adapter_log.contains("not-a-real-password-anyway"),
        "no secret in logs"
    );
    let proxy_log = std::fs::read_to_string(dir.join("proxy.log")).unwrap();
    assert!(
        proxy_log.contains("channel refused: upstream-unavailable"),
        "the adapter refused the proxy's channel for want of work: {proxy_log}"
    );
    assert!(
        proxy_log.contains("miners moved to upstream upstream=ltc-pool")
            || proxy_log.contains("upstream=ltc-pool"),
        "{proxy_log}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
