//! The accounting rules as properties over random work streams, earnings, fees and block lives:
//! 1. every posting sums to zero per coin, so the ledger does;
//! 2. every unit is attributed: fee + Σ shares (+ unattributed, only without work) = earning;
//! 3. the fee is exactly floor(earning · bps / 10 000); each share is its exact pro-rata part
//!    rounded down or one unit more, the spare units go to the largest remainders with ties to
//!    the first name, and the result does not depend on the order work arrived in;
//! 4. a block's postings, whatever states it goes through (reorgs back included), leave each user
//!    with their share if it ends matured and with nothing otherwise; re-processing is a no-op;
//! 5. a PPLNS window takes exactly its size in work, the last record in part.

use std::collections::BTreeMap;

use defpool_accounting::{
    on_block_status, pplns, pplns_window, prop, Account, Attribution, BlockBook, BlockEarning,
    Ledger, Posting,
};
use defpool_control::BlockState;
use defpool_core::Ticker;
use primitive_types::U256;
use proptest::prelude::*;

fn ltc() -> Ticker {
    "LTC".parse().unwrap()
}

/// A few users, so that users repeat and ties happen.
fn user() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "alice", "bob", "carol", "dave", "erin", "frank", "ltc1qzz",
    ])
    .prop_map(String::from)
}

/// Work of one record: small values (ties, zero) as well as ones far beyond 2^64.
fn work() -> impl Strategy<Value = u128> {
    prop_oneof![0u128..4, 1u128..1_000_000, (1u128 << 60)..(1u128 << 100),]
}

/// Records of work, in arrival order.
fn stream() -> impl Strategy<Value = Vec<(String, u128)>> {
    prop::collection::vec((user(), work()), 0..40)
}

/// Earnings up to the largest ledger amount, with small ones (where rounding matters) common.
fn earning() -> impl Strategy<Value = u64> {
    prop_oneof![0u64..1000, 0u64..=i64::MAX as u64]
}

fn fee_bps() -> impl Strategy<Value = u32> {
    prop_oneof![Just(0u32), Just(10_000), 0u32..=10_000]
}

fn by_user(records: &[(String, u128)]) -> BTreeMap<String, u128> {
    let mut m = BTreeMap::new();
    for (u, w) in records {
        *m.entry(u.clone()).or_insert(0u128) += *w;
    }
    m
}

fn assert_balanced(p: &Posting) -> Result<(), TestCaseError> {
    let mut sums: BTreeMap<&Ticker, i128> = BTreeMap::new();
    for e in p.entries() {
        *sums.entry(&e.coin).or_insert(0) += e.amount as i128;
    }
    for (coin, sum) in sums {
        prop_assert_eq!(sum, 0, "posting {} in {}", p.txn_id(), coin);
    }
    Ok(())
}

/// Properties 2 and 3 for one attribution of `earning` over `work` (per user, net of zeros).
fn assert_exact(
    a: &Attribution,
    earning: u64,
    work: &BTreeMap<String, u128>,
    fee_bps: u32,
) -> Result<(), TestCaseError> {
    // (3) The fee, exactly.
    prop_assert_eq!(a.fee as u128, earning as u128 * fee_bps as u128 / 10_000);
    // (2) Every unit attributed.
    prop_assert_eq!(a.total(), earning as u128);
    let net = earning - a.fee;
    let total_work: u128 = work.values().sum();
    if total_work == 0 {
        prop_assert!(a.shares.is_empty());
        prop_assert_eq!(a.unattributed, net);
        return Ok(());
    }
    prop_assert_eq!(a.unattributed, 0);
    // Nobody without work gets anything.
    for u in a.shares.keys() {
        prop_assert!(work.get(u).copied().unwrap_or(0) > 0, "{} has no work", u);
    }
    // (3) Each share within one unit of exact: floor(net·w/W) or one more; the users with one
    // more are exactly the first `left` by (largest remainder, then name).
    let (net_w, total_w) = (U256::from(net), U256::from(total_work));
    let mut ranked = Vec::new();
    let mut floors = 0u128;
    for (u, &w) in work.iter().filter(|(_, &w)| w > 0) {
        let exact = net_w * U256::from(w);
        let (floor, rem) = (exact / total_w, exact % total_w);
        let share = a.shares.get(u).copied().unwrap_or(0);
        let floor = floor.as_u64();
        prop_assert!(
            share == floor || share == floor + 1,
            "{}: {} vs floor {}",
            u,
            share,
            floor
        );
        // |share·W − net·w| < W: less than one unit from the exact value.
        let scaled = U256::from(share) * total_w;
        let diff = if scaled > exact {
            scaled - exact
        } else {
            exact - scaled
        };
        prop_assert!(diff < total_w);
        floors += floor as u128;
        ranked.push((rem, u.clone(), share > floor));
    }
    let left = (net as u128 - floors) as usize;
    prop_assert!(left < ranked.len().max(1));
    // Largest remainder first; equal remainders by name (BTreeMap order, already ascending,
    // and the sort is stable).
    ranked.sort_by_key(|r| std::cmp::Reverse(r.0));
    for (i, (_, u, bumped)) in ranked.iter().enumerate() {
        prop_assert_eq!(*bumped, i < left, "{} at rank {}", u, i);
    }
    Ok(())
}

/// The ledger after applying postings, checking each one and the per-coin total.
fn apply_all(ledger: &mut Ledger, postings: &[Posting]) -> Result<(), TestCaseError> {
    for p in postings {
        assert_balanced(p)?;
        ledger.apply(p);
        prop_assert_eq!(ledger.total(&ltc()), 0);
    }
    Ok(())
}

fn state() -> impl Strategy<Value = BlockState> {
    prop_oneof![
        Just(BlockState::Immature),
        Just(BlockState::Matured),
        Just(BlockState::Orphaned),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// PROP: properties 1–3, and independence of the order work arrived in.
    #[test]
    fn prop_attributes_every_unit_exactly(
        (records, shuffled) in stream()
            .prop_flat_map(|r| (Just(r.clone()), Just(r).prop_shuffle())),
        earning in earning(),
        fee_bps in fee_bps(),
    ) {
        let work = by_user(&records);
        let a = prop(earning, &work, fee_bps).unwrap();
        assert_exact(&a, earning, &work, fee_bps)?;

        // The same work arriving in another order: the same attribution.
        prop_assert_eq!(&prop(earning, &by_user(&shuffled), fee_bps).unwrap(), &a);
        // Users with zero work do not change anything.
        let mut with_idle = work.clone();
        with_idle.entry("zz-idle".into()).or_insert(0);
        prop_assert_eq!(&prop(earning, &with_idle, fee_bps).unwrap(), &a);

        // (1) Its posting is balanced and credits exactly the attribution.
        if earning > 0 {
            let p = a.to_posting("t", &ltc(), Account::PoolEarnings(ltc())).unwrap();
            assert_balanced(&p)?;
            let mut ledger = Ledger::new();
            ledger.apply(&p);
            prop_assert_eq!(ledger.total(&ltc()), 0);
            prop_assert_eq!(ledger.balance(&Account::PoolFees, &ltc()), a.fee as i128);
            let source = ledger.balance(&Account::PoolEarnings(ltc()), &ltc());
            prop_assert_eq!(source, -(earning as i128));
            for (u, &s) in &a.shares {
                prop_assert_eq!(ledger.balance(&Account::user(u.clone()), &ltc()), s as i128);
            }
        }
    }

    /// Property 3's tie rule where ties are common: users with equal work (small, and beyond
    /// 2^64), so spare units must go to the first names among equal remainders.
    #[test]
    fn ties_go_to_the_first_name(
        work in prop::collection::btree_map(
            user(),
            prop::sample::select(vec![1u128, 2, 3, 1 << 70, 3 << 70]),
            0..7,
        ),
        earning in 0u64..100,
        fee_bps in fee_bps(),
    ) {
        let a = prop(earning, &work, fee_bps).unwrap();
        assert_exact(&a, earning, &work, fee_bps)?;
        // Build the same stream as records newest first, each user's work in two parts, and
        // check PPLNS over all of it agrees with PROP.
        let records: Vec<(String, u128)> = work
            .iter()
            .rev()
            .flat_map(|(u, &w)| [(u.clone(), w / 2), (u.clone(), w - w / 2)])
            .collect();
        prop_assert_eq!(pplns(earning, &records, u128::MAX, fee_bps).unwrap(), a);
    }

    /// PPLNS: property 5 (the window's work) and properties 2–3 over the window.
    #[test]
    fn pplns_takes_exactly_the_window(
        records in stream(),
        window_work in prop_oneof![0u128..2_000_000, 0u128..(1u128 << 102)],
        earning in earning(),
        fee_bps in fee_bps(),
    ) {
        let taken = pplns_window(&records, window_work);
        let available: u128 = records.iter().map(|(_, w)| w).sum();
        // (5) Exactly the window, or everything if there is less.
        prop_assert_eq!(taken.values().sum::<u128>(), window_work.min(available));

        // Newest first: the records before the cut are whole, the cut one is partial, the rest
        // untouched.
        let mut expected: BTreeMap<String, u128> = BTreeMap::new();
        let mut covered = 0u128;
        for (u, w) in &records {
            if covered >= window_work {
                break;
            }
            let part = (*w).min(window_work - covered);
            covered += part;
            if part > 0 {
                *expected.entry(u.clone()).or_insert(0) += part;
            }
        }
        prop_assert_eq!(&taken, &expected);

        let a = pplns(earning, &records, window_work, fee_bps).unwrap();
        assert_exact(&a, earning, &taken, fee_bps)?;
        prop_assert_eq!(a, prop(earning, &taken, fee_bps).unwrap());
    }

    /// Property 4: any sequence of block states, reorgs back included.
    #[test]
    fn block_credits_follow_the_final_state(
        records in stream(),
        window_work in 0u128..(1u128 << 101),
        reward in prop_oneof![0u64..10_000, 0u64..=i64::MAX as u64],
        fee_bps in fee_bps(),
        states in prop::collection::vec(state(), 0..12),
        replays in prop::collection::vec(any::<bool>(), 12),
    ) {
        let block =
            BlockEarning::new(ltc(), "00c0ffee", reward, &records, window_work, fee_bps).unwrap();
        let a = block.attribution().clone();
        let mut ledger = Ledger::new();
        let mut book = BlockBook::default();
        let mut all: Vec<Posting> = Vec::new();
        for (i, &s) in states.iter().enumerate() {
            let before = book;
            let postings = book.advance(&block, s);
            // The same event again, from the state stored before it: the same ids and entries.
            if before.state == Some(s) {
                prop_assert!(postings.is_empty());
                prop_assert_eq!(book, before);
            } else {
                let again = on_block_status(&block, before.state, s, before.transitions);
                prop_assert_eq!(&again, &postings);
            }
            // An orphaned block that was never credited posts nothing to users.
            if s == BlockState::Orphaned && before.state != Some(BlockState::Matured) {
                let mut entries = postings.iter().flat_map(|p| p.entries());
                prop_assert!(entries.all(|e| e.account.as_user().is_none()));
            }
            apply_all(&mut ledger, &postings)?;
            if replays[i] {
                // Re-applying what was already applied changes nothing.
                let snapshot = ledger.clone();
                for p in &postings {
                    prop_assert!(!ledger.apply(p));
                }
                prop_assert_eq!(&ledger, &snapshot);
            }
            // A reversal is the exact negation of the credit it undoes.
            for p in &postings {
                if p.txn_id().contains(":reverse:") {
                    let credit =
                        all.iter().rev().find(|c| c.txn_id().contains(":credit:")).unwrap();
                    let negation = credit.negated("x", "");
                    prop_assert_eq!(p.entries(), negation.entries());
                }
            }
            all.extend(postings);
        }
        // Transaction ids never repeat within a block's life.
        let mut ids: Vec<&str> = all.iter().map(|p| p.txn_id()).collect();
        ids.sort();
        let n = ids.len();
        ids.dedup();
        prop_assert_eq!(ids.len(), n);

        let last = states.last().copied();
        let matured = last == Some(BlockState::Matured);
        let immature = last == Some(BlockState::Immature);
        let users = ["alice", "bob", "carol", "dave", "erin", "frank", "ltc1qzz"];
        for u in users {
            let expected = if matured { a.shares.get(u).copied().unwrap_or(0) } else { 0 };
            let balance = ledger.balance(&Account::user(u), &ltc());
            prop_assert_eq!(balance, expected as i128, "user {}", u);
        }
        let fee = if matured { a.fee } else { 0 };
        prop_assert_eq!(ledger.balance(&Account::PoolFees, &ltc()), fee as i128);
        let unattributed = if matured { a.unattributed } else { 0 };
        prop_assert_eq!(ledger.balance(&Account::PoolUnattributed, &ltc()), unattributed as i128);
        let held = if immature { reward } else { 0 };
        prop_assert_eq!(ledger.balance(&Account::PoolImmature(ltc()), &ltc()), held as i128);
        let minted = if matured || immature { reward } else { 0 };
        prop_assert_eq!(ledger.balance(&Account::Chain(ltc()), &ltc()), -(minted as i128));
        prop_assert_eq!(ledger.total(&ltc()), 0);
        // (2) over the block: the users, the fee and the unattributed rest make up the reward.
        prop_assert_eq!(a.total(), reward as u128);
    }

    /// Property 1 over a whole mixed ledger: external payouts attributed by PROP and solo blocks
    /// through their lives, in several coins.
    #[test]
    fn the_ledger_sums_to_zero(
        payouts in prop::collection::vec((earning(), stream(), fee_bps(), any::<bool>()), 0..6),
        blocks in prop::collection::vec(
            (earning(), stream(), prop::collection::vec(state(), 0..6)),
            0..6,
        ),
    ) {
        let coins: [Ticker; 2] = [ltc(), "DOGE".parse().unwrap()];
        let mut ledger = Ledger::new();
        for (i, (amount, records, fee_bps, doge)) in payouts.iter().enumerate() {
            let coin = &coins[*doge as usize];
            if *amount == 0 {
                continue;
            }
            let received = Posting::transfer(
                format!("payout:{i}"), coin, Account::External("up".into()),
                Account::PoolEarnings(coin.clone()), *amount, "payout").unwrap();
            let a = prop(*amount, &by_user(records), *fee_bps).unwrap();
            let attributed = a.to_posting(format!("payout:{i}:attribution"), coin,
                Account::PoolEarnings(coin.clone())).unwrap();
            for p in [received, attributed] {
                assert_balanced(&p)?;
                ledger.apply(&p);
            }
            // Attributed in full: nothing left awaiting attribution.
            prop_assert_eq!(ledger.balance(&Account::PoolEarnings(coin.clone()), coin), 0);
        }
        for (i, (reward, records, states)) in blocks.iter().enumerate() {
            let coin = &coins[i % 2];
            let hash = format!("{i:064x}");
            let block =
                BlockEarning::new(coin.clone(), hash, *reward, records, 1 << 80, 150).unwrap();
            let mut book = BlockBook::default();
            for &s in states {
                for p in book.advance(&block, s) {
                    assert_balanced(&p)?;
                    ledger.apply(&p);
                }
            }
        }
        for coin in &coins {
            prop_assert_eq!(ledger.total(coin), 0);
        }
    }
}
