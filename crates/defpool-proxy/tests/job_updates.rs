//! Routine job updates (same block, same upstream, not clean) reach every miner, a little later
//! than new blocks: the group hands them to its sessions slice by slice over a short spread
//! instead of waking every session at once (see `UPDATE_SPREAD`).

mod common;

use std::time::Duration;

use common::*;
use defpool_core::Algorithm;
use defpool_loadgen::{MinerKind, MinersOptions, PoolProtocol};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routine_updates_reach_every_kind_of_miner() {
    let dir = temp_dir("job-updates");
    // A job every 250 ms, every fifth one clean (a new block): over the run about 16 jobs,
    // of which 3 are new blocks.
    let btc = pool_with("BTC", PoolProtocol::Sv1, |o| {
        o.job_interval = Duration::from_millis(250);
    })
    .await;
    let ups = [Up {
        name: "btc",
        coin: "BTC",
        pool: &btc,
    }];
    let config = proxy_config(&dir, "updates-proxy", &ups);
    let proxy = start_proxy(&config).await;
    let mut runs = Vec::new();
    for kind in [
        MinerKind::Sv1,
        MinerKind::Sv2Standard,
        MinerKind::Sv2Extended,
    ] {
        let mut o = MinersOptions::new(proxy.port_for(kind), kind, Algorithm::Sha256d);
        o.count = 3;
        o.username = format!("{ADDRESS}.updates");
        o.password = "d=0.000001".into();
        o.duration = Duration::from_secs(4);
        o.authority_public_key = Some(PROXY_PUB.into());
        o.hash = false;
        runs.push((kind, tokio::spawn(defpool_loadgen::run_miners(o, None))));
    }
    for (kind, run) in runs {
        let report = run.await.unwrap().unwrap();
        assert_eq!(report.disconnects, 0, "{kind:?}: {report:?}");
        // Only the new blocks would be about 3 jobs per miner; with the routine updates it is
        // about 16 (fewer for the miners that connected last).
        assert!(
            report.jobs_received >= 3 * 10,
            "{kind:?}: {} jobs for 3 miners, routine updates missing: {report:?}",
            report.jobs_received
        );
    }
    proxy.stop();
    btc.stop().await;
}
