use defpool_market::{KucoinSource, MarketSource, SourceError};
use rust_decimal::Decimal;

use crate::server::{recorded, Answer, Server};
use crate::{clock, d, fast, t, NOW_MS};

fn source(server: &Server, attempts: u32) -> KucoinSource {
    KucoinSource::new()
        .with_base_url(server.url())
        .with_http(fast(attempts))
        .with_clock(clock())
}

#[test]
fn one_coin_uses_level1() {
    let server = Server::start(|_, _| Answer::ok(recorded("kucoin/level1_ltc_btc.json")));
    let snaps = source(&server, 1).fetch(&[t("LTC")]).unwrap();
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0].price_btc, Some(d("0.001123")));
    assert_eq!(snaps[0].source, "kucoin");
    assert_eq!(snaps[0].observed_at_ms, NOW_MS);
    let reqs = server.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].path, "/api/v1/market/orderbook/level1");
    assert_eq!(reqs[0].param("symbol"), Some("LTC-BTC"));
}

#[test]
fn an_unlisted_direct_pair_falls_back_to_the_inverse() {
    let server = Server::start(|req, _| match req.param("symbol") {
        Some("BTC-USDT") => Answer::ok(recorded("kucoin/level1_btc_usdt.json")),
        _ => Answer::ok(recorded("kucoin/level1_not_listed.json")),
    });
    let snaps = source(&server, 1).fetch(&[t("USDT")]).unwrap();
    assert_eq!(
        snaps[0].price_btc,
        Some((Decimal::ONE / d("36525.1")).normalize())
    );
    let symbols: Vec<_> = server
        .requests()
        .iter()
        .map(|r| r.param("symbol").unwrap().to_string())
        .collect();
    assert_eq!(symbols, ["USDT-BTC", "BTC-USDT"]);
}

#[test]
fn a_symbol_listed_neither_way_is_unknown() {
    let server = Server::start(|_, _| Answer::ok(recorded("kucoin/level1_not_listed.json")));
    let err = source(&server, 3).fetch(&[t("XYZ")]).unwrap_err();
    match &err {
        SourceError::UnknownSymbol { origin, symbol } => {
            assert_eq!(origin, "kucoin");
            assert_eq!(symbol, "XYZ-BTC (nor BTC-XYZ)");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(server.hits(), 2);
}

#[test]
fn a_level1_without_a_price_is_a_missing_pair() {
    let server = Server::start(|_, _| Answer::ok(recorded("kucoin/level1_no_price.json")));
    let err = source(&server, 1).fetch(&[t("LTC")]).unwrap_err();
    assert!(
        matches!(&err, SourceError::MissingPair { coin, .. } if coin == "LTC"),
        "{err:?}"
    );
}

#[test]
fn several_coins_use_one_all_tickers_request() {
    let server = Server::start(|_, _| Answer::ok(recorded("kucoin/all_tickers.json")));
    let coins = [t("LTC"), t("DOGE"), t("BSV"), t("USDT"), t("XYZ"), t("BTC")];
    let got = source(&server, 1).fetch_detailed(&coins).unwrap();
    let price = |c: &str| {
        got.snapshots
            .iter()
            .find(|s| s.coin == t(c))
            .and_then(|s| s.price_btc)
    };
    assert_eq!(price("LTC"), Some(d("0.001123")));
    assert_eq!(price("DOGE"), Some(d("0.00000163")));
    assert_eq!(
        price("USDT"),
        Some((Decimal::ONE / d("36525.1")).normalize())
    );
    assert_eq!(price("BTC"), Some(Decimal::ONE));
    assert_eq!(got.snapshots.len(), 4);
    let failed: Vec<(&str, &SourceError)> =
        got.failed.iter().map(|(c, e)| (c.as_str(), e)).collect();
    assert!(
        matches!(
            failed[..],
            [
                ("BSV", SourceError::MissingPair { .. }),
                ("XYZ", SourceError::UnknownSymbol { .. })
            ]
        ),
        "{failed:?}"
    );
    let reqs = server.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].path, "/api/v1/market/allTickers");
}

#[test]
fn error_codes_are_api_errors() {
    let server = Server::start(|_, _| Answer::status(400, recorded("kucoin/error_parameter.json")));
    let err = source(&server, 3).fetch(&[t("LTC")]).unwrap_err();
    assert_eq!(
        err,
        SourceError::Api {
            origin: "kucoin".into(),
            code: "400100".into(),
            message: "This pair is not provided at present".into(),
        }
    );
    assert_eq!(server.hits(), 1);
}

#[test]
fn rate_limits_in_status_or_body_are_retried_then_reported() {
    for status in [429, 200] {
        let server = Server::start(move |_, _| {
            Answer::status(status, recorded("kucoin/error_too_many_requests.json"))
        });
        let err = source(&server, 2)
            .fetch(&[t("LTC"), t("DOGE")])
            .unwrap_err();
        assert!(
            matches!(err, SourceError::RateLimited { .. }),
            "{status}: {err:?}"
        );
        assert_eq!(server.hits(), 2, "{status}");
    }
}

#[test]
fn server_errors_are_retried() {
    let server = Server::start(|_, i| match i {
        0 => Answer::status(500, recorded("kucoin/error_internal.json")),
        _ => Answer::ok(recorded("kucoin/level1_ltc_btc.json")),
    });
    let snaps = source(&server, 3).fetch(&[t("LTC")]).unwrap();
    assert_eq!(snaps[0].price_btc, Some(d("0.001123")));
    assert_eq!(server.hits(), 2);
}

#[test]
fn an_envelope_without_a_code_is_malformed() {
    let server = Server::start(|_, _| Answer::ok(recorded("kucoin/envelope_without_code.json")));
    let err = source(&server, 3).fetch(&[t("LTC")]).unwrap_err();
    assert!(matches!(err, SourceError::Malformed { .. }), "{err:?}");
    let server =
        Server::start(|_, _| Answer::ok(b"{\"code\":\"200000\",\"data\":{\"ticker\":5}}".to_vec()));
    let err = source(&server, 3)
        .fetch(&[t("LTC"), t("DOGE")])
        .unwrap_err();
    assert!(matches!(err, SourceError::Malformed { .. }), "{err:?}");
}
