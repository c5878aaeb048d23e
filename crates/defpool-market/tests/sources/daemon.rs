use defpool_core::secret::Secret;
use defpool_core::{CoinRegistry, Network};
use defpool_market::{DaemonSource, MarketSource, SourceError};
use serde_json::json;

use crate::server::{recorded, Answer, Request, Server};
use crate::{clock, d, fast, t, NOW_MS};

const PASSWORD: &str = "s3cret-pw";

fn source(server: &Server, coin: &str, attempts: u32) -> DaemonSource {
    DaemonSource::new(
        &CoinRegistry::builtin(),
        &t(coin),
        Network::Mainnet,
        format!("{}/", server.url()),
        "pooluser",
        Secret::new(PASSWORD),
    )
    .unwrap()
    .with_http(fast(attempts))
    .with_clock(clock())
}

/// A recorded JSON-RPC answer with the request's id put in.
fn rpc(req: &Request, status: u16, file: &str) -> Answer {
    let (_, id, _) = req.rpc();
    let body = String::from_utf8(recorded(file))
        .unwrap()
        .replace("\"id\":1", &format!("\"id\":{id}"));
    Answer::status(status, body.into_bytes())
}

/// A healthy Litecoin daemon.
fn healthy(req: &Request) -> Answer {
    match req.rpc().0.as_str() {
        "getmininginfo" => rpc(req, 200, "daemon/getmininginfo_ltc.json"),
        "getblocktemplate" => rpc(req, 200, "daemon/getblocktemplate_ltc.json"),
        "getblockchaininfo" => rpc(req, 200, "daemon/getblockchaininfo_ltc.json"),
        _ => rpc(req, 404, "daemon/error_method_not_found.json"),
    }
}

#[test]
fn mining_info_and_template_give_difficulty_height_and_reward() {
    let server = Server::start(|req, _| healthy(req));
    let snaps = source(&server, "LTC", 1).fetch(&[t("LTC")]).unwrap();
    assert_eq!(snaps.len(), 1);
    let s = &snaps[0];
    assert_eq!(s.coin, t("LTC"));
    assert_eq!(s.difficulty, Some(d("27318173.91298452")));
    assert_eq!(s.height, Some(2_580_133));
    assert_eq!(
        s.block_reward,
        Some(626_543_210),
        "coinbasevalue: subsidy plus fees"
    );
    assert_eq!(s.price_btc, None);
    assert_eq!(s.observed_at_ms, NOW_MS);
    assert_eq!(s.source, "daemon:LTC");

    let reqs = server.requests();
    assert_eq!(reqs.len(), 2);
    for r in &reqs {
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/");
        assert_eq!(r.header("Content-Type"), Some("application/json"));
        // base64("pooluser:s3cret-pw")
        assert_eq!(
            r.header("Authorization"),
            Some("Basic cG9vbHVzZXI6czNjcmV0LXB3")
        );
    }
    let (m0, _, p0) = reqs[0].rpc();
    let (m1, _, p1) = reqs[1].rpc();
    assert_eq!((m0.as_str(), p0), ("getmininginfo", json!([])));
    // Litecoin's getblocktemplate needs the MWEB and segwit rules, from the coin registry.
    assert_eq!(m1, "getblocktemplate");
    assert_eq!(p1, json!([{"rules": ["mweb", "segwit"]}]));
}

#[test]
fn template_rules_come_from_the_registry_per_coin() {
    for (coin, rules) in [("BTC", json!(["segwit"])), ("BCH", json!([]))] {
        let server = Server::start(|req, _| healthy(req));
        source(&server, coin, 1).fetch(&[t(coin)]).unwrap();
        let (_, _, params) = server.requests()[1].rpc();
        assert_eq!(params, json!([{ "rules": rules }]), "{coin}");
    }
}

#[test]
fn other_coins_are_not_this_daemons_business() {
    let server = Server::start(|req, _| healthy(req));
    let got = source(&server, "LTC", 1)
        .fetch_detailed(&[t("BTC"), t("DOGE")])
        .unwrap();
    assert!(got.snapshots.is_empty() && got.failed.is_empty());
    assert_eq!(server.hits(), 0);
}

#[test]
fn without_getmininginfo_it_asks_getblockchaininfo() {
    let server = Server::start(|req, _| match req.rpc().0.as_str() {
        "getmininginfo" => rpc(req, 404, "daemon/error_method_not_found.json"),
        _ => healthy(req),
    });
    let snaps = source(&server, "LTC", 3).fetch(&[t("LTC")]).unwrap();
    assert_eq!(snaps[0].difficulty, Some(d("27318173.91298452")));
    assert_eq!(snaps[0].height, Some(2_580_133));
    let methods: Vec<String> = server.requests().iter().map(|r| r.rpc().0).collect();
    assert_eq!(
        methods,
        ["getmininginfo", "getblockchaininfo", "getblocktemplate"]
    );
}

#[test]
fn without_getblocktemplate_the_reward_is_the_scheduled_subsidy() {
    let server = Server::start(|req, _| match req.rpc().0.as_str() {
        "getblocktemplate" => rpc(req, 404, "daemon/error_method_not_found.json"),
        _ => healthy(req),
    });
    let snaps = source(&server, "LTC", 1).fetch(&[t("LTC")]).unwrap();
    let registry = CoinRegistry::builtin();
    let subsidy = registry
        .by_ticker("LTC")
        .and_then(|c| c.network(Network::Mainnet))
        .map(|n| n.subsidy.at(2_580_134))
        .unwrap();
    assert_eq!(subsidy, 625_000_000);
    assert_eq!(snaps[0].block_reward, Some(subsidy));
}

#[test]
fn a_syncing_daemon_is_an_rpc_error_not_data() {
    // getmininginfo answers, getblocktemplate refuses with -10 (HTTP 500): not retried.
    let server = Server::start(|req, _| match req.rpc().0.as_str() {
        "getblocktemplate" => rpc(req, 500, "daemon/error_initial_sync.json"),
        _ => healthy(req),
    });
    let err = source(&server, "LTC", 3).fetch(&[t("LTC")]).unwrap_err();
    assert_eq!(
        err,
        SourceError::Rpc {
            origin: "daemon:LTC".into(),
            code: -10,
            message: "Litecoin is in initial sync and waiting for blocks...".into(),
        }
    );
    assert_eq!(
        err.to_string(),
        "daemon:LTC: RPC error -10: Litecoin is in initial sync and waiting for blocks..."
    );
    assert_eq!(server.hits(), 2);

    // The getblockchaininfo path notices initial block download too.
    let server = Server::start(|req, _| match req.rpc().0.as_str() {
        "getmininginfo" => rpc(req, 404, "daemon/error_method_not_found.json"),
        _ => rpc(req, 200, "daemon/getblockchaininfo_ibd.json"),
    });
    let err = source(&server, "LTC", 3).fetch(&[t("LTC")]).unwrap_err();
    assert!(matches!(err, SourceError::Rpc { code: -10, .. }), "{err:?}");
}

#[test]
fn rpc_errors_keep_code_and_message() {
    for (file, code) in [
        ("daemon/error_warmup.json", -28),
        ("daemon/error_gbt_rules.json", -8),
    ] {
        let server = Server::start(move |req, _| rpc(req, 500, file));
        let err = source(&server, "LTC", 3).fetch(&[t("LTC")]).unwrap_err();
        assert!(
            matches!(&err, SourceError::Rpc { code: c, origin, .. } if *c == code && origin == "daemon:LTC"),
            "{file}: {err:?}"
        );
        assert_eq!(server.hits(), 1, "{file}: RPC errors are not retried");
    }
}

#[test]
fn a_wrong_password_is_a_401_that_never_shows_the_password() {
    let server = Server::start(|_, _| Answer::Respond {
        status: 401,
        headers: vec![("WWW-Authenticate", "Basic realm=\"jsonrpc\"".into())],
        body: Vec::new(),
    });
    let src = source(&server, "LTC", 3);
    let err = src.fetch(&[t("LTC")]).unwrap_err();
    assert_eq!(
        err,
        SourceError::Http {
            origin: "daemon:LTC".into(),
            status: 401,
            detail: String::new(),
        }
    );
    assert_eq!(
        err.to_string(),
        "daemon:LTC: authentication failed (HTTP 401)"
    );
    assert_eq!(server.hits(), 1, "authentication failures are not retried");
    for text in [err.to_string(), format!("{err:?}"), format!("{src:?}")] {
        assert!(!text.contains(PASSWORD), "{text}");
        assert!(!text.contains("cG9vbHVzZXI6czNjcmV0LXB3"), "{text}");
    }
    assert!(format!("{src:?}").contains("<redacted>"));
}

#[test]
fn credentials_in_the_url_stay_out_of_debug() {
    let src = DaemonSource::new(
        &CoinRegistry::builtin(),
        &t("LTC"),
        Network::Mainnet,
        "http://pooluser:url-secret@127.0.0.1:9332/",
        "pooluser",
        Secret::new(PASSWORD),
    )
    .unwrap();
    let text = format!("{src:?}");
    assert!(
        !text.contains("url-secret") && !text.contains(PASSWORD),
        "{text}"
    );
}

#[test]
fn a_busy_daemon_is_retried() {
    let server = Server::start(|req, i| match i {
        0 => Answer::Respond {
            status: 503,
            headers: vec![("Content-Type", "text/plain".into())],
            body: recorded("daemon/work_queue_exceeded.txt"),
        },
        _ => healthy(req),
    });
    let snaps = source(&server, "LTC", 3).fetch(&[t("LTC")]).unwrap();
    assert_eq!(snaps[0].block_reward, Some(626_543_210));
    assert_eq!(server.hits(), 3);
}

#[test]
fn malformed_answers_are_typed() {
    for file in [
        "daemon/result_null.json",
        "daemon/getmininginfo_wrong_types.json",
    ] {
        let server = Server::start(move |req, _| rpc(req, 200, file));
        let err = source(&server, "LTC", 3).fetch(&[t("LTC")]).unwrap_err();
        assert!(
            matches!(err, SourceError::Malformed { .. }),
            "{file}: {err:?}"
        );
        assert!(err
            .to_string()
            .starts_with("daemon:LTC: malformed response: getmininginfo"));
    }
    // An answer to another request: the recording says id 1, the second call is id 2.
    let server = Server::start(|_, _| Answer::ok(recorded("daemon/getmininginfo_ltc.json")));
    let err = source(&server, "LTC", 1).fetch(&[t("LTC")]).unwrap_err();
    assert!(
        matches!(&err, SourceError::Malformed { detail, .. } if detail.contains("request id 2")),
        "{err:?}"
    );
}

#[test]
fn an_unknown_coin_is_refused_at_construction() {
    let err = DaemonSource::new(
        &CoinRegistry::builtin(),
        &t("XYZ"),
        Network::Mainnet,
        "http://127.0.0.1:1/",
        "u",
        Secret::new("p"),
    )
    .unwrap_err();
    assert!(matches!(err, SourceError::UnknownSymbol { .. }), "{err:?}");
}
