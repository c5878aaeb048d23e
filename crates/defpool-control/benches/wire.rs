//! Reading a proxy's batch off the wire: 1,000 work records (one in seven with a reject
//! reason), as the server reads every batch. `decode` is what the server calls (its one-pass
//! reading of a batch in the order `encode` writes it); `general_path` reads the same bytes
//! the way any other message (or a batch in another field order) is read: serde's derived
//! reading of the versioned envelope.
//!
//! Run with `cargo bench -p defpool-control --bench wire`; divan prints records per second.

use std::collections::BTreeMap;

use defpool_control::{decode, encode, Batch, Envelope, Message, ProxyId, Record, WorkRecord};
use divan::counter::ItemsCount;
use divan::Bencher;

fn main() {
    divan::main();
}

const RECORDS: usize = 1_000;

fn wire_batch() -> Vec<u8> {
    let records = (0..RECORDS as u64)
        .map(|k| {
            let mut rejected = BTreeMap::new();
            if k.is_multiple_of(7) {
                rejected.insert("stale-share".to_string(), 1);
            }
            Record::Work(WorkRecord {
                user: format!("ltc1qexampleuser{:05}", k / 2),
                worker: format!("rig{}", k % 2),
                coin: "LTC".parse().expect("a ticker"),
                epoch: 7,
                upstream: "ltc-solo".into(),
                accepted_work: (1u128 << 66) + u128::from(k),
                accepted_shares: 30,
                late_work: 0,
                late_shares: 0,
                rejected,
                from_ms: 1_700_000_000_000 + k,
                to_ms: 1_700_000_001_000 + k,
            })
        })
        .collect();
    encode(&Message::Batch(Batch {
        proxy_id: ProxyId("proxy-1".into()),
        sequence: 42,
        created_at_ms: 1_700_000_001_000,
        records,
    }))
}

#[divan::bench]
fn decode_batch(b: Bencher) {
    let bytes = wire_batch();
    b.counter(ItemsCount::new(RECORDS))
        .bench(|| decode(divan::black_box(&bytes)).expect("a batch"));
}

#[divan::bench]
fn general_path(b: Bencher) {
    let bytes = wire_batch();
    b.counter(ItemsCount::new(RECORDS))
        .bench(|| serde_json::from_slice::<Envelope>(divan::black_box(&bytes)).expect("a batch"));
}
