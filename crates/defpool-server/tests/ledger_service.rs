//! The ledger service against a real store (SQLite and PostgreSQL), fed through the real control
//! plane: work of several users on a coin, a block found → immature → matured is credited exactly
//! as the pure PPLNS function says (an unpayable user's share withheld to `pool:unattributed`),
//! reconciling again posts nothing, orphaned after matured reverses to zero; pool payouts by PROP
//! are exact, idempotent per reference, and invalid ones are refused with clear errors.

mod loops_support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use defpool_accounting::{pplns, prop};
use defpool_control::{Batch, BlockState, Event, Message, ProxyId, Record, UserRecord, WorkRecord};
use defpool_core::secret::Secret;
use defpool_core::{Algorithm, Ticker};
use defpool_server::control::{ControlPlane, Credentials};
use defpool_server::ledger::{self, LedgerError, Settled};
use defpool_server::state::{FeedEvent, MarketView, PoolPayout, ProfitRow, Shared};
use defpool_store::{BlockPhase, Store};
use loops_support::*;
use tokio::net::TcpListener;
use tokio::sync::watch;

const PROXY: &str = "ledger-proxy";
const TOKEN: &str = "ledger-proxy-token-0123456789";
const ALICE: &str = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080";
const BOB: &str = "bcrt1qwqf5y96a6l2npql6z3h5gjcs6ze47f7h42wryz";
const CAROL: &str = "carol";
/// Address-length but not an address: its work is kept, its credits withheld.
const MALLORY: &str = "bcrt1qnotanaddressnotanaddressnotanaddr";
const HASH: &str = "00000000000000000000000000000000000000000000000000000000000b10c1";
/// Start of the first work minute (2024-01-01 00:00 UTC).
const T0: u64 = 1_704_067_200_000;
const MIN: u64 = 60_000;
const REWARD: u64 = 5_000_000_000;
/// 2 × 0.0001 × 2^32, truncated.
const WINDOW: u128 = 858_993;

fn ltc() -> Ticker {
    "LTC".parse().unwrap()
}

fn toml() -> String {
    format!(
        r#"network = "regtest"
[server]
admin_token = "ledger-admin-token-0123456789"
whitelist = ["LTC"]
pool_fee_bps = 100
pplns_window_factor = "2"

[[server.proxies]]
id = "{PROXY}"
token = "{TOKEN}"
"#
    )
}

fn work(user: &str, upstream: &str, minute: u64, amount: u128) -> Record {
    Record::Work(WorkRecord {
        user: user.into(),
        worker: "rig".into(),
        coin: ltc(),
        epoch: 1,
        upstream: upstream.into(),
        accepted_work: amount,
        accepted_shares: 1,
        late_work: 0,
        late_shares: 0,
        rejected: BTreeMap::new(),
        from_ms: minute + 1_000,
        to_ms: minute + 59_000,
    })
}

fn user(name: &str, address: Option<&str>) -> Record {
    Record::User(UserRecord {
        user: name.into(),
        payout_address: address.map(str::to_string),
        first_seen_ms: T0,
    })
}

fn status(state: BlockState, at_ms: u64) -> Record {
    Record::Event(Event::BlockStatus {
        coin: ltc(),
        adapter: "ltc-adapter".into(),
        height: 101,
        block_hash: HASH.into(),
        state,
        confirmations: 1,
        at_ms,
    })
}

struct Sender {
    client: ControlClient,
    sequence: u64,
}

impl Sender {
    async fn send(&mut self, records: Vec<Record>) {
        self.sequence += 1;
        self.client
            .send(&Message::Batch(Batch {
                proxy_id: ProxyId(PROXY.into()),
                sequence: self.sequence,
                created_at_ms: T0,
                records,
            }))
            .await;
        loop {
            match self.client.next(Duration::from_secs(10)).await {
                Some(Message::Ack { sequence }) if sequence == self.sequence => return,
                Some(Message::Error { code, message }) => panic!("{code}: {message}"),
                Some(_) => continue,
                None => panic!("no Ack for batch {}", self.sequence),
            }
        }
    }
}

async fn balance(store: &Store, account: &str) -> i64 {
    store.balance(account, &ltc()).await.unwrap()
}

async fn all_balances(store: &Store) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    for account in [
        format!("user:{ALICE}"),
        format!("user:{BOB}"),
        format!("user:{CAROL}"),
        format!("user:{MALLORY}"),
        "pool:fees".to_string(),
        "pool:unattributed".to_string(),
        "chain:LTC".to_string(),
        "external:ltc-pool".to_string(),
    ] {
        let b = balance(store, &account).await;
        if b != 0 {
            out.insert(account, b);
        }
    }
    out
}

async fn scenario(backend: Backend) {
    let Some(db) = TestDb::open(backend, "ledger_service").await else {
        return;
    };
    let store = db.store.clone();
    let dir = TempDir::new("ledger-service");
    let clock = ManualClock::new(T0 + 10 * MIN);
    let shared = Shared::new(
        store.clone(),
        Arc::new(config(&dir, &toml())),
        clock.clock(),
    );
    // The coin's difficulty as the decision loop would publish it: it sizes the PPLNS window.
    shared.market.send_replace(MarketView {
        updated_ms: T0,
        rows: vec![ProfitRow {
            coin: ltc(),
            algorithm: Algorithm::Scrypt,
            price_btc: Some("0.001".into()),
            difficulty: Some("0.0001".into()),
            block_reward: Some(REWARD),
            profitability: None,
            unit: "MH/s".into(),
            whitelisted: true,
            eligible: true,
            reason: None,
            sources: vec![],
            observed_at_ms: Some(T0),
            current: true,
        }],
    });
    let mut feed = shared.feed.subscribe();

    let (stop, stop_rx) = watch::channel(false);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let control = listener.local_addr().unwrap();
    let plane = Arc::new(ControlPlane {
        shared: shared.clone(),
        credentials: Credentials([(PROXY.to_string(), Secret::new(TOKEN))].into()),
    });
    tokio::spawn(plane.serve(listener, stop_rx.clone()));
    let service = tokio::spawn(ledger::run(shared.clone(), stop_rx.clone()));
    let (client, _) = ControlClient::connect(control, PROXY, TOKEN).await;
    let mut tx = Sender {
        client,
        sequence: 0,
    };

    // Work, newest minute first in the PPLNS sense: m4 is the last minute before the block.
    let (m1, m2, m3, m4) = (T0, T0 + MIN, T0 + 2 * MIN, T0 + 3 * MIN);
    let found_at = T0 + 4 * MIN + 30_000;
    tx.send(vec![
        user(ALICE, Some(ALICE)),
        user(BOB, Some(BOB)),
        user(CAROL, None),
        user(MALLORY, Some(MALLORY)),
        work(ALICE, "ltc-solo", m1, 1_000_000),
        work(BOB, "ltc-solo", m2, 400_000),
        work(CAROL, "ltc-solo", m3, 200_000),
        work(MALLORY, "ltc-solo", m3, 50_000),
        work(ALICE, "ltc-solo", m4, 300_000),
        work(BOB, "ltc-solo", m4, 100_000),
    ])
    .await;
    tx.send(vec![Record::Event(Event::BlockFound {
        coin: ltc(),
        adapter: "ltc-adapter".into(),
        height: 101,
        block_hash: HASH.into(),
        reward: REWARD,
        found_by: PROXY.into(),
        at_ms: found_at,
    })])
    .await;
    tx.send(vec![status(BlockState::Immature, found_at + MIN)])
        .await;
    // Immature: nothing credited.
    let mut settled = Settled::default();
    let r = ledger::reconcile(&shared, &mut settled).await.unwrap();
    assert_eq!((r.credited, r.reversed), (0, 0));
    assert!(all_balances(&store).await.is_empty());

    tx.send(vec![status(BlockState::Matured, found_at + 100 * MIN)])
        .await;
    let s = &store;
    eventually(Duration::from_secs(10), "the credit", || async move {
        (balance(s, "chain:LTC").await != 0).then_some(())
    })
    .await;

    // Exactly the pure PPLNS function over the same records, newest first.
    let records: Vec<(String, u128)> = [
        (ALICE, 300_000u128),
        (BOB, 100_000),
        (CAROL, 200_000),
        (MALLORY, 50_000),
        (BOB, 400_000),
        (ALICE, 1_000_000),
    ]
    .iter()
    .map(|(u, w)| (u.to_string(), *w))
    .collect();
    let expected = pplns(REWARD, &records, WINDOW, 100).unwrap();
    assert_eq!(expected.fee, REWARD / 100);
    let share = |u: &str| expected.shares[u] as i64;
    let want: BTreeMap<String, i64> = [
        (format!("user:{ALICE}"), share(ALICE)),
        (format!("user:{BOB}"), share(BOB)),
        (format!("user:{CAROL}"), share(CAROL)),
        ("pool:fees".to_string(), expected.fee as i64),
        (
            "pool:unattributed".to_string(),
            (expected.unattributed + expected.shares[MALLORY]) as i64,
        ),
        ("chain:LTC".to_string(), -(REWARD as i64)),
    ]
    .into();
    assert_eq!(all_balances(&store).await, want);
    assert_eq!(store.ledger_check().await.unwrap(), (0, 0));
    assert!(store
        .ledger_txn(&format!("block:{HASH}:credit:0"))
        .await
        .unwrap()
        .is_some());
    // Realised credits per user and coin, as the API reads them.
    let alice = store.balances(&format!("user:{ALICE}")).await.unwrap();
    assert_eq!(alice.get(&ltc()), Some(&share(ALICE)));
    let entries = store
        .account_entries(&format!("user:{BOB}"), 10)
        .await
        .unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].amount, share(BOB));

    // Reconciling again (a fresh service after a restart, twice) posts nothing.
    for _ in 0..2 {
        let r = ledger::reconcile(&shared, &mut Settled::default())
            .await
            .unwrap();
        assert_eq!((r.credited, r.reversed), (0, 0));
    }
    assert_eq!(all_balances(&store).await, want);

    // Orphaned after it was credited: fully reversed.
    tx.send(vec![status(BlockState::Orphaned, found_at + 101 * MIN)])
        .await;
    let s = &store;
    eventually(Duration::from_secs(10), "the reversal", || async move {
        (balance(s, "chain:LTC").await == 0).then_some(())
    })
    .await;
    assert!(
        all_balances(&store).await.is_empty(),
        "every balance back to zero"
    );
    assert_eq!(store.ledger_check().await.unwrap(), (0, 0));
    assert_eq!(
        store.block(HASH).await.unwrap().unwrap().phase,
        BlockPhase::Orphaned
    );
    let r = ledger::reconcile(&shared, &mut Settled::default())
        .await
        .unwrap();
    assert_eq!((r.credited, r.reversed), (0, 0));

    // The feed: block phases, the credit and its reversal.
    let mut phases = Vec::new();
    let mut earnings = Vec::new();
    while let Ok(e) = feed.try_recv() {
        match e {
            FeedEvent::Block { phase, .. } => phases.push(phase),
            FeedEvent::Earnings {
                source,
                users_amount,
                fee_amount,
                ..
            } => earnings.push((source, users_amount, fee_amount)),
            _ => {}
        }
    }
    assert_eq!(phases, ["found", "immature", "matured", "orphaned"]);
    let users_total = share(ALICE) + share(BOB) + share(CAROL);
    assert_eq!(
        earnings,
        vec![
            ("block".to_string(), users_total, expected.fee as i64),
            (
                "block_reversal".to_string(),
                -users_total,
                -(expected.fee as i64)
            ),
        ]
    );

    // Pool payouts: PROP over the period's work sent to that upstream.
    let p0 = T0 + 60 * MIN;
    tx.send(vec![
        work(ALICE, "ltc-pool", p0, 3_000),
        work(BOB, "ltc-pool", p0 + MIN, 1_000),
        work(MALLORY, "ltc-pool", p0 + MIN, 500),
        work(CAROL, "ltc-pool", p0 + 2 * MIN, 2_000),
        // Other work in the period, on another upstream: not this payout's.
        work(CAROL, "ltc-solo", p0, 1_000_000),
    ])
    .await;
    let payout = PoolPayout {
        coin: ltc(),
        upstream: "ltc-pool".into(),
        from_ms: p0,
        to_ms: p0 + 3 * MIN,
        amount: 1_000_003,
        reference: "statement-42".into(),
    };
    let done = ledger::record_pool_payout(&shared, &payout).await.unwrap();
    assert!(done.posted);
    let work_by_user: BTreeMap<String, u128> = [
        (ALICE.to_string(), 3_000u128),
        (BOB.to_string(), 1_000),
        (MALLORY.to_string(), 500),
        (CAROL.to_string(), 2_000),
    ]
    .into();
    let expected = prop(1_000_003, &work_by_user, 100).unwrap();
    let share = |u: &str| expected.shares[u] as i64;
    let want: BTreeMap<String, i64> = [
        (format!("user:{ALICE}"), share(ALICE)),
        (format!("user:{BOB}"), share(BOB)),
        (format!("user:{CAROL}"), share(CAROL)),
        ("pool:fees".to_string(), expected.fee as i64),
        (
            "pool:unattributed".to_string(),
            (expected.unattributed + expected.shares[MALLORY]) as i64,
        ),
        ("external:ltc-pool".to_string(), -1_000_003),
    ]
    .into();
    assert_eq!(all_balances(&store).await, want);
    assert_eq!(done.users, 3);
    assert_eq!(done.fee_amount, expected.fee as i64);
    assert_eq!(done.users_amount, share(ALICE) + share(BOB) + share(CAROL));
    // The same reference again posts nothing and reports the same figures.
    let again = ledger::record_pool_payout(&shared, &payout).await.unwrap();
    assert!(!again.posted);
    assert_eq!(again.txn_id, done.txn_id);
    assert_eq!(
        (again.users, again.users_amount, again.fee_amount),
        (done.users, done.users_amount, done.fee_amount)
    );
    assert_eq!(all_balances(&store).await, want);
    assert_eq!(store.ledger_check().await.unwrap(), (0, 0));

    // Refusals, each naming its cause; nothing posted.
    let refused = |p: PoolPayout| {
        let shared = shared.clone();
        async move {
            match ledger::record_pool_payout(&shared, &p).await {
                Err(LedgerError::Invalid(m)) => m,
                other => panic!("expected a refusal, got {other:?}"),
            }
        }
    };
    let base = PoolPayout {
        reference: "other".into(),
        ..payout.clone()
    };
    let m = refused(PoolPayout {
        coin: "ZZZ".parse().unwrap(),
        ..base.clone()
    })
    .await;
    assert!(m.contains("unknown coin ZZZ"), "{m}");
    let m = refused(PoolPayout {
        amount: 0,
        ..base.clone()
    })
    .await;
    assert!(m.contains("above zero"), "{m}");
    let m = refused(PoolPayout {
        amount: -5,
        ..base.clone()
    })
    .await;
    assert!(m.contains("above zero"), "{m}");
    let m = refused(PoolPayout {
        from_ms: p0,
        to_ms: p0,
        ..base.clone()
    })
    .await;
    assert!(m.contains("end after it starts"), "{m}");
    let m = refused(PoolPayout {
        from_ms: T0 + 1000 * MIN,
        to_ms: T0 + 1010 * MIN,
        ..base.clone()
    })
    .await;
    assert!(m.contains("no work on LTC"), "{m}");
    assert_eq!(all_balances(&store).await, want);

    let _ = stop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), service).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_service_sqlite() {
    scenario(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_service_postgres() {
    scenario(Backend::Postgres).await;
}
