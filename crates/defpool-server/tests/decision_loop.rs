//! The decision loop against a real store (SQLite and PostgreSQL), a real CSV market source on a
//! clock the test moves, and the real control plane with a client speaking the control wire:
//! Initial assignment, a switch after Y when prices cross (recorded with inputs and reason, pushed
//! to the client; the push latency is measured), a pin wins, disabling the current coin forces a
//! switch at once, and a restarted loop neither flips the coin nor issues a new epoch.

mod loops_support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use defpool_control::{Assignment, Message};
use defpool_core::secret::Secret;
use defpool_core::{Algorithm, Ticker};
use defpool_server::control::{ControlPlane, Credentials};
use defpool_server::state::{settings, FeedEvent, Shared};
use defpool_store::Store;
use loops_support::*;
use tokio::net::TcpListener;
use tokio::sync::watch;

const PROXY: &str = "loop-proxy";
const TOKEN: &str = "loop-proxy-token-0123456789";
/// 2024-01-02 01:00 UTC: the CSV row of 2024-01-01 is in force.
const DAY1: u64 = 1_704_157_200_000;
const DAY_MS: u64 = 86_400_000;

fn t(s: &str) -> Ticker {
    s.parse().unwrap()
}

/// BTC is steady; BCH's difficulty falls by 4 on the second day, doubling its profitability
/// over BTC's (from half of it). Prices are constant so the combiner's spike damping stays out.
fn write_market(dir: &TempDir) {
    std::fs::write(
        dir.0.join("btc.csv"),
        "date,price_btc,difficulty,block_reward\n2024-01-01,1,100,3.125\n2024-01-02,1,100,3.125\n",
    )
    .unwrap();
    std::fs::write(
        dir.0.join("bch.csv"),
        "date,price_btc,difficulty,block_reward\n2024-01-01,0.01,2,3.125\n2024-01-02,0.01,0.5,3.125\n",
    )
    .unwrap();
}

fn toml(dir: &TempDir) -> String {
    format!(
        r#"network = "regtest"
[server]
admin_token = "loop-admin-token-0123456789"
whitelist = ["BTC", "BCH"]
pool_fee_bps = 100

[server.switching]
hysteresis_percent = 5.0
hysteresis_minutes = 1
min_dwell_minutes = 0
stale_after_secs = 172800

[[server.market]]
kind = "csv"
url = "{dir}"
coins = ["BTC", "BCH"]
poll_secs = 1

[[server.proxies]]
id = "{PROXY}"
token = "{TOKEN}"

[[upstreams]]
name = "btc-pool"
coin = "BTC"
protocol = "sv1"
url = "stratum+tcp://127.0.0.1:3333"
username = "pool-user"
password = "pool-pass"
fee_bps = 100

[[upstreams]]
name = "bch-pool"
coin = "BCH"
protocol = "sv1"
url = "stratum+tcp://127.0.0.1:3334"
username = "pool-user"
password = "pool-pass"
fee_bps = 200
"#,
        dir = dir.0.display()
    )
}

struct Loop {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

fn start_loop(shared: &Arc<Shared>) -> Loop {
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn(defpool_server::decision::run(shared.clone(), rx));
    Loop { stop, task }
}

impl Loop {
    async fn stop(self) {
        let _ = self.stop.send(true);
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the loop stops")
            .unwrap();
    }
}

/// When each epoch was broadcast by the loop (the decision's moment, in process).
#[derive(Clone, Default)]
struct Broadcasts(Arc<Mutex<HashMap<u64, Instant>>>);

impl Broadcasts {
    fn watch(shared: &Arc<Shared>) -> Broadcasts {
        let b = Broadcasts::default();
        let mut rx = shared.assignments.subscribe();
        let map = b.0.clone();
        tokio::spawn(async move {
            while let Ok(a) = rx.recv().await {
                map.lock().unwrap().insert(a.epoch, Instant::now());
            }
        });
        b
    }

    /// When `epoch` was broadcast (the watcher may see it a moment after the client did).
    async fn at(&self, epoch: u64) -> Instant {
        let map = &self.0;
        eventually(Duration::from_secs(2), "the broadcast", || async move {
            map.lock().unwrap().get(&epoch).copied()
        })
        .await
    }
}

/// The next assignment pushed to the client, and how long after its broadcast it arrived.
async fn next_assign(
    client: &mut ControlClient,
    broadcasts: &Broadcasts,
    wait: Duration,
) -> (Assignment, Duration) {
    loop {
        match client.next(wait).await {
            Some(Message::Assign(a)) => {
                let arrived = Instant::now();
                let latency = arrived.saturating_duration_since(broadcasts.at(a.epoch).await);
                return (a, latency);
            }
            Some(_) => continue,
            None => panic!("no assignment pushed within {wait:?}"),
        }
    }
}

fn coin_of(a: &Assignment) -> &str {
    a.primary_coin().unwrap().as_str()
}

/// The decision recorded for `epoch`'s assignment (recorded just after the push).
async fn decision_of(store: &Store, epoch: u64) -> defpool_store::DecisionRecord {
    eventually(
        Duration::from_secs(5),
        "the decision record",
        || async move {
            store
                .recent_decisions(50)
                .await
                .unwrap()
                .into_iter()
                .find(|d| d.decision.epoch == epoch && d.decision.inputs["kind"] != "stay")
        },
    )
    .await
}

async fn scenario(backend: Backend) {
    let Some(db) = TestDb::open(backend, "decision_loop").await else {
        return;
    };
    let dir = TempDir::new("decision-loop");
    write_market(&dir);
    let config = config(&dir, &toml(&dir));
    let clock = ManualClock::new(DAY1);
    let shared = Shared::new(db.store.clone(), Arc::new(config), clock.clock());
    let mut feed = shared.feed.subscribe();
    let broadcasts = Broadcasts::watch(&shared);

    // The real control plane, and a client speaking its wire.
    let (plane_stop, plane_rx) = watch::channel(false);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let control = listener.local_addr().unwrap();
    let plane = Arc::new(ControlPlane {
        shared: shared.clone(),
        credentials: Credentials(
            [(PROXY.to_string(), Secret::new(TOKEN))]
                .into_iter()
                .collect(),
        ),
    });
    tokio::spawn(plane.serve(listener, plane_rx));
    let (mut client, welcome) = ControlClient::connect(control, PROXY, TOKEN).await;
    assert!(
        matches!(&welcome, Message::Welcome { assignments, .. } if assignments.is_empty()),
        "{welcome:?}"
    );

    let mut latencies = Vec::new();
    let lp = start_loop(&shared);

    // 1. Initial: BTC (BCH earns half as much on day 1).
    let (a, latency) = next_assign(&mut client, &broadcasts, Duration::from_secs(10)).await;
    latencies.push(latency);
    assert_eq!(
        (a.epoch, coin_of(&a), a.algorithm),
        (1, "BTC", Algorithm::Sha256d)
    );
    assert_eq!(a.upstreams.len(), 1);
    assert_eq!(a.upstreams[0].name, "btc-pool");
    assert_eq!(a.upstreams[0].username, "pool-user");
    assert_eq!(
        a.upstreams[0].password.expose(),
        "pool-pass",
        "proxies get the credentials"
    );
    assert_eq!(a.standby.len(), 1, "the runner-up's first upstream");
    assert_eq!(a.standby[0].name, "bch-pool");
    // The whitelist was seeded from the config, audited as `config`.
    let coins = db.store.coins().await.unwrap();
    assert_eq!(coins.len(), 2);
    let audit = db.store.audit_log(10).await.unwrap();
    assert!(audit.iter().any(|r| r.actor == "config"), "{audit:?}");
    // The market view has both coins, BTC current.
    let sh = &shared;
    let view = eventually(Duration::from_secs(5), "the market view", || async move {
        let view = sh.market.borrow().clone();
        (view.rows.len() == 2).then_some(view)
    })
    .await;
    assert!(
        view.rows
            .iter()
            .any(|r| r.coin == t("BTC") && r.current && r.eligible),
        "{view:?}"
    );

    // 2. Day 2: BCH is twice as profitable; a challenger for Y = 1 min of (test) clock time.
    clock.set(DAY1 + DAY_MS);
    shared.decide_now.notify_one();
    eventually(
        Duration::from_secs(10),
        "the day-2 market data",
        || async move {
            let view = sh.market.borrow().clone();
            view.rows
                .iter()
                .any(|r| r.coin == t("BCH") && r.difficulty.as_deref() == Some("0.5"))
                .then_some(())
        },
    )
    .await;
    // Evaluations keep running while the clock stands still: no switch before Y.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        client.next(Duration::from_millis(100)).await.is_none(),
        "no switch before Y has passed"
    );

    clock.advance(61_000);
    shared.decide_now.notify_one();
    let (a, latency) = next_assign(&mut client, &broadcasts, Duration::from_secs(10)).await;
    latencies.push(latency);
    assert_eq!((a.epoch, coin_of(&a)), (2, "BCH"));
    assert_eq!(a.standby[0].name, "btc-pool");
    let d = decision_of(&db.store, 2).await;
    assert_eq!(d.decision.coin, Some(t("BCH")));
    assert_eq!(d.decision.inputs["kind"], "switch");
    assert!(d.decision.reason.contains("BCH beats BTC"), "{d:?}");
    let candidates = d.decision.inputs["candidates"].as_array().unwrap();
    assert_eq!(candidates.len(), 2, "{}", d.decision.inputs);
    let coins = d.decision.inputs["coins"].as_array().unwrap();
    assert!(coins
        .iter()
        .any(|c| c["coin"] == "BCH" && c["difficulty"] == "0.5" && c["fee_bps"] == 200));
    assert_eq!(d.decision.inputs["params"]["hysteresis_ms"], 60_000);

    // 3. A pin wins over the market.
    db.store
        .set_setting(
            "test-admin",
            settings::PINS,
            &serde_json::json!({"sha256d": "BTC"}),
        )
        .await
        .unwrap();
    shared.decide_now.notify_one();
    let (a, latency) = next_assign(&mut client, &broadcasts, Duration::from_secs(10)).await;
    latencies.push(latency);
    assert_eq!((a.epoch, coin_of(&a)), (3, "BTC"));
    assert!(a.reason.contains("pinned"), "{}", a.reason);

    // 4. Unpinned, BCH is better but has to hold for Y again: BTC stays (the clock stands).
    db.store
        .set_setting("test-admin", settings::PINS, &serde_json::json!({}))
        .await
        .unwrap();
    shared.decide_now.notify_one();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(client.next(Duration::from_millis(100)).await.is_none());

    // 5. Disabling the current coin forces a switch at once.
    db.store
        .set_coin("test-admin", &t("BTC"), false)
        .await
        .unwrap();
    let asked = Instant::now();
    shared.decide_now.notify_one();
    let (a, latency) = next_assign(&mut client, &broadcasts, Duration::from_secs(10)).await;
    latencies.push(latency);
    let forced_after = asked.elapsed();
    assert_eq!((a.epoch, coin_of(&a)), (4, "BCH"));
    assert!(a.reason.contains("forced"), "{}", a.reason);
    assert!(a.standby.is_empty(), "BTC is not eligible: no standby");
    assert!(forced_after < Duration::from_secs(1), "{forced_after:?}");

    // The feed saw every switch with its kind.
    let mut kinds = Vec::new();
    while let Ok(e) = feed.try_recv() {
        if let FeedEvent::Switch {
            kind, epoch, to, ..
        } = e
        {
            kinds.push((epoch, kind, to.unwrap()));
        }
    }
    assert_eq!(
        kinds,
        vec![
            (1, "initial".to_string(), "BTC".to_string()),
            (2, "switch".to_string(), "BCH".to_string()),
            (3, "pinned".to_string(), "BTC".to_string()),
            (4, "forced".to_string(), "BCH".to_string()),
        ]
    );
    let metrics = &shared.metrics;
    eventually(Duration::from_secs(2), "4 pushes counted", || async move {
        (defpool_server::state::Metrics::get(&metrics.assignments_pushed) == 4).then_some(())
    })
    .await;

    // 6. A restart of the loop: same coin, same epoch, no push; the record shows it alive.
    lp.stop().await;
    let decisions_before = db.store.recent_decisions(1000).await.unwrap().len();
    let lp = start_loop(&shared);
    clock.advance(1_000);
    shared.decide_now.notify_one();
    let store = &db.store;
    let new_record = eventually(
        Duration::from_secs(10),
        "a decision of the new loop",
        || async move {
            let all = store.recent_decisions(1000).await.unwrap();
            (all.len() > decisions_before).then(|| all[0].clone())
        },
    )
    .await;
    assert_eq!(new_record.decision.coin, Some(t("BCH")));
    assert_eq!(new_record.decision.epoch, 4);
    // Before its first market data the new loop keeps the coin (`no_eligible`), then stays.
    let kind = new_record.decision.inputs["kind"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(kind == "stay" || kind == "no_eligible", "{new_record:?}");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        client.next(Duration::from_millis(100)).await.is_none(),
        "a restart pushes nothing"
    );
    let current = db
        .store
        .current_assignment("default", Algorithm::Sha256d)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((current.epoch, coin_of(&current)), (4, "BCH"));
    lp.stop().await;
    let _ = plane_stop.send(true);

    let ms: Vec<f64> = latencies.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    eprintln!("{backend:?}: decision-to-push latency per assignment (ms): {ms:.2?}");
    eprintln!(
        "{backend:?}: whitelist change to forced assignment at the proxy (evaluation included): {:.2} ms",
        forced_after.as_secs_f64() * 1000.0
    );
    for l in &latencies {
        assert!(*l < Duration::from_secs(1), "push latency {l:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decision_loop_sqlite() {
    scenario(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decision_loop_postgres() {
    scenario(Backend::Postgres).await;
}
