//! Operators command proxies through the server: an assignment posted to the server's API is
//! stored, audited and pushed over the control channel; the connected proxy moves its miners to
//! the new coin. Bad tokens, malformed bodies and stale epochs get JSON errors with stable codes,
//! and upstream passwords never leave the API.

mod common;

use std::time::{Duration, Instant};

use common::*;

const ADDRESS: &str = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080";
const ADMIN: &str = "assign-test-admin-token-0123";

fn assignment(epoch: u64, coin: &str, port: u16) -> String {
    serde_json::json!({
        "epoch": epoch, "group": "default", "algorithm": "sha256d",
        "targets": [{"coin": coin, "weight": 1}],
        "upstreams": [{"name": format!("{}-pool", coin.to_lowercase()), "coin": coin, "kind": "sv1",
            "address": format!("stratum+tcp://127.0.0.1:{port}"), "username": "proxy",
            "password": "upstream-secret-password"}],
        "issued_at_ms": 0, "reason": "operator test"
    })
    .to_string()
}

#[test]
fn an_assignment_posted_to_the_server_reaches_the_proxy() {
    let dir = std::env::temp_dir().join(format!("defpool-assign-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (btc_port, bch_port, control, api, miners_port, admin) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    let _btc = defpool(
        &[
            "loadgen",
            "pool",
            "--listen",
            &format!("127.0.0.1:{btc_port}"),
            "--coin",
            "BTC",
        ],
        &dir.join("btc.log"),
    );
    let _bch = defpool(
        &[
            "loadgen",
            "pool",
            "--listen",
            &format!("127.0.0.1:{bch_port}"),
            "--coin",
            "BCH",
        ],
        &dir.join("bch.log"),
    );
    let config = dir.join("all.toml");
    std::fs::write(
        &config,
        format!(
            r#"network = "regtest"
[server]
database_url = "sqlite:{db}"
control_listen = "127.0.0.1:{control}"
api_listen = "127.0.0.1:{api}"
admin_token = "{ADMIN}"
whitelist = ["BTC", "BCH"]
[[server.proxies]]
id = "assign-proxy"
token = "assign-test-proxy-token-0123"

[proxy]
id = "assign-proxy"
server_url = "tcp://127.0.0.1:{control}"
server_token = "assign-test-proxy-token-0123"
outbox_path = "{outbox}"
admin_listen = "127.0.0.1:{admin}"
admin_token = "assign-test-proxy-admin-0123"
[[proxy.ports]]
algorithm = "sha256d"
protocol = "sv1"
listen = "127.0.0.1:{miners_port}"
start_difficulty = 0.000001
min_difficulty = 0.000000001
[[upstreams]]
name = "btc-pool"
coin = "BTC"
protocol = "sv1"
url = "stratum+tcp://127.0.0.1:{btc_port}"
username = "proxy"
password = "x"
"#,
            db = dir.join("server.db").display(),
            outbox = dir.join("outbox.db").display(),
        ),
    )
    .unwrap();
    let cfg = config.to_str().unwrap().to_string();
    // All roles in one process: the embedded default.
    let mut all = defpool(&["run", "--config", &cfg], &dir.join("run.log"));
    wait_port(api);
    wait_port(miners_port);
    wait_port(bch_port);
    let proxy_coin = || {
        let s = http(admin, "GET", "/status", "", "");
        s.split("\"coin\":\"").nth(1).map(|r| r[..3].to_string())
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while proxy_coin().as_deref() != Some("BTC") {
        assert!(
            Instant::now() < deadline,
            "proxy never mined BTC: {}",
            http(admin, "GET", "/status", "", "")
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Bad input first: wrong token, malformed body.
    let r = http(
        api,
        "POST",
        "/api/admin/assignments",
        "wrong-token",
        &assignment(5, "BCH", bch_port),
    );
    assert!(
        r.starts_with("HTTP/1.1 401") && r.contains("\"bad-token\""),
        "{r}"
    );
    let r = http(api, "POST", "/api/admin/assignments", ADMIN, "{not json");
    assert!(
        r.starts_with("HTTP/1.1 400") && r.contains("\"bad-assignment\""),
        "{r}"
    );

    let posted = Instant::now();
    let r = http(
        api,
        "POST",
        "/api/admin/assignments",
        ADMIN,
        &assignment(5, "BCH", bch_port),
    );
    assert!(r.contains("\"applied\""), "{r}");
    while proxy_coin().as_deref() != Some("BCH") {
        assert!(
            posted.elapsed() < Duration::from_secs(10),
            "the proxy never switched: {}",
            http(admin, "GET", "/status", "", "")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "server → proxy switch observed after {:?}",
        posted.elapsed()
    );
    let r = http(
        api,
        "POST",
        "/api/admin/assignments",
        ADMIN,
        &assignment(4, "BTC", btc_port),
    );
    assert!(
        r.starts_with("HTTP/1.1 409") && r.contains("\"stale-epoch\""),
        "{r}"
    );
    let r = http(api, "GET", "/api/assignments", "", "");
    assert!(r.contains("\"epoch\":5") && r.contains("<redacted>"), "{r}");
    assert!(
        !r.contains("upstream-secret-password"),
        "a password left through the API: {r}"
    );

    // Miners get BCH work through the proxy.
    let report = dir.join("miners.json");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_defpool"))
        .args([
            "loadgen",
            "miners",
            "--url",
            &format!("127.0.0.1:{miners_port}"),
            "--count",
            "2",
            "--username",
            ADDRESS,
            "--password",
            "d=0.000001",
            "--duration",
            "3",
            "--report",
            report.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert!(
        report["accepted_work_by_coin"].get("BCH").is_some(),
        "{report}"
    );
    all.terminate();
    let log = std::fs::read_to_string(dir.join("run.log")).unwrap();
    assert!(
        !log.contains("upstream-secret-password"),
        "a password in the log"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
