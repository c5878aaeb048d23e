//! `defpool admin` against a real `defpool server` process: every subcommand reaches its admin
//! endpoint and prints the API's JSON; API errors exit 1 with their code; a bad config exits 78;
//! the token never shows in the CLI's output or the server's log.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;
use serde_json::Value;

const ADMIN: &str = "admin-cli-test-token-0123456789";
const UPSTREAM_PASSWORD: &str = "admin-cli-upstream-password-42";

fn admin(args: &[&str], env_token: Option<&str>) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_defpool"));
    c.arg("admin").args(args).env_remove("DEFPOOL_ADMIN_TOKEN");
    if let Some(t) = env_token {
        c.env("DEFPOOL_ADMIN_TOKEN", t);
    }
    let out = c.output().expect("defpool admin runs");
    for stream in [&out.stdout, &out.stderr] {
        assert!(
            !String::from_utf8_lossy(stream).contains(ADMIN),
            "the token leaked into the CLI output"
        );
    }
    out
}

/// Runs `defpool admin --config <cfg> <args>` expecting success; its JSON.
fn ok(cfg: &Path, args: &[&str]) -> Value {
    let mut all = vec!["--config", cfg.to_str().unwrap()];
    all.extend_from_slice(args);
    let out = admin(&all, None);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{args:?}: not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Expects exit 1 with the API's error `code` on stderr.
fn fails(cfg: &Path, args: &[&str], code: &str) {
    let mut all = vec!["--config", cfg.to_str().unwrap()];
    all.extend_from_slice(args);
    let out = admin(&all, None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
    assert!(err.contains(code), "{args:?}: expected {code}, got {err}");
}

#[test]
fn admin_cli_drives_a_running_server() {
    let dir = std::env::temp_dir().join(format!("defpool-admin-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (api, control) = (free_port(), free_port());
    let cfg = dir.join("server.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"network = "regtest"
[server]
database_url = "sqlite:{db}"
api_listen = "127.0.0.1:{api}"
control_listen = "127.0.0.1:{control}"
admin_token = "{ADMIN}"
"#,
            db = dir.join("server.db").display()
        ),
    )
    .unwrap();
    let log = dir.join("server.log");
    let mut server = defpool(&["server", "--config", cfg.to_str().unwrap()], &log);
    wait_port(api);

    // Whitelist.
    let added = ok(&cfg, &["coins", "add", "LTC"]);
    assert_eq!(added["enabled"], true);
    let listed = ok(&cfg, &["coins"]);
    let ltc = listed["coins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["ticker"] == "LTC")
        .unwrap()
        .clone();
    assert_eq!(ltc["enabled"], true);
    assert_eq!(ok(&cfg, &["coins", "disable", "LTC"])["enabled"], false);
    let listed = ok(&cfg, &["coins", "list"]);
    assert!(listed["coins"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["ticker"] == "LTC" && c["enabled"] == false));
    assert_eq!(ok(&cfg, &["coins", "enable", "LTC"])["enabled"], true);
    assert_eq!(ok(&cfg, &["coins", "remove", "LTC"])["removed"], true);
    fails(&cfg, &["coins", "add", "NOPE"], "unknown-coin");

    // X / Y / dwell: a partial set keeps the rest.
    let before = ok(&cfg, &["switching"]);
    let set = ok(&cfg, &["switching", "set", "--x", "7.5"]);
    assert_eq!(set["hysteresis_percent"], "7.5");
    assert_eq!(set["hysteresis_minutes"], before["hysteresis_minutes"]);
    let set = ok(&cfg, &["switching", "set", "--y", "12", "--dwell", "45"]);
    assert_eq!(
        (
            set["hysteresis_percent"].as_str(),
            set["hysteresis_minutes"].as_u64(),
            set["min_dwell_minutes"].as_u64()
        ),
        (Some("7.5"), Some(12), Some(45))
    );
    assert_eq!(ok(&cfg, &["switching", "show"]), set);
    fails(&cfg, &["switching", "set", "--y", "2000"], "bad-switching");

    // Pins.
    assert_eq!(ok(&cfg, &["pin", "scrypt", "LTC"])["pins"]["scrypt"], "LTC");
    fails(&cfg, &["pin", "scrypt", "BTC"], "wrong-algorithm");
    let unpinned = ok(&cfg, &["unpin", "scrypt"]);
    assert_eq!(unpinned["removed"], true);
    assert!(unpinned["pins"].as_object().unwrap().is_empty());

    // Upstream terms.
    let set = ok(
        &cfg,
        &[
            "upstreams",
            "set",
            "ltc-pool",
            "--coin",
            "LTC",
            "--protocol",
            "sv1",
            "--scheme",
            "pplns",
            "--fee-bps",
            "150",
            "--address",
            "stratum+tcp://127.0.0.1:1",
        ],
    );
    assert_eq!(set["fee_bps"], 150);
    let listed = ok(&cfg, &["upstreams"]);
    assert_eq!(listed["upstreams"][0]["name"], "ltc-pool");
    assert_eq!(
        listed["upstreams"][0]["details"]["address"],
        "stratum+tcp://127.0.0.1:1"
    );
    fails(
        &cfg,
        &[
            "upstreams",
            "set",
            "x",
            "--coin",
            "LTC",
            "--protocol",
            "sv1",
            "--scheme",
            "pplns",
            "--fee-bps",
            "10001",
        ],
        "bad-upstream",
    );
    assert_eq!(
        ok(&cfg, &["upstreams", "remove", "ltc-pool"])["removed"],
        true
    );

    // A payout with no work in its period: the ledger's refusal, with its code.
    fails(
        &cfg,
        &[
            "payout",
            "--coin",
            "LTC",
            "--upstream",
            "ltc-pool",
            "--from",
            "1000",
            "--to",
            "2000",
            "--amount",
            "5000",
            "--reference",
            "stmt-1",
        ],
        "bad-payout",
    );

    // Every change is in the audit log, with its actor.
    let audit = ok(&cfg, &["audit", "--limit", "100"]);
    let actions: Vec<&str> = audit["audit"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    for a in [
        "set-coin",
        "remove-coin",
        "set-setting",
        "upsert-upstream",
        "remove-upstream",
    ] {
        assert!(actions.contains(&a), "{a} not audited: {actions:?}");
    }
    assert!(audit["audit"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["action"] != "seed-whitelist" && a["actor"] != "config")
        .all(|a| a["actor"].as_str().unwrap().starts_with("admin@")));

    // --url with the token from the environment; a wrong token is the API's bad-token.
    let url = format!("http://127.0.0.1:{api}");
    let out = admin(&["--url", &url, "coins"], Some(ADMIN));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = admin(&["--url", &url, "coins"], Some("wrong-token-0123456789"));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad-token"));
    // The environment's token wins over the config's, and does not upset the config loader.
    let out = admin(
        &["--config", cfg.to_str().unwrap(), "coins"],
        Some("wrong-token-0123456789"),
    );
    assert_eq!(out.status.code(), Some(1));

    // Bad configs: 78.
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[server]\nadmin_token = \"short\"\n").unwrap();
    assert_eq!(
        admin(&["--config", bad.to_str().unwrap(), "coins"], None)
            .status
            .code(),
        Some(78)
    );
    assert_eq!(
        admin(
            &[
                "--config",
                dir.join("missing.toml").to_str().unwrap(),
                "coins"
            ],
            None
        )
        .status
        .code(),
        Some(78)
    );
    assert_eq!(admin(&["coins"], None).status.code(), Some(78));
    // No server: exit 1, naming the address.
    let down = format!("http://127.0.0.1:{}", free_port());
    let out = admin(&["--url", &down, "coins"], Some(ADMIN));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach"));

    // An operator assignment carries an upstream password: stored for the proxies, never shown.
    let assignment = serde_json::json!({"epoch": 1, "group": "cli", "algorithm": "scrypt",
        "targets": [{"coin": "LTC", "weight": 1}],
        "upstreams": [{"name": "ltc-pool", "coin": "LTC", "kind": "sv1",
            "address": "stratum+tcp://127.0.0.1:1", "username": "u", "password": UPSTREAM_PASSWORD}],
        "issued_at_ms": 0, "reason": "cli test"});
    let r = http(
        api,
        "POST",
        "/api/admin/assignments",
        ADMIN,
        &assignment.to_string(),
    );
    assert!(r.contains("\"applied\""), "{r}");
    let listed = http(api, "GET", "/api/assignments", "", "");
    assert!(
        listed.contains("<redacted>") && !listed.contains(UPSTREAM_PASSWORD),
        "{listed}"
    );
    let audit = ok(&cfg, &["audit"]);
    assert!(!audit.to_string().contains(UPSTREAM_PASSWORD));

    server.terminate();
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(log_text.contains("assignment saved"), "{log_text}");
    for secret in [ADMIN, UPSTREAM_PASSWORD] {
        assert!(!log_text.contains(secret), "a secret is in the server log");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
