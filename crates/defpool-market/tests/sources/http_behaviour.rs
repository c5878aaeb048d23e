//! Transport behaviour shared by every network adapter, shown through one of them.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use defpool_market::{BinanceSource, HttpOptions, MarketSource, RetryPolicy, SourceError};

use crate::server::{recorded, Answer, Server};
use crate::{clock, d, fast, t};

fn source(url: String, options: HttpOptions) -> BinanceSource {
    BinanceSource::new()
        .with_base_url(url)
        .with_http(options)
        .with_clock(clock())
}

#[test]
fn a_server_that_never_answers_times_out_on_every_attempt() {
    let server = Server::start(|_, _| Answer::Hang(Duration::from_secs(5)));
    let options = HttpOptions {
        timeout: Duration::from_millis(300),
        ..fast(2)
    };
    let started = Instant::now();
    let err = source(server.url(), options)
        .fetch(&[t("LTC")])
        .unwrap_err();
    assert_eq!(
        err,
        SourceError::Timeout {
            origin: "binance".into()
        }
    );
    assert_eq!(err.to_string(), "binance: timed out");
    assert_eq!(server.hits(), 2);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn a_hang_up_is_a_transport_error_and_is_retried() {
    let server = Server::start(|_, i| match i {
        0 => Answer::HangUp,
        _ => Answer::ok(recorded("binance/ticker_price_ltcbtc.json")),
    });
    let snaps = source(server.url(), fast(3)).fetch(&[t("LTC")]).unwrap();
    assert_eq!(snaps[0].price_btc, Some(d("0.001123")));
    assert_eq!(server.hits(), 2);

    let server = Server::start(|_, _| Answer::HangUp);
    let err = source(server.url(), fast(2))
        .fetch(&[t("LTC")])
        .unwrap_err();
    assert!(matches!(err, SourceError::Transport { .. }), "{err:?}");
    assert_eq!(server.hits(), 2);
}

#[test]
fn a_refused_connection_is_a_transport_error() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let err = source(format!("http://127.0.0.1:{port}"), fast(2))
        .fetch(&[t("LTC")])
        .unwrap_err();
    assert!(matches!(err, SourceError::Transport { .. }), "{err:?}");
    assert!(
        err.to_string().starts_with("binance: connection failed"),
        "{err}"
    );
}

#[test]
fn backoff_grows_between_retries() {
    let server = Server::start(|_, i| match i {
        0 | 1 => Answer::status(503, b"busy".to_vec()),
        _ => Answer::ok(recorded("binance/ticker_price_ltcbtc.json")),
    });
    let options = HttpOptions {
        retry: RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            max_retry_after: Duration::from_secs(1),
        },
        ..fast(3)
    };
    let started = Instant::now();
    source(server.url(), options).fetch(&[t("LTC")]).unwrap();
    assert_eq!(server.hits(), 3);
    // 100 ms, then 200 ms.
    assert!(
        started.elapsed() >= Duration::from_millis(290),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn retry_after_as_an_http_date_in_the_past_means_now() {
    let server = Server::start(|_, i| match i {
        0 => Answer::status(429, recorded("binance/error_too_many_requests.json"))
            .with_header("Retry-After", "Sun, 06 Nov 1994 08:49:37 GMT"),
        _ => Answer::ok(recorded("binance/ticker_price_ltcbtc.json")),
    });
    let started = Instant::now();
    source(server.url(), fast(2)).fetch(&[t("LTC")]).unwrap();
    assert_eq!(server.hits(), 2);
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[test]
fn no_retries_means_one_attempt() {
    let server = Server::start(|_, _| Answer::status(503, b"busy".to_vec()));
    let options = HttpOptions {
        retry: RetryPolicy::none(),
        ..fast(1)
    };
    let err = source(server.url(), options)
        .fetch(&[t("LTC")])
        .unwrap_err();
    assert!(
        matches!(err, SourceError::Http { status: 503, .. }),
        "{err:?}"
    );
    assert_eq!(server.hits(), 1);
}

#[test]
fn an_oversized_body_is_refused() {
    let server = Server::start(|_, _| Answer::ok(vec![b' '; 4096]));
    let options = HttpOptions {
        max_body_bytes: 1024,
        ..fast(2)
    };
    let err = source(server.url(), options)
        .fetch(&[t("LTC")])
        .unwrap_err();
    assert!(
        matches!(&err, SourceError::Malformed { detail, .. } if detail.contains("exceeds")),
        "{err:?}"
    );
}

#[test]
fn garbage_of_any_kind_never_panics() {
    let bodies: Vec<Vec<u8>> = vec![
        Vec::new(),
        b"null".to_vec(),
        b"{}".to_vec(),
        b"[]".to_vec(),
        b"[{}]".to_vec(),
        b"{\"symbol\":5,\"price\":[]}".to_vec(),
        b"{\"symbol\":\"LTCBTC\",\"price\":\"1e999999\"}".to_vec(),
        b"{\"symbol\":\"LTCBTC\",\"price\":\"-0.5\"}".to_vec(),
        b"{\"symbol\":\"LTCBTC\",\"price\":\"99999999999999999999999999999999\"}".to_vec(),
        vec![0xff, 0xfe, 0x00, 0x80],
        b"{\"code\":\"x\",\"msg\":null}".to_vec(),
    ];
    for body in bodies {
        for status in [200u16, 400, 404] {
            let b = body.clone();
            let server = Server::start(move |_, _| Answer::status(status, b.clone()));
            let got = source(server.url(), fast(1)).fetch(&[t("LTC"), t("DOGE")]);
            assert!(got.is_err(), "{status} {body:?}: {got:?}");
        }
    }
}

#[test]
fn a_failing_source_fails_the_fetch_even_when_btc_needs_no_request() {
    let server = Server::start(|_, _| Answer::status(503, b"busy".to_vec()));
    let src = source(server.url(), fast(2));
    let err = src.fetch(&[t("BTC"), t("LTC")]).unwrap_err();
    assert!(
        matches!(err, SourceError::Http { status: 503, .. }),
        "{err:?}"
    );
    // BTC alone needs no request at all.
    let snaps = src.fetch(&[t("BTC")]).unwrap();
    assert_eq!(snaps[0].price_btc, Some(d("1")));
    assert_eq!(server.hits(), 2);
}
