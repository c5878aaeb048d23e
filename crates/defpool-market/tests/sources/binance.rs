use std::time::{Duration, Instant};

use defpool_market::{BinanceSource, MarketSource, SourceError};
use rust_decimal::Decimal;

use crate::server::{recorded, Answer, Server};
use crate::{clock, d, fast, t, NOW_MS};

fn source(server: &Server, attempts: u32) -> BinanceSource {
    BinanceSource::new()
        .with_base_url(server.url())
        .with_http(fast(attempts))
        .with_clock(clock())
}

fn invalid_symbol() -> Answer {
    Answer::status(400, recorded("binance/error_invalid_symbol.json"))
}

#[test]
fn one_coin_uses_symbol_and_reads_the_price_exactly() {
    let server = Server::start(|_, _| Answer::ok(recorded("binance/ticker_price_ltcbtc.json")));
    let snaps = source(&server, 1).fetch(&[t("LTC")]).unwrap();
    assert_eq!(snaps.len(), 1);
    let s = &snaps[0];
    assert_eq!(s.coin, t("LTC"));
    assert_eq!(s.price_btc, Some(d("0.001123")));
    assert_eq!((s.difficulty, s.block_reward, s.height), (None, None, None));
    assert_eq!(s.observed_at_ms, NOW_MS);
    assert_eq!(s.source, "binance");
    let reqs = server.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].method, "GET");
    assert_eq!(reqs[0].path, "/api/v3/ticker/price");
    assert_eq!(reqs[0].param("symbol"), Some("LTCBTC"));
}

#[test]
fn several_coins_go_in_one_symbols_batch_and_btc_is_one() {
    let server = Server::start(|_, _| Answer::ok(recorded("binance/ticker_price_batch.json")));
    let coins = [t("LTC"), t("BCH"), t("DOGE"), t("BTC"), t("LTC")];
    let snaps = source(&server, 1).fetch(&coins).unwrap();
    let price = |c: &str| snaps.iter().find(|s| s.coin == t(c)).unwrap().price_btc;
    assert_eq!(snaps.len(), 4, "one snapshot per distinct coin");
    assert_eq!(price("LTC"), Some(d("0.001123")));
    assert_eq!(price("BCH"), Some(d("0.005312")));
    assert_eq!(price("DOGE"), Some(d("0.00000163")));
    assert_eq!(price("BTC"), Some(Decimal::ONE));
    let reqs = server.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(
        reqs[0].param("symbols"),
        Some(r#"["LTCBTC","BCHBTC","DOGEBTC"]"#)
    );
}

#[test]
fn a_pair_missing_from_the_batch_answer_is_reported_for_that_coin_only() {
    let server =
        Server::start(|_, _| Answer::ok(recorded("binance/ticker_price_batch_partial.json")));
    let src = source(&server, 1);
    let got = src
        .fetch_detailed(&[t("LTC"), t("BCH"), t("DOGE")])
        .unwrap();
    assert_eq!(got.snapshots.len(), 2);
    assert_eq!(got.failed.len(), 1);
    let (coin, err) = &got.failed[0];
    assert_eq!(coin, &t("DOGE"));
    assert!(
        matches!(err, SourceError::MissingPair { coin, .. } if coin == "DOGE"),
        "{err:?}"
    );
    assert_eq!(src.fetch(&[t("LTC"), t("DOGE")]).unwrap().len(), 1);
}

#[test]
fn an_invalid_symbol_in_a_batch_falls_back_to_one_by_one_with_inverse_pairs() {
    let server = Server::start(|req, _| {
        if req.param("symbols").is_some() {
            return invalid_symbol();
        }
        match req.param("symbol") {
            Some("LTCBTC") => Answer::ok(recorded("binance/ticker_price_ltcbtc.json")),
            Some("BTCUSDT") => Answer::ok(recorded("binance/ticker_price_btcusdt.json")),
            _ => invalid_symbol(),
        }
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
    assert_eq!(price("LTC"), Some(d("0.001123")));
    // Only BTCUSDT is listed: one USDT is 1/36525.01 BTC.
    assert_eq!(
        price("USDT"),
        Some((Decimal::ONE / d("36525.01")).normalize())
    );
    assert_eq!(got.failed.len(), 1);
    let (coin, err) = &got.failed[0];
    assert_eq!(coin, &t("XYZ"));
    match err {
        SourceError::UnknownSymbol { origin, symbol } => {
            assert_eq!(origin, "binance");
            assert!(
                symbol.contains("XYZBTC") && symbol.contains("BTCXYZ"),
                "{symbol}"
            );
        }
        other => panic!("{other:?}"),
    }
    let symbols: Vec<String> = server
        .requests()
        .iter()
        .map(|r| r.param("symbol").unwrap_or("<batch>").to_string())
        .collect();
    assert_eq!(
        symbols,
        ["<batch>", "LTCBTC", "USDTBTC", "BTCUSDT", "XYZBTC", "BTCXYZ"]
    );
}

#[test]
fn one_unknown_coin_alone_is_an_error_naming_source_and_symbol() {
    let server = Server::start(|_, _| invalid_symbol());
    let err = source(&server, 3).fetch(&[t("XYZ")]).unwrap_err();
    assert!(matches!(err, SourceError::UnknownSymbol { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.starts_with("binance: unknown symbol"), "{text}");
    // Not a transient failure: asked once per candidate pair, never retried.
    assert_eq!(server.hits(), 2);
}

#[test]
fn a_429_with_retry_after_is_waited_out_then_retried() {
    let server = Server::start(|_, i| match i {
        0 => Answer::status(429, recorded("binance/error_too_many_requests.json"))
            .with_header("Retry-After", "1"),
        _ => Answer::ok(recorded("binance/ticker_price_ltcbtc.json")),
    });
    let started = Instant::now();
    let snaps = source(&server, 3).fetch(&[t("LTC")]).unwrap();
    assert_eq!(snaps[0].price_btc, Some(d("0.001123")));
    assert_eq!(server.hits(), 2);
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "Retry-After honoured"
    );
}

#[test]
fn a_retry_after_beyond_the_limit_ends_the_fetch_at_once() {
    let server = Server::start(|_, _| {
        Answer::status(429, recorded("binance/error_too_many_requests.json"))
            .with_header("Retry-After", "120")
    });
    let err = source(&server, 5).fetch(&[t("LTC")]).unwrap_err();
    assert_eq!(
        err,
        SourceError::RateLimited {
            origin: "binance".into(),
            retry_after: Some(Duration::from_secs(120)),
        }
    );
    assert_eq!(err.to_string(), "binance: rate limited (retry after 120 s)");
    assert_eq!(server.hits(), 1);
}

#[test]
fn persistent_429_without_retry_after_uses_bounded_backoff() {
    let server =
        Server::start(|_, _| Answer::status(429, recorded("binance/error_too_many_requests.json")));
    let err = source(&server, 3).fetch(&[t("LTC")]).unwrap_err();
    assert!(
        matches!(
            err,
            SourceError::RateLimited {
                retry_after: None,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(server.hits(), 3);
}

#[test]
fn a_418_ip_ban_is_rate_limited_and_never_retried() {
    let server = Server::start(|_, _| {
        Answer::status(418, recorded("binance/error_ip_banned.json"))
            .with_header("Retry-After", "600")
    });
    let err = source(&server, 5).fetch(&[t("LTC"), t("BCH")]).unwrap_err();
    assert_eq!(
        err,
        SourceError::RateLimited {
            origin: "binance".into(),
            retry_after: Some(Duration::from_secs(600)),
        }
    );
    assert_eq!(server.hits(), 1);
}

#[test]
fn malformed_bodies_are_typed_errors() {
    for file in [
        "binance/ticker_price_truncated.json",
        "binance/ticker_price_not_a_number.json",
        "binance/ticker_price_zero.json",
        "binance/ticker_price_batch.json", // an array where one object is expected
    ] {
        let body = recorded(file);
        let server = Server::start(move |_, _| Answer::ok(body.clone()));
        let err = source(&server, 3).fetch(&[t("LTC")]).unwrap_err();
        assert!(
            matches!(err, SourceError::Malformed { .. }),
            "{file}: {err:?}"
        );
        assert!(
            err.to_string().starts_with("binance: malformed response"),
            "{err}"
        );
        assert_eq!(
            server.hits(),
            1,
            "{file}: malformed answers are not retried"
        );
    }
}

#[test]
fn other_api_errors_keep_code_and_message() {
    let server = Server::start(|_, _| {
        Answer::status(400, recorded("binance/error_illegal_characters.json"))
    });
    let err = source(&server, 3).fetch(&[t("LTC")]).unwrap_err();
    match &err {
        SourceError::Api { code, message, .. } => {
            assert_eq!(code, "-1100");
            assert!(message.starts_with("Illegal characters"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().starts_with("binance: API error -1100: "));
}

#[test]
fn an_html_502_is_retried_then_reported_as_a_server_error() {
    let server = Server::start(|_, _| Answer::Respond {
        status: 502,
        headers: vec![("Content-Type", "text/html".into())],
        body: recorded("binance/bad_gateway.html"),
    });
    let err = source(&server, 3).fetch(&[t("LTC"), t("BCH")]).unwrap_err();
    assert!(
        matches!(err, SourceError::Http { status: 502, .. }),
        "{err:?}"
    );
    assert!(err
        .to_string()
        .starts_with("binance: server error (HTTP 502): <html>"));
    assert_eq!(server.hits(), 3);
}
