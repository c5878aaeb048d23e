//! Miners of every kind (SV1 with and without extranonce.subscribe, SV2 standard and extended)
//! mine through the proxy to SV2 and SV1 pools, through two switches and one failover: nobody is
//! disconnected and every acknowledged share is in the outbox under the coin whose job it
//! solved (the test pools tag their coinbases; the load generator counts by tag). And a pool
//! that refuses the block candidates below its share target (a coin adapter on regtest) is not
//! failed over for it.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use defpool_config::StratumProtocol;
use defpool_core::Algorithm;
use defpool_loadgen::{MinerKind, MinersOptions, PoolProtocol};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_miner_kind_follows_two_switches_and_a_failover_without_disconnects() {
    let dir = temp_dir("switching");
    let btc_sv2 = pool("BTC", PoolProtocol::Sv2).await;
    let btc_sv1 = pool("BTC", PoolProtocol::Sv1).await;
    let bch = pool("BCH", PoolProtocol::Sv1).await;
    let ups = [
        Up {
            name: "btc-sv2",
            coin: "BTC",
            pool: &btc_sv2,
        },
        Up {
            name: "btc-sv1",
            coin: "BTC",
            pool: &btc_sv1,
        },
        Up {
            name: "bch",
            coin: "BCH",
            pool: &bch,
        },
    ];
    let config = proxy_config(&dir, "switch-proxy", &ups);
    let proxy = start_proxy(&config).await;
    let admin = proxy.started.admin;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut runs = Vec::new();
    for kind in [
        MinerKind::Sv1,
        MinerKind::Sv1ExtranonceSubscribe,
        MinerKind::Sv2Standard,
        MinerKind::Sv2Extended,
    ] {
        let mut o = MinersOptions::new(proxy.port_for(kind), kind, Algorithm::Sha256d);
        o.count = 2;
        // One worker name per kind, so the outbox can be compared kind by kind.
        o.username = format!("{ADDRESS}.{}", format!("{kind:?}").to_lowercase());
        o.password = "d=0.000001".into();
        o.duration = Duration::from_secs(11);
        o.version_rolling = matches!(kind, MinerKind::Sv1 | MinerKind::Sv2Extended);
        o.authority_public_key = Some(PROXY_PUB.into());
        o.target_shares_per_sec = Some(40.0);
        // Like SRI's translator: an extended channel that rolls 6 bytes (4 for its miners, 2 of
        // its own), more than the proxy's default 4: taken from the upstream's padding.
        o.min_extranonce_size = 6;
        runs.push((kind, tokio::spawn(defpool_loadgen::run_miners(o, None))));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let r = post_assignment(admin, &assignment(1, "BCH", &ups)).await;
    assert!(r.contains("applied"), "{r}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let r = post_assignment(admin, &assignment(2, "BTC", &ups)).await;
    assert!(r.contains("applied"), "{r}");
    let r = post_assignment(admin, &assignment(1, "BCH", &ups)).await;
    assert!(r.contains("stale"), "a lower epoch must be refused: {r}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Failover: the active BTC pool (SV2) goes away; the SV1 one takes over.
    let btc_sv2_report = btc_sv2.stop().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let status = http(admin, "GET", "/status", "").await;

    let mut miners_by_coin: BTreeMap<(String, String), u128> = BTreeMap::new();
    let mut total = 0u128;
    for (kind, run) in runs {
        let report = run.await.unwrap().unwrap();
        assert_eq!(report.disconnects, 0, "{kind:?}: {report:?}");
        assert_eq!(report.reconnects, 0, "{kind:?}: {report:?}");
        assert!(report.shares_accepted > 10, "{kind:?}: {report:?}");
        // SV2 standard channels see only merkle roots, never the coinbase: their work is
        // untagged and compared in total below.
        if kind != MinerKind::Sv2Standard {
            assert!(
                report.accepted_work_by_coin.len() >= 2,
                "{kind:?} did not mine both coins: {report:?}"
            );
        }
        let worker = format!("{kind:?}").to_lowercase();
        for (coin, w) in &report.accepted_work_by_coin {
            *miners_by_coin
                .entry((worker.clone(), coin.clone()))
                .or_default() += w;
        }
        total += report.accepted_work_total;
    }
    proxy.stop();
    let btc_sv1_report = btc_sv1.stop().await;
    let bch_report = bch.stop().await;
    assert!(
        btc_sv2_report.shares_accepted > 0,
        "SV2 upstream got nothing"
    );
    assert!(bch_report.shares_accepted > 0, "BCH upstream got nothing");
    assert!(
        btc_sv1_report.shares_accepted > 0,
        "failover never reached btc-sv1: {status}"
    );
    assert!(status.contains("\"failovers\":1"), "{status}");
    // Every answered submit is in the answer-time histogram: at least the accepted shares.
    let body = &status[status.find('{').expect("a JSON body")..];
    let status_json: serde_json::Value = serde_json::from_str(body).expect("status JSON");
    let answers = &status_json["share_answer_us"];
    let accepted = status_json["counters"]["shares_accepted"].as_u64().unwrap();
    assert!(accepted > 0, "{status}");
    assert!(answers["count"].as_u64().unwrap() >= accepted, "{answers}");
    let (p50, p99) = (
        answers["p50"].as_u64().unwrap(),
        answers["p99"].as_u64().unwrap(),
    );
    assert!(0 < p50 && p50 <= p99, "{answers}");

    let (outbox_by_coin, appended) = outbox_by_coin(&dir.join("outbox.db"), "switch-proxy").await;
    let standard = "sv2standard".to_string();
    let (std_outbox, tagged_outbox): (BTreeMap<_, _>, BTreeMap<_, _>) = outbox_by_coin
        .into_iter()
        .partition(|((worker, _), _)| *worker == standard);
    let (std_miners, tagged_miners): (BTreeMap<_, _>, BTreeMap<_, _>) = miners_by_coin
        .into_iter()
        .partition(|((worker, _), _)| *worker == standard);
    assert_eq!(tagged_outbox, tagged_miners, "per worker and coin");
    assert_eq!(
        std_outbox.values().sum::<u128>(),
        std_miners.values().sum::<u128>(),
        "SV2 standard channels in total"
    );
    assert!(
        std_outbox.len() >= 2,
        "SV2 standard miners mined both coins: {std_outbox:?}"
    );
    assert_eq!(appended, total);
    let _ = std::fs::remove_dir_all(&dir);
}

/// On regtest nBits every share is a block candidate, which the proxy forwards whatever the
/// pool's target. A pool whose own block target is stricter (the coin adapter with
/// `block_target_difficulty`) refuses most of them as low difficulty: that must not count as
/// the pool failing, on an SV2 or an SV1 upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_block_candidates_below_the_pool_target_do_not_fail_the_pool_over() {
    for protocol in [PoolProtocol::Sv2, PoolProtocol::Sv1] {
        let dir = temp_dir("refused-candidates");
        let strict = pool_with("BTC", protocol, |o| {
            o.difficulty = 1e-3;
            o.block_difficulty = Some(1.0);
        })
        .await;
        let spare = pool("BTC", PoolProtocol::Sv1).await;
        let ups = [
            Up {
                name: "strict",
                coin: "BTC",
                pool: &strict,
            },
            Up {
                name: "spare",
                coin: "BTC",
                pool: &spare,
            },
        ];
        let config = proxy_config(&dir, "candidates-proxy", &ups);
        let proxy = start_proxy(&config).await;
        let admin = proxy.started.admin;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut o = MinersOptions::new(
            proxy.port(StratumProtocol::Sv1),
            MinerKind::Sv1,
            Algorithm::Sha256d,
        );
        o.count = 2;
        o.password = "d=0.000001".into();
        o.duration = Duration::from_secs(4);
        o.target_shares_per_sec = Some(40.0);
        let report = defpool_loadgen::run_miners(o, None).await.unwrap();
        let status = http(admin, "GET", "/status", "").await;
        proxy.stop();
        let strict_report = strict.stop().await;
        let spare_report = spare.stop().await;
        assert!(report.shares_accepted > 50, "{protocol:?}: {report:?}");
        assert!(
            status.contains("\"failovers\":0"),
            "{protocol:?}: the strict pool was failed over: {status}"
        );
        // The rule was exercised: far more than 15 of 20 forwarded shares were refused.
        assert!(
            strict_report.shares_rejected > 40,
            "{protocol:?}: the strict pool refused too few to matter: {strict_report:?}"
        );
        assert_eq!(
            spare_report.shares_accepted + spare_report.shares_rejected,
            0,
            "{protocol:?}: shares went to the spare pool: {spare_report:?}"
        );
    }
}
