//! The API against a real server: figures equal the store's, bad input gets the documented
//! error codes, the rate limit answers 429 and recovers, the live feed (SSE and WebSocket)
//! carries switch and block events, `/metrics` parses and moves, and no secret leaves the API.

mod api_support;

use std::collections::BTreeMap;
use std::time::Duration;

use api_support::*;
use defpool_accounting::estimate::{estimate, MarketPoint};
use defpool_control::{Batch, ProxyId};
use defpool_store::{Bucket, Decision};
use serde_json::{json, Value};

fn assignment(epoch: u64, group: &str, coin: &str) -> String {
    json!({"epoch": epoch, "group": group, "algorithm": "scrypt",
           "targets": [{"coin": coin, "weight": 1}],
           "upstreams": [{"name": format!("{}-pool", coin.to_lowercase()), "coin": coin, "kind": "sv1",
                          "address": "stratum+tcp://127.0.0.1:1", "username": "u",
                          "password": "upstream-secret-password-1"}],
           "issued_at_ms": 0, "reason": "api test"})
    .to_string()
}

/// Every secret the tests configure or send.
const SECRETS: [&str; 3] = [ADMIN, PROXY_TOKEN, "upstream-secret-password-1"];

fn no_secret(what: &str, text: &str) {
    for s in SECRETS {
        assert!(!text.contains(s), "{what} leaks a secret: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn figures_equal_the_store_on_sqlite() {
    figures_equal_the_store(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn figures_equal_the_store_on_postgres() {
    figures_equal_the_store(Db::Postgres).await;
}

async fn figures_equal_the_store(db: Db) {
    let name = format!("figures{db:?}").to_lowercase();
    let server = TestServer::start_on(db, &name, "whitelist = [\"LTC\", \"BTC\"]").await;
    let mut proxy = ControlClient::connect(server.control).await;
    let hash = seed(&mut proxy).await;
    let store = server.store().await;
    let now = now_ms();
    // Market data at the time: two recorded decisions carry LTC's inputs, 6 h and 2 h ago; Alice
    // has LTC work 5 h ago (valued at the older point) and in the last minutes (the newer one).
    let old_work = 2_000_000_000_000u128;
    proxy
        .batch(vec![work(
            ALICE,
            "rig1",
            "LTC",
            old_work,
            0,
            now - 5 * 3_600_000,
        )])
        .await;
    let point = |difficulty: u64, price: &str| MarketPoint {
        difficulty: difficulty.into(),
        block_reward: 625_000_000,
        price_btc: price.parse().unwrap(),
        decimals: 8,
    };
    let (p_old, p_new) = (point(1_000, "0.002"), point(4_000, "0.0025"));
    for (at, p) in [(now - 6 * 3_600_000, p_old), (now - 2 * 3_600_000, p_new)] {
        store
            .record_decision(&Decision {
                group: "default".into(),
                algorithm: defpool_core::Algorithm::Scrypt,
                epoch: 1,
                coin: Some(ticker("LTC")),
                reason: "test market point".into(),
                inputs: json!({"rows": [{"coin": "LTC", "difficulty": p.difficulty.to_string(),
                    "price_btc": p.price_btc.to_string(), "block_reward": p.block_reward}]}),
                at_ms: at,
            })
            .await
            .unwrap();
    }
    let old_est = estimate(old_work, &p_old).unwrap();
    let new_est = estimate(6_000_000_000_000, &p_new).unwrap();
    let u = server.get(&format!("/api/users/{ALICE}")).await.json();
    let ltc = u["earnings"]["per_coin"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["coin"] == "LTC")
        .unwrap()
        .clone();
    assert_eq!(
        ltc["estimated_units"],
        (old_est.coin_units + new_est.coin_units)
            .round_dp(0)
            .to_string(),
        "{ltc}"
    );
    assert_eq!(
        ltc["estimated_btc"],
        (old_est.btc + new_est.btc).round_dp(8).to_string()
    );
    assert_eq!(ltc["unpriced_work"], "0");
    // BTC has no market point at all: its work is unpriced, not guessed.
    let btc = u["earnings"]["per_coin"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["coin"] == "BTC")
        .unwrap()
        .clone();
    assert_eq!(btc["unpriced_work"], "7000000000000");
    assert_eq!(btc["estimated_units"], "0");

    let status = server.get("/api/status").await;
    assert_eq!(status.status, 200, "{}", status.body);
    let status = status.json();
    let (users, workers, active) = store.pool_counts(now - 600_000).await.unwrap();
    assert_eq!(status["counts"]["users"], users);
    assert_eq!(status["counts"]["workers"], workers);
    assert_eq!(status["counts"]["miners"], active);
    assert_eq!((users, workers), (2, 3));
    // Hashrate per algorithm: the store's work of the window over its span.
    let series = store
        .pool_series(
            None,
            Bucket::Minute,
            (now - now % 60_000) - 600_000,
            now + 60_000,
        )
        .await
        .unwrap();
    let scrypt_work: u128 = series
        .iter()
        .filter(|p| p.coin.as_str() == "LTC")
        .map(|p| p.work)
        .sum();
    assert_eq!(scrypt_work, 9_000_000_000_000);
    let scrypt = status["hashrate"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["algorithm"] == "scrypt")
        .unwrap()["hashrate_hs"]
        .as_f64()
        .unwrap();
    // The window is 10 to 11 minutes long depending on where in the minute we are.
    let (lo, hi) = (9e12 / 661.0, 9e12 / 599.0);
    assert!(scrypt > lo && scrypt < hi, "{scrypt}");

    // The user: chart points, workers and balances are the store's.
    let u = server
        .get(&format!("/api/users/{ALICE}?bucket=minute"))
        .await;
    assert_eq!(u.status, 200, "{}", u.body);
    let u = u.json();
    let points = store
        .hashrate_series(
            ALICE,
            None,
            Bucket::Minute,
            u["hashrate"]["from_ms"].as_u64().unwrap(),
            u["hashrate"]["to_ms"].as_u64().unwrap(),
        )
        .await
        .unwrap();
    let api_points = u["hashrate"]["points"].as_array().unwrap();
    assert_eq!(api_points.len(), points.len());
    for (a, s) in api_points.iter().zip(&points) {
        assert_eq!(a["bucket_ms"], s.bucket_ms);
        assert_eq!(a["coin"], s.coin.as_str());
        assert_eq!(a["work"], s.work.to_string());
    }
    let total: u128 = points.iter().map(|p| p.work).sum();
    assert_eq!(total, 13_000_000_000_000);
    let ws = u["workers"].as_array().unwrap();
    let names: Vec<&str> = ws.iter().map(|w| w["worker"].as_str().unwrap()).collect();
    assert_eq!(names, ["rig1", "rig2"]);
    let rig1 = &ws[0];
    assert_eq!(rig1["online"], true);
    assert_eq!(rig1["rejected_shares"], 2);
    // rig1: 20 accepted shares and 2 stale rejects in the window.
    assert!(
        (rig1["reject_pct"].as_f64().unwrap() - 200.0 / 22.0).abs() < 1e-9,
        "{rig1}"
    );
    let stored = store.workers(ALICE).await.unwrap();
    assert_eq!(rig1["last_share_ms"], stored[0].last_share_ms.unwrap());
    assert_eq!(rig1["accepted_shares"], stored[0].accepted_shares);
    let balances = store.balances(&format!("user:{ALICE}")).await.unwrap();
    assert_eq!(u["balances"], serde_json::to_value(&balances).unwrap());
    let workers_only = server
        .get(&format!("/api/users/{ALICE}/workers"))
        .await
        .json();
    assert_eq!(workers_only["workers"].as_array().unwrap().len(), 2);

    // A pool payout: realised earnings are the ledger's, per coin.
    let r = server
        .admin(
            "POST",
            "/api/admin/payouts",
            Some(
                &json!({"coin": "LTC", "upstream": "ltc-pool", "from_ms": now - 3_600_000,
                         "to_ms": now + 60_000, "amount": 90_000_000, "reference": "stmt-7"})
                .to_string(),
            ),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let posted = r.json();
    assert_eq!(posted["posted"], true);
    // The same reference again posts nothing.
    let again = server
        .admin(
            "POST",
            "/api/admin/payouts",
            Some(
                &json!({"coin": "LTC", "upstream": "ltc-pool", "from_ms": now - 3_600_000,
                         "to_ms": now + 60_000, "amount": 90_000_000, "reference": "stmt-7"})
                .to_string(),
            ),
        )
        .await
        .json();
    assert_eq!(again["posted"], false);
    let u = server.get(&format!("/api/users/{ALICE}")).await.json();
    let ltc_balance = store
        .balance(&format!("user:{ALICE}"), &ticker("LTC"))
        .await
        .unwrap();
    assert!(ltc_balance > 0);
    let ltc = u["earnings"]["per_coin"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["coin"] == "LTC")
        .unwrap()
        .clone();
    assert_eq!(ltc["realised_units"], ltc_balance);
    assert_eq!(u["balances"]["LTC"], ltc_balance);
    assert_eq!(ltc["work"], "8000000000000");

    // Blocks and decisions are the store's.
    let blocks = server.get("/api/blocks?coin=LTC&limit=5").await.json();
    let stored_blocks = store.blocks(Some(&ticker("LTC")), 5).await.unwrap();
    assert_eq!(
        blocks["blocks"],
        serde_json::to_value(&stored_blocks).unwrap()
    );
    assert_eq!(stored_blocks.len(), 1);
    let b = server.get(&format!("/api/blocks/{hash}")).await.json();
    assert_eq!(b["block"]["block_hash"], hash.as_str());
    assert_eq!(
        b["history"].as_array().unwrap().len(),
        store.block_history(&hash).await.unwrap().len()
    );
    let d = server.get("/api/decisions?limit=3").await.json();
    assert_eq!(
        d["decisions"],
        serde_json::to_value(store.recent_decisions(3).await.unwrap()).unwrap()
    );
    let coins = server.get("/api/coins").await.json();
    let ltc = coins["coins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["ticker"] == "LTC")
        .unwrap()
        .clone();
    assert_eq!(ltc["algorithm"], "scrypt");
    store.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_the_documented_errors() {
    let server = TestServer::start("bad", "").await;
    let mut proxy = ControlClient::connect(server.control).await;
    seed(&mut proxy).await;
    let mut seen = Vec::new();
    let mut expect = |what: &str, r: Resp, status: u16, code: &str| {
        assert_eq!(
            (r.status, r.code().as_str()),
            (status, code),
            "{what}: {}",
            r.body
        );
        no_secret(what, &r.body);
        seen.push(r.body);
    };
    // Tokens.
    expect(
        "no token",
        http(server.api, "GET", "/api/admin/coins", None, None).await,
        401,
        "bad-token",
    );
    expect(
        "wrong token",
        http(
            server.api,
            "GET",
            "/api/admin/coins",
            Some("wrong-token-wrong-token"),
            None,
        )
        .await,
        401,
        "bad-token",
    );
    expect(
        "token prefix",
        http(
            server.api,
            "GET",
            "/api/admin/coins",
            Some(&ADMIN[..10]),
            None,
        )
        .await,
        401,
        "bad-token",
    );
    // Malformed JSON and wrong types: serde's message.
    let r = server
        .admin("PUT", "/api/admin/coins/LTC", Some("{\"enabled\": "))
        .await;
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("EOF"),
        "{}",
        r.body
    );
    expect("malformed JSON", r, 400, "bad-request");
    let r = server
        .admin(
            "PUT",
            "/api/admin/coins/LTC",
            Some("{\"enabled\": \"yes\"}"),
        )
        .await;
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("invalid type"),
        "{}",
        r.body
    );
    expect("wrong type", r, 400, "bad-request");
    expect(
        "unknown field",
        server
            .admin(
                "PUT",
                "/api/admin/coins/LTC",
                Some("{\"enabled\": true, \"x\": 1}"),
            )
            .await,
        400,
        "bad-request",
    );
    expect(
        "payout types",
        server
            .admin(
                "POST",
                "/api/admin/payouts",
                Some("{\"coin\": \"LTC\", \"amount\": \"lots\"}"),
            )
            .await,
        400,
        "bad-request",
    );
    expect(
        "bad limit",
        server.get("/api/decisions?limit=abc").await,
        400,
        "bad-request",
    );
    expect(
        "zero limit",
        server.get("/api/decisions?limit=0").await,
        400,
        "bad-request",
    );
    expect(
        "bad bucket",
        server.get(&format!("/api/users/{ALICE}?bucket=week")).await,
        400,
        "bad-request",
    );
    expect(
        "bad feed type",
        server.get("/api/feed?types=switch,nope").await,
        400,
        "bad-request",
    );
    expect(
        "bad hash",
        server.get("/api/blocks/xyz").await,
        400,
        "bad-request",
    );
    expect(
        "no block",
        server
            .get(&format!("/api/blocks/{}", "ab".repeat(32)))
            .await,
        404,
        "not-found",
    );
    expect(
        "no route",
        server.get("/api/nothing").await,
        404,
        "not-found",
    );
    // Addresses: malformed, another network's, or a checksum error are invalid; a valid one
    // that never mined is unknown.
    for bad in [
        "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt081",
        "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4",
        "1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2",
        "not an address!",
        "bcrt1qw508d6",
    ] {
        let path = format!("/api/users/{}", bad.replace(' ', "%20"));
        expect(bad, server.get(&path).await, 400, "invalid-address");
        expect(
            bad,
            server.get(&format!("{path}/workers")).await,
            400,
            "invalid-address",
        );
    }
    expect(
        "unknown user",
        server
            .get("/api/users/bcrt1q0ygllsf3wx0lpdc2yr7alqmhnjatnup8k4gkcr")
            .await,
        404,
        "unknown-user",
    );
    expect(
        "long account name",
        server.get("/api/users/an_account_name_of_22c").await,
        404,
        "unknown-user",
    );
    expect(
        "unknown account",
        server.get("/api/users/nobody").await,
        404,
        "unknown-user",
    );
    // Unknown coins.
    expect(
        "unknown coin",
        server
            .admin("PUT", "/api/admin/coins/NOPE", Some("{\"enabled\": true}"))
            .await,
        404,
        "unknown-coin",
    );
    expect(
        "unknown coin delete",
        server.admin("DELETE", "/api/admin/coins/NOPE", None).await,
        404,
        "unknown-coin",
    );
    expect(
        "blocks of unknown coin",
        server.get("/api/blocks?coin=NOPE").await,
        404,
        "unknown-coin",
    );
    expect(
        "pin unknown coin",
        server
            .admin(
                "PUT",
                "/api/admin/pins/scrypt",
                Some("{\"coin\": \"NOPE\"}"),
            )
            .await,
        404,
        "unknown-coin",
    );
    expect(
        "pin wrong algorithm",
        server
            .admin("PUT", "/api/admin/pins/scrypt", Some("{\"coin\": \"BTC\"}"))
            .await,
        400,
        "wrong-algorithm",
    );
    expect(
        "unknown algorithm",
        server
            .admin("PUT", "/api/admin/pins/x11", Some("{\"coin\": \"LTC\"}"))
            .await,
        404,
        "unknown-algorithm",
    );
    // Switching bounds.
    for bad in [
        json!({"hysteresis_percent": "1000.5", "hysteresis_minutes": 10, "min_dwell_minutes": 30}),
        json!({"hysteresis_percent": "abc", "hysteresis_minutes": 10, "min_dwell_minutes": 30}),
        json!({"hysteresis_percent": "5", "hysteresis_minutes": 1441, "min_dwell_minutes": 30}),
        json!({"hysteresis_percent": "5", "hysteresis_minutes": 10, "min_dwell_minutes": 10081}),
    ] {
        expect(
            "switching",
            server
                .admin("PUT", "/api/admin/switching", Some(&bad.to_string()))
                .await,
            400,
            "bad-switching",
        );
    }
    // Upstream terms.
    for (case, body) in [
        (
            "fee",
            json!({"coin": "LTC", "protocol": "sv1", "fee_bps": 10001, "payout_scheme": "pplns"}),
        ),
        (
            "protocol",
            json!({"coin": "LTC", "protocol": "http", "payout_scheme": "pplns"}),
        ),
        (
            "scheme",
            json!({"coin": "LTC", "protocol": "sv1", "payout_scheme": "fpps"}),
        ),
        (
            "secret in details",
            json!({"coin": "LTC", "protocol": "sv1", "payout_scheme": "pplns", "details": {"password": "p"}}),
        ),
    ] {
        let response = server
            .admin("PUT", "/api/admin/upstreams/u1", Some(&body.to_string()))
            .await;
        expect(case, response, 400, "bad-upstream");
    }
    expect(
        "upstream coin",
        server
            .admin(
                "PUT",
                "/api/admin/upstreams/u1",
                Some(
                    &json!({"coin": "NOPE", "protocol": "sv1", "payout_scheme": "pplns"})
                        .to_string(),
                ),
            )
            .await,
        404,
        "unknown-coin",
    );
    // Payouts the ledger refuses.
    let now = now_ms();
    expect("payout amount", server.admin("POST", "/api/admin/payouts", Some(&json!({"coin": "LTC", "upstream": "ltc-pool", "from_ms": now - 1000, "to_ms": now, "amount": 0, "reference": "r"}).to_string())).await, 400, "bad-payout");
    expect("payout period", server.admin("POST", "/api/admin/payouts", Some(&json!({"coin": "LTC", "upstream": "ltc-pool", "from_ms": now, "to_ms": now - 1000, "amount": 5, "reference": "r"}).to_string())).await, 400, "bad-payout");
    // Oversized bodies.
    let big = format!(
        "{{\"enabled\": true, \"pad\": \"{}\"}}",
        "x".repeat(200_000)
    );
    expect(
        "oversized",
        server
            .admin("PUT", "/api/admin/coins/LTC", Some(&big))
            .await,
        413,
        "payload-too-large",
    );
    // Stale epochs.
    let r = server
        .admin(
            "POST",
            "/api/admin/assignments",
            Some(&assignment(5, "bad", "LTC")),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = server
        .admin(
            "POST",
            "/api/admin/assignments",
            Some(&assignment(5, "bad", "LTC")),
        )
        .await;
    assert_eq!(r.json()["result"], "unchanged");
    expect(
        "stale epoch",
        server
            .admin(
                "POST",
                "/api/admin/assignments",
                Some(&assignment(4, "bad", "DOGE")),
            )
            .await,
        409,
        "stale-epoch",
    );
    expect(
        "bad assignment",
        server
            .admin("POST", "/api/admin/assignments", Some("{\"epoch\": 1}"))
            .await,
        400,
        "bad-assignment",
    );
    expect(
        "plain GET on the WebSocket",
        server.get("/api/ws").await,
        400,
        "not-websocket",
    );
    expect(
        "method",
        http(server.api, "PATCH", "/api/admin/pins", Some(ADMIN), None).await,
        405,
        "method-not-allowed",
    );
    // None of that changed anything: no coin was whitelisted, no upstream stored.
    assert!(server
        .admin("GET", "/api/admin/upstreams", None)
        .await
        .json()["upstreams"]
        .as_array()
        .unwrap()
        .is_empty());
    let assigned = server.get("/api/assignments").await;
    assert!(assigned.body.contains("<redacted>"), "{}", assigned.body);
    no_secret("assignments", &assigned.body);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_answers_429_then_recovers() {
    let server = TestServer::start(
        "rate",
        "[server.rate_limit]\nrequests_per_sec = 1\nburst = 3",
    )
    .await;
    for i in 0..3 {
        assert_eq!(server.get("/api/coins").await.status, 200, "request {i}");
    }
    let r = server.get("/api/status").await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (429, "rate-limited"),
        "{}",
        r.body
    );
    let retry: u64 = r.headers["retry-after"].parse().unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    // Admin endpoints, /health and /metrics are not limited.
    assert_eq!(
        server.admin("GET", "/api/admin/coins", None).await.status,
        200
    );
    assert_eq!(server.get("/health").await.status, 200);
    let metrics = server.get("/metrics").await.body;
    assert!(
        metric(&metrics, "defpool_api_rate_limited_total", "") >= 1.0,
        "{metrics}"
    );
    tokio::time::sleep(Duration::from_secs(retry)).await;
    assert_eq!(
        server.get("/api/status").await.status,
        200,
        "after Retry-After"
    );
    server.stop().await;
}

/// A sample's value from Prometheus text (`name{labels} value`).
fn metric(text: &str, name: &str, labels: &str) -> f64 {
    let key = format!("{name}{labels} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&key))
        .unwrap_or_else(|| panic!("no {name}{labels} in\n{text}"))
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_move() {
    let server = TestServer::start("metrics", "").await;
    let before = server.get("/metrics").await;
    assert_eq!(before.status, 200);
    assert!(before.headers["content-type"].starts_with("text/plain; version=0.0.4"));
    // Every line is a comment or `name{labels} value` with a float value; every family typed.
    let mut types = BTreeMap::new();
    for line in before.body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(["counter", "gauge"].contains(&kind), "{line}");
            types.insert(name.to_string(), kind.to_string());
        } else if !line.starts_with("# HELP ") {
            let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
            value
                .parse::<f64>()
                .unwrap_or_else(|e| panic!("{line}: {e}"));
            let name = series.split('{').next().unwrap();
            assert!(
                name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "{line}"
            );
            assert!(types.contains_key(name), "{line}: no TYPE");
            if let Some(labels) = series.strip_prefix(name) {
                assert!(
                    labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')),
                    "{line}"
                );
            }
        }
    }
    for c in [
        "batches_applied",
        "batch_transactions",
        "batches_duplicate",
        "batches_gap",
        "batch_errors",
        "work_records",
        "assignments_pushed",
        "decisions",
        "switches",
        "market_fetch_errors",
        "ledger_postings",
        "api_requests",
        "api_rate_limited",
    ] {
        assert_eq!(types[&format!("defpool_{c}_total")], "counter", "{c}");
    }
    for g in [
        "proxies_connected",
        "feed_subscribers",
        "users",
        "workers",
        "workers_online",
        "pool_hashrate_hs",
    ] {
        assert_eq!(types[&format!("defpool_{g}")], "gauge", "{g}");
    }
    let requests = metric(&before.body, "defpool_api_requests_total", "");
    let mut proxy = ControlClient::connect(server.control).await;
    seed(&mut proxy).await;
    let _sse = SseClient::connect(server.api, "/api/feed").await;
    let after = server.get("/metrics").await.body;
    assert!(metric(&after, "defpool_api_requests_total", "") >= requests + 2.0);
    assert_eq!(metric(&after, "defpool_users", ""), 2.0);
    assert_eq!(metric(&after, "defpool_workers", ""), 3.0);
    assert_eq!(metric(&after, "defpool_feed_subscribers", ""), 1.0);
    assert!(metric(&after, "defpool_pool_hashrate_hs", "{algorithm=\"scrypt\"}") > 0.0);
    assert!(
        metric(&after, "defpool_batches_applied_total", "") >= 1.0,
        "{after}"
    );
    no_secret("metrics", &after);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_feed_carries_switches_and_blocks() {
    let server = TestServer::start("feed", "").await;
    let mut proxy = ControlClient::connect(server.control).await;
    let mut sse = SseClient::connect(server.api, "/api/feed?types=switch,block").await;
    assert_eq!(sse.status, 200);
    let (status, ws) = WsClient::connect(server.api, "/api/ws?types=switch,block").await;
    assert_eq!(status, 101);
    let mut ws = ws.unwrap();
    let mut all = SseClient::connect(server.api, "/api/feed").await;

    let r = server
        .admin(
            "POST",
            "/api/admin/assignments",
            Some(&assignment(3, "feed", "LTC")),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let wait = Duration::from_secs(10);
    let switch = |v: &Value| v["type"] == "switch" && v["group"] == "feed";
    let (event, data) = loop {
        let (e, d) = sse.next(wait).await.expect("SSE switch event");
        if switch(&d) {
            break (e, d);
        }
    };
    assert_eq!(event, "switch");
    assert_eq!(data["epoch"], 3);
    assert_eq!(data["to"], "LTC");
    assert_eq!(data["kind"], "admin");
    no_secret("switch event", &data.to_string());
    let w = loop {
        let w = ws.next(wait).await.expect("WebSocket switch event");
        if switch(&w) {
            break w;
        }
    };
    assert_eq!(w, data, "SSE and WebSocket carry the same JSON");

    // A batch with a block event: a block event on both.
    let now = now_ms();
    let hash = format!("{:064x}", now + 1);
    proxy
        .batch(vec![
            user(ALICE, now),
            block_candidate("LTC", &hash, ALICE, now),
        ])
        .await;
    let block = |v: &Value| v["type"] == "block" && v["hash"] == hash.as_str();
    let (event, data) = loop {
        let (e, d) = sse.next(wait).await.expect("SSE block event");
        if block(&d) {
            break (e, d);
        }
    };
    assert_eq!(event, "block");
    assert_eq!(data["coin"], "LTC");
    assert_eq!(data["phase"], "candidate");
    loop {
        let w = ws.next(wait).await.expect("WebSocket block event");
        if block(&w) {
            break;
        }
    }
    // The unfiltered subscriber got both too; the filtered ones never see other types.
    let mut kinds = Vec::new();
    while let Some((e, _)) = all.next(Duration::from_millis(500)).await {
        kinds.push(e);
    }
    assert!(
        kinds.contains(&"switch".to_string()) && kinds.contains(&"block".to_string()),
        "{kinds:?}"
    );
    while let Some((e, _)) = sse.next(Duration::from_millis(200)).await {
        assert!(e == "switch" || e == "block", "{e}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_docs_page_is_self_contained() {
    let server = TestServer::start("docs", "").await;
    let page = server.get("/api/docs").await;
    assert_eq!(page.status, 200);
    assert!(page.headers["content-type"].starts_with("text/html"));
    assert!(page.body.contains("\"openapi\"") && page.body.contains("/api/users/{address}"));
    // Nothing is fetched from elsewhere.
    for outside in ["http://", "https://", "//cdn", "<link"] {
        assert!(!page.body.contains(outside), "the page refers to {outside}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hashrate_events_are_published_per_algorithm() {
    let server = TestServer::start("hashrate", "").await;
    let mut sse = SseClient::connect(server.api, "/api/feed?types=hashrate").await;
    let mut proxy = ControlClient::connect(server.control).await;
    seed(&mut proxy).await;
    // The publisher ticks every 10 s: within 25 s both algorithms show the seeded work.
    let mut seen = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(25);
    while seen.len() < 2 {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let (event, data) = sse.next(left).await.expect("hashrate events in time");
        assert_eq!(event, "hashrate");
        if data["hashrate_hs"].as_f64().unwrap() > 0.0 {
            seen.insert(data["algorithm"].as_str().unwrap().to_string(), data);
        }
    }
    // LTC: Alice's rig1 and rig2 and Bob's default; BTC: Alice's rig1.
    assert_eq!(
        (
            seen["scrypt"]["workers"].as_u64(),
            seen["scrypt"]["users"].as_u64()
        ),
        (Some(3), Some(2))
    );
    assert_eq!(
        (
            seen["sha256d"]["workers"].as_u64(),
            seen["sha256d"]["users"].as_u64()
        ),
        (Some(1), Some(1))
    );
    let status = server.get("/api/status").await.json();
    let scrypt = status["hashrate"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["algorithm"] == "scrypt")
        .unwrap()
        .clone();
    // The same figure as the status (both from the store's last 10 minutes; the window may
    // have grown by a few seconds between them).
    let (a, b) = (
        seen["scrypt"]["hashrate_hs"].as_f64().unwrap(),
        scrypt["hashrate_hs"].as_f64().unwrap(),
    );
    assert!((a - b).abs() / a < 0.1, "{a} vs {b}");
    server.stop().await;
}

/// Batches a proxy sends without waiting are applied in runs (fewer transactions than
/// batches), each exactly once, acknowledged in the order sent; a retransmission among them is
/// acknowledged again and applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_batches_apply_once_in_runs() {
    let server = TestServer::start("pipeline", "").await;
    let mut proxy = ControlClient::connect(server.control).await;
    let now = now_ms();
    let batches: Vec<Batch> = (1..=60u128)
        .map(|i| proxy.next_batch(vec![work(ALICE, "rig1", "LTC", i, 0, now)]))
        .collect();
    // 1–40, then 30–35 again (a proxy resending after a lost acknowledgement), then 41–60.
    let sent: Vec<Batch> = batches[..40]
        .iter()
        .chain(&batches[29..35])
        .chain(&batches[40..])
        .cloned()
        .collect();
    let acks = proxy.pipeline(&sent).await;
    assert_eq!(acks, sent.iter().map(|b| b.sequence).collect::<Vec<_>>());
    let store = server.store().await;
    assert_eq!(
        store.total_work().await.unwrap(),
        (1..=60u128).sum::<u128>()
    );
    assert_eq!(
        store.last_sequence(&ProxyId(PROXY.into())).await.unwrap(),
        60
    );
    let m = server.get("/metrics").await.body;
    assert_eq!(metric(&m, "defpool_batches_applied_total", ""), 60.0);
    assert_eq!(metric(&m, "defpool_batches_duplicate_total", ""), 6.0);
    let applies = metric(&m, "defpool_batch_transactions_total", "");
    assert!(
        (3.0..=20.0).contains(&applies),
        "{applies} applies for 60 batches"
    );
    server.stop().await;
}
