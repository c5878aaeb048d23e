use std::sync::Arc;

use defpool_market::{MarketSource, SourceError, WhatToMineSource};
use rust_decimal::Decimal;

use crate::server::{recorded, Answer, Server};
use crate::{clock, d, fast, t, NOW_MS};

fn source(server: &Server, attempts: u32) -> WhatToMineSource {
    WhatToMineSource::new()
        .with_base_url(server.url())
        .with_http(fast(attempts))
        .with_clock(clock())
}

#[test]
fn coins_json_gives_difficulty_reward_height_and_price() {
    let server = Server::start(|_, _| Answer::ok(recorded("whattomine/coins.json")));
    let coins = [t("LTC"), t("DOGE"), t("BCH"), t("BTC"), t("BSV")];
    let snaps = source(&server, 1).fetch(&coins).unwrap();
    assert_eq!(snaps.len(), 5);
    let get = |c: &str| snaps.iter().find(|s| s.coin == t(c)).unwrap();

    let ltc = get("LTC");
    assert_eq!(ltc.price_btc, Some(d("0.0011235")));
    assert_eq!(ltc.difficulty, Some(d("27318173.91298452")));
    assert_eq!(ltc.block_reward, Some(625_000_000));
    assert_eq!(ltc.height, Some(2_580_133));
    assert_eq!(
        ltc.observed_at_ms, 1_699_999_970_000,
        "WhatToMine's own timestamp"
    );
    assert_eq!(ltc.source, "whattomine");

    // Scientific notation read exactly; a lagging coin shows its old timestamp.
    let doge = get("DOGE");
    assert_eq!(doge.difficulty, Some(d("13752145.312")));
    assert_eq!(doge.price_btc, Some(d("0.00000163")));
    assert_eq!(doge.block_reward, Some(1_000_000_000_000));
    assert_eq!(doge.observed_at_ms, 1_699_990_000_000);

    assert_eq!(get("BCH").difficulty, Some(d("288437617617.3521")));
    // BTC in BTC is one, whatever the feed's exchange rate means for it.
    assert_eq!(get("BTC").price_btc, Some(Decimal::ONE));
    assert_eq!(get("BTC").block_reward, Some(625_000_000));
    // A rate in another currency is no BTC price; the rest of the entry still counts.
    let bsv = get("BSV");
    assert_eq!(bsv.price_btc, None);
    assert_eq!(bsv.difficulty, Some(d("81234112231.91")));

    let reqs = server.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].path, "/coins.json");
}

#[test]
fn coins_absent_or_outside_the_registry_are_unknown() {
    let server = Server::start(|_, _| Answer::ok(recorded("whattomine/coins.json")));
    let got = source(&server, 1)
        .fetch_detailed(&[t("LTC"), t("VTC"), t("XYZ")])
        .unwrap();
    assert_eq!(got.snapshots.len(), 1);
    let failed: Vec<&str> = got.failed.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(failed, ["VTC", "XYZ"]);
    assert!(got
        .failed
        .iter()
        .all(|(_, e)| matches!(e, SourceError::UnknownSymbol { .. })));
    let err = source(&server, 1).fetch(&[t("XYZ")]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "whattomine: unknown symbol `XYZ (not in the coin registry)`"
    );
    // A registry coin the document does not list.
    let server = Server::start(|_, _| Answer::ok(recorded("whattomine/coins_bad_entry.json")));
    let err = source(&server, 1).fetch(&[t("DOGE")]).unwrap_err();
    assert_eq!(err.to_string(), "whattomine: unknown symbol `DOGE`");
}

#[test]
fn a_bad_entry_fails_its_coin_only_and_shared_tags_match_by_algorithm() {
    let server = Server::start(|_, _| Answer::ok(recorded("whattomine/coins_bad_entry.json")));
    let got = source(&server, 1)
        .fetch_detailed(&[t("LTC"), t("BCH")])
        .unwrap();
    assert_eq!(got.snapshots.len(), 1);
    // Two entries are tagged BCH; the SHA-256 one is Bitcoin Cash.
    assert_eq!(got.snapshots[0].coin, t("BCH"));
    assert_eq!(got.snapshots[0].difficulty, Some(d("288437617617.3521")));
    match &got.failed[..] {
        [(coin, SourceError::Malformed { detail, .. })] => {
            assert_eq!(coin, &t("LTC"));
            assert!(detail.starts_with("Litecoin:"), "{detail}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_timestamp_ahead_of_our_clock_is_not_believed() {
    let server = Server::start(|_, _| Answer::ok(recorded("whattomine/coins.json")));
    let early = 1_699_000_000_000;
    let snaps = source(&server, 1)
        .with_clock(Arc::new(move || early))
        .fetch(&[t("LTC")])
        .unwrap();
    assert_eq!(snaps[0].observed_at_ms, early);
    assert!(early < NOW_MS);
}

#[test]
fn truncated_documents_and_error_pages_are_typed() {
    let server = Server::start(|_, _| Answer::ok(recorded("whattomine/coins_truncated.json")));
    let err = source(&server, 3).fetch(&[t("LTC")]).unwrap_err();
    assert!(matches!(err, SourceError::Malformed { .. }), "{err:?}");

    let server = Server::start(|_, _| Answer::Respond {
        status: 404,
        headers: vec![("Content-Type", "text/html".into())],
        body: recorded("whattomine/not_found.html"),
    });
    let err = source(&server, 3).fetch(&[t("LTC")]).unwrap_err();
    assert!(
        matches!(err, SourceError::Http { status: 404, .. }),
        "{err:?}"
    );
    assert!(err
        .to_string()
        .starts_with("whattomine: not found (HTTP 404)"));
    assert_eq!(server.hits(), 1, "a 404 is not retried");
}

#[test]
fn nothing_requested_asks_nothing() {
    let server = Server::start(|_, _| Answer::ok(recorded("whattomine/coins.json")));
    assert!(source(&server, 1).fetch(&[]).unwrap().is_empty());
    assert_eq!(server.hits(), 0);
}
