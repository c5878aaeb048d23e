//! What sealing costs per record: a second of shares at 20,000/s from 2,000 workers (300
//! commits of 60 records, as the group commit writes them) sealed into batches
//! - by the handle that appended them (the writer still holds their records), at most 1,000
//!   records per batch (the earlier default: fewer than there are workers, so a batch is full
//!   before a worker's records meet) and at the default limit;
//! - after a reopen (every row read and parsed from the file, as before the writer held them,
//!   and as after a restart), at most 1,000 records per batch.
//!
//! All in the same run, alternated; CPU is this process's (all threads).
//!
//! `cargo run --release -p defpool-proxy --example seal_cost`

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use defpool_control::{ProxyId, Record, WorkRecord};
use defpool_core::Ticker;
use defpool_proxy::outbox::{Outbox, OutboxOptions};

const COMMITS: u64 = 300;
const RECORDS_PER_COMMIT: u64 = 60;
const WORKERS: u64 = 2_000;
const ROUNDS: usize = 5;

/// utime + stime of this process, from /proc/self/stat (clock ticks of 10 ms).
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: u64 =
        fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

fn share(n: u64) -> Record {
    Record::Work(WorkRecord {
        user: format!("bc1q{:038}", n % WORKERS),
        worker: format!("rig{}", n % WORKERS),
        coin: Ticker::try_from("BTC".to_string()).expect("ticker"),
        epoch: 7,
        upstream: "pool-a".into(),
        accepted_work: 4_295_032_833,
        accepted_shares: 1,
        late_work: 0,
        late_shares: 0,
        rejected: BTreeMap::new(),
        from_ms: 1_700_000_000_000 + n,
        to_ms: 1_700_000_000_001 + n,
    })
}

/// Appends a second's worth, then seals it all; returns (wall, CPU) of the sealing only.
async fn round(
    dir: &std::path::Path,
    reopen: bool,
    max_batch_records: usize,
) -> (Duration, Duration, usize) {
    let path = dir.join(if reopen { "file.db" } else { "held.db" });
    let _ = std::fs::remove_file(&path);
    let opts = OutboxOptions {
        seal_interval: Duration::ZERO,
        max_batch_records,
        ..OutboxOptions::default()
    };
    let proxy = ProxyId("seal-cost".into());
    let mut outbox = Outbox::open(&path, proxy.clone(), opts.clone())
        .await
        .expect("open");
    for c in 0..COMMITS {
        let records = (0..RECORDS_PER_COMMIT)
            .map(|i| share(c * RECORDS_PER_COMMIT + i))
            .collect();
        outbox.append(records).await.expect("append");
    }
    if reopen {
        outbox.close().await.expect("close");
        outbox = Outbox::open(&path, proxy, opts).await.expect("reopen");
    }
    let (t0, c0) = (Instant::now(), process_cpu());
    let mut batches = 0;
    while outbox.seal().await.expect("seal").is_some() {
        batches += 1;
    }
    let out = (t0.elapsed(), process_cpu() - c0, batches);
    outbox.close().await.expect("close");
    let _ = std::fs::remove_file(&path);
    out
}

fn main() {
    let dir = std::env::temp_dir().join(format!("defpool-seal-cost-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let records = (COMMITS * RECORDS_PER_COMMIT) as f64;
    println!(
        "sealing {} records ({COMMITS} rows of {RECORDS_PER_COMMIT}, {WORKERS} workers), {ROUNDS} rounds each",
        records
    );
    let default_limit = OutboxOptions::default().max_batch_records;
    let variants = [
        ("held, 1,000 per batch", false, 1_000),
        ("parsed, 1,000 per batch", true, 1_000),
        ("held, default limit", false, default_limit),
    ];
    let mut cpu_per_record = vec![Vec::new(); variants.len()];
    for _ in 0..ROUNDS {
        for (i, &(name, reopen, limit)) in variants.iter().enumerate() {
            let (wall, cpu, batches) = rt.block_on(round(&dir, reopen, limit));
            let per = |d: Duration| d.as_secs_f64() * 1e6 / records;
            println!(
                "  {name:<26} {batches:>3} batches, wall {:6.2} us/record, CPU {:6.2} us/record",
                per(wall),
                per(cpu)
            );
            cpu_per_record[i].push(per(cpu));
        }
    }
    println!("median CPU per record sealed (default limit {default_limit}):");
    for ((name, ..), v) in variants.iter().zip(&mut cpu_per_record) {
        v.sort_by(f64::total_cmp);
        println!("  {name:<26} {:6.2} us", v[v.len() / 2]);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
