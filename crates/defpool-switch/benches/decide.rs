//! Decision-engine and combining throughput, per core (divan runs each benchmark on one thread).
//!
//! * `decide_100_candidates`: one [`decide`] call over 100 eligible candidates, on the path
//!   every steady-state evaluation takes: a challenger beats the current target by more than X %
//!   but has not held for Y yet, so the engine ranks, compares, times, writes the reason and
//!   copies the inputs into the decision. One item per call.
//! * `decide_100_candidates_chained`: the state is fed back and the profitabilities rotate each
//!   call, so the calls mix Stay, Switch and challenger changes as a live engine would.
//! * `combine_100_coins_3_sources`: one [`Combiner::update`] over 300 snapshots (100 coins × 3
//!   sources, every field present), with a warm price history. One item per coin.
//!
//! Each benchmark runs for at least one second. Run with
//! `cargo bench -p defpool-switch --bench decide`.

use defpool_switch::{
    decide, Candidate, CombineParams, Combiner, EngineParams, EngineState, MarketSnapshot,
};
use divan::counter::ItemsCount;
use divan::Bencher;
use rust_decimal::Decimal;

fn main() {
    divan::main();
}

const COINS: usize = 100;
const MIN: u64 = 60_000;

fn candidates(shift: usize) -> Vec<Candidate> {
    (0..COINS)
        .map(|i| Candidate {
            target: format!("C{i:03}"),
            // 1.000000 .. 1.099000 BTC/day, rotating with `shift`.
            profitability: Decimal::new(1_000_000 + ((i + shift) % COINS) as i64 * 1_000, 6),
            eligible: Ok(()),
        })
        .collect()
}

fn params() -> EngineParams {
    EngineParams {
        hysteresis_percent: Decimal::from(5),
        hysteresis_ms: 10 * MIN,
        min_dwell_ms: 30 * MIN,
    }
}

#[divan::bench(min_time = 1)]
fn decide_100_candidates(bencher: Bencher) {
    let params = params();
    let cands = candidates(0);
    // C000 earns 1.0, C099 earns 1.099: C099 beats C000 by 9.9 % > 5 %.
    let state = EngineState {
        current: Some("C000".to_string()),
        since_ms: 0,
        challenger: Some(("C099".to_string(), 100 * MIN)),
        last_switch_ms: Some(0),
    };
    let mut now = 100 * MIN;
    bencher.counter(ItemsCount::new(1usize)).bench_local(|| {
        now += 1;
        divan::black_box(decide(
            &params,
            divan::black_box(&state),
            divan::black_box(&cands),
            None,
            now,
        ))
    });
}

#[divan::bench(min_time = 1)]
fn decide_100_candidates_chained(bencher: Bencher) {
    let params = params();
    let sets: Vec<Vec<Candidate>> = (0..COINS).map(|s| candidates(s * 7)).collect();
    let mut state = EngineState::default();
    let mut now = 0;
    let mut step = 0usize;
    bencher.counter(ItemsCount::new(1usize)).bench_local(|| {
        now += MIN;
        step += 1;
        let (d, next) = decide(&params, &state, &sets[(step / 20) % COINS], None, now);
        state = next;
        divan::black_box(d)
    });
}

#[divan::bench(min_time = 1)]
fn combine_100_coins_3_sources(bencher: Bencher) {
    let sources = ["binance", "kraken", "kucoin"];
    let mut snaps: Vec<MarketSnapshot> = Vec::with_capacity(COINS * sources.len());
    for i in 0..COINS {
        for (j, src) in sources.iter().enumerate() {
            snaps.push(MarketSnapshot {
                coin: format!("C{i:03}").parse().unwrap(),
                price_btc: Some(Decimal::new(500_000 + (i * 3 + j) as i64, 8)),
                difficulty: Some(Decimal::new(12_345_678 + j as i64, 0)),
                block_reward: Some(1_250_000_000 + j as u64),
                height: Some(2_000_000),
                observed_at_ms: 0,
                source: (*src).to_string(),
            });
        }
    }
    let mut combiner = Combiner::new(CombineParams::default());
    let mut now = 0;
    for _ in 0..10 {
        now += MIN;
        snaps.iter_mut().for_each(|s| s.observed_at_ms = now);
        combiner.update(&snaps, now);
    }
    bencher.counter(ItemsCount::new(COINS)).bench_local(|| {
        now += MIN;
        snaps.iter_mut().for_each(|s| s.observed_at_ms = now);
        divan::black_box(combiner.update(divan::black_box(&snaps), now))
    });
}
