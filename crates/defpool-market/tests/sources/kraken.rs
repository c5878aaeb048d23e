use defpool_market::{KrakenSource, MarketSource, SourceError};
use rust_decimal::Decimal;

use crate::server::{recorded, Answer, Server};
use crate::{clock, d, fast, t, NOW_MS};

fn source(server: &Server, attempts: u32) -> KrakenSource {
    KrakenSource::new()
        .with_base_url(server.url())
        .with_http(fast(attempts))
        .with_clock(clock())
}

fn unknown_pair() -> Answer {
    Answer::ok(recorded("kraken/error_unknown_asset_pair.json"))
}

#[test]
fn a_batch_maps_kraken_symbols_and_long_result_keys() {
    let server = Server::start(|_, _| Answer::ok(recorded("kraken/ticker_batch.json")));
    let snaps = source(&server, 1)
        .fetch(&[t("LTC"), t("DOGE"), t("BCH"), t("BTC")])
        .unwrap();
    let price = |c: &str| snaps.iter().find(|s| s.coin == t(c)).unwrap().price_btc;
    // Last trade (`c[0]`), keyed XLTCXXBT / XXDGXXBT / BCHXBT in the answer.
    assert_eq!(price("LTC"), Some(d("0.0011235")));
    assert_eq!(price("DOGE"), Some(d("0.00000163")));
    assert_eq!(price("BCH"), Some(d("0.005315")));
    assert_eq!(price("BTC"), Some(Decimal::ONE));
    assert!(snaps
        .iter()
        .all(|s| s.source == "kraken" && s.observed_at_ms == NOW_MS));
    let reqs = server.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].path, "/0/public/Ticker");
    // BTC is XBT and DOGE is XDG on Kraken.
    assert_eq!(reqs[0].param("pair"), Some("LTCXBT,XDGXBT,BCHXBT"));
}

#[test]
fn one_coin() {
    let server = Server::start(|_, _| Answer::ok(recorded("kraken/ticker_ltcxbt.json")));
    let snaps = source(&server, 1).fetch(&[t("LTC")]).unwrap();
    assert_eq!(snaps[0].price_btc, Some(d("0.0011235")));
    assert_eq!(server.requests()[0].param("pair"), Some("LTCXBT"));
}

#[test]
fn an_unknown_pair_in_a_batch_falls_back_to_one_by_one_with_inverse_pairs() {
    let server = Server::start(|req, _| match req.param("pair") {
        Some("LTCXBT") => Answer::ok(recorded("kraken/ticker_ltcxbt.json")),
        Some("XBTUSDT") => Answer::ok(recorded("kraken/ticker_xbtusdt.json")),
        _ => unknown_pair(),
    });
    let got = source(&server, 1)
        .fetch_detailed(&[t("LTC"), t("USDT"), t("XYZ")])
        .unwrap();
    let price = |c: &str| {
        got.snapshots
            .iter()
            .find(|s| s.coin == t(c))
            .and_then(|s| s.price_btc)
    };
    assert_eq!(price("LTC"), Some(d("0.0011235")));
    assert_eq!(price("USDT"), Some((Decimal::ONE / d("36525")).normalize()));
    assert_eq!(got.failed.len(), 1);
    assert_eq!(got.failed[0].0, t("XYZ"));
    assert!(
        matches!(&got.failed[0].1, SourceError::UnknownSymbol { symbol, .. } if symbol.contains("XYZXBT")),
        "{:?}",
        got.failed[0].1
    );
    let pairs: Vec<String> = server
        .requests()
        .iter()
        .map(|r| r.param("pair").unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        pairs,
        [
            "LTCXBT,USDTXBT,XYZXBT",
            "LTCXBT",
            "USDTXBT",
            "XBTUSDT",
            "XYZXBT",
            "XBTXYZ"
        ]
    );
}

#[test]
fn an_unknown_pair_alone_is_an_error() {
    let server = Server::start(|_, _| unknown_pair());
    let err = source(&server, 3).fetch(&[t("XYZ")]).unwrap_err();
    assert!(matches!(err, SourceError::UnknownSymbol { .. }), "{err:?}");
    assert!(err.to_string().starts_with("kraken: unknown symbol"));
}

#[test]
fn an_in_body_rate_limit_is_retried_then_reported() {
    let server = Server::start(|_, _| Answer::ok(recorded("kraken/error_rate_limit.json")));
    let err = source(&server, 3).fetch(&[t("LTC"), t("BCH")]).unwrap_err();
    assert_eq!(
        err,
        SourceError::RateLimited {
            origin: "kraken".into(),
            retry_after: None
        }
    );
    assert_eq!(server.hits(), 3);
}

#[test]
fn a_rate_limit_that_clears_is_retried_to_success() {
    let server = Server::start(|_, i| match i {
        0 => Answer::ok(recorded("kraken/error_rate_limit.json")),
        _ => Answer::ok(recorded("kraken/ticker_batch.json")),
    });
    let snaps = source(&server, 3).fetch(&[t("LTC"), t("BCH")]).unwrap();
    assert_eq!(snaps.len(), 2);
    assert_eq!(server.hits(), 2);
}

#[test]
fn envelope_errors_keep_category_and_message() {
    for (file, code, message) in [
        (
            "kraken/error_service_unavailable.json",
            "EService",
            "Unavailable",
        ),
        (
            "kraken/error_invalid_arguments.json",
            "EGeneral",
            "Invalid arguments",
        ),
    ] {
        let body = recorded(file);
        let server = Server::start(move |_, _| Answer::ok(body.clone()));
        let err = source(&server, 3).fetch(&[t("LTC")]).unwrap_err();
        assert_eq!(
            err,
            SourceError::Api {
                origin: "kraken".into(),
                code: code.into(),
                message: message.into()
            }
        );
        assert_eq!(
            err.to_string(),
            format!("kraken: API error {code}: {message}")
        );
    }
}

#[test]
fn warnings_are_not_failures() {
    let server = Server::start(|_, _| Answer::ok(recorded("kraken/ticker_with_warning.json")));
    let snaps = source(&server, 1).fetch(&[t("LTC")]).unwrap();
    assert_eq!(snaps[0].price_btc, Some(d("0.0011235")));
}

#[test]
fn a_pair_without_a_last_trade_is_a_missing_pair() {
    let server = Server::start(|_, _| Answer::ok(recorded("kraken/ticker_no_last_trade.json")));
    let err = source(&server, 1).fetch(&[t("LTC")]).unwrap_err();
    assert!(
        matches!(&err, SourceError::MissingPair { coin, .. } if coin == "LTC"),
        "{err:?}"
    );
    assert!(err.to_string().starts_with("kraken: no LTC/BTC price"));
}

#[test]
fn a_batch_answer_without_a_requested_pair_reports_it_missing() {
    let server = Server::start(|_, _| Answer::ok(recorded("kraken/ticker_ltcxbt.json")));
    let got = source(&server, 1)
        .fetch_detailed(&[t("LTC"), t("BCH")])
        .unwrap();
    assert_eq!(got.snapshots.len(), 1);
    assert!(matches!(
        &got.failed[..],
        [(c, SourceError::MissingPair { .. })] if c == &t("BCH")
    ));
}

#[test]
fn truncated_json_and_error_pages_are_typed() {
    let server = Server::start(|_, _| Answer::ok(recorded("kraken/ticker_truncated.json")));
    let err = source(&server, 3).fetch(&[t("LTC")]).unwrap_err();
    assert!(matches!(err, SourceError::Malformed { .. }), "{err:?}");
    assert_eq!(server.hits(), 1);

    let server = Server::start(|_, _| Answer::Respond {
        status: 520,
        headers: vec![("Content-Type", "text/html".into())],
        body: b"<html><body>Web server is returning an unknown error</body></html>".to_vec(),
    });
    let err = source(&server, 2).fetch(&[t("LTC")]).unwrap_err();
    assert!(
        matches!(err, SourceError::Http { status: 520, .. }),
        "{err:?}"
    );
    assert_eq!(server.hits(), 2);
}
