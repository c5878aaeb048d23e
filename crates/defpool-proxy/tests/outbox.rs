//! The durable share outbox: sequences, group commit, sealing, acknowledgement, and kill -9.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use defpool_control::{Batch, ProxyId, Record, UserRecord, WorkRecord};
use defpool_core::Ticker;
use defpool_proxy::outbox::{credited, Outbox, OutboxError, OutboxOptions};

/// A fresh directory for one test's database, removed afterwards.
struct TempDb(PathBuf);

impl TempDb {
    fn new(name: &str) -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir = std::env::temp_dir().join(format!(
            "defpool-outbox-{name}-{}-{nanos}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDb(dir)
    }

    fn path(&self) -> PathBuf {
        self.0.join("outbox.sqlite")
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn proxy() -> ProxyId {
    ProxyId("proxy-eu-1".into())
}

/// Sealing only when a test asks.
fn manual() -> OutboxOptions {
    OutboxOptions {
        seal_interval: Duration::ZERO,
        ..OutboxOptions::default()
    }
}

fn work(worker: &str, accepted_work: u128) -> Record {
    Record::Work(WorkRecord {
        user: "bc1qalice".into(),
        worker: worker.into(),
        coin: Ticker::try_from("BTC".to_string()).unwrap(),
        epoch: 4,
        upstream: "pool-a".into(),
        accepted_work,
        accepted_shares: 1,
        late_work: 0,
        late_shares: 0,
        rejected: BTreeMap::new(),
        from_ms: 1_000,
        to_ms: 1_001,
    })
}

fn user(name: &str) -> Record {
    Record::User(UserRecord {
        user: name.into(),
        payout_address: None,
        first_seen_ms: 1,
    })
}

fn user_names(batches: &[Batch]) -> Vec<String> {
    batches
        .iter()
        .flat_map(|b| &b.records)
        .filter_map(|r| match r {
            Record::User(u) => Some(u.user.clone()),
            _ => None,
        })
        .collect()
}

async fn seal_all(outbox: &Outbox) -> Vec<Batch> {
    let mut out = Vec::new();
    while let Some(b) = outbox.seal().await.unwrap() {
        out.push(b);
    }
    out
}

fn sequences(batches: &[Batch]) -> Vec<u64> {
    batches.iter().map(|b| b.sequence).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_sequences_acknowledgement_and_reopen() {
    let db = TempDb::new("roundtrip");
    let outbox = Outbox::open(&db.path(), proxy(), manual()).await.unwrap();
    assert!(
        outbox.seal().await.unwrap().is_none(),
        "nothing to seal yet"
    );
    assert_eq!(outbox.totals().await.unwrap().last_sequence, 0);

    outbox
        .append(vec![work("rig1", 100), user("alice"), work("rig1", 50)])
        .await
        .unwrap();
    outbox.append(Vec::new()).await.unwrap();
    let t = outbox.totals().await.unwrap();
    assert_eq!((t.appended_work, t.appended_shares), (150, 2));
    assert_eq!((t.held_work, t.held_shares), (150, 2));
    assert_eq!((t.commits, t.appends, t.unbatched_rows), (1, 1, 1));

    let b1 = outbox.seal().await.unwrap().expect("a batch");
    assert_eq!(b1.sequence, 1);
    assert_eq!(b1.proxy_id, proxy());
    assert_eq!(b1.records.len(), 2, "the two rig1 records were merged");
    assert_eq!(b1.accepted_work(), 150);
    assert!(outbox.seal().await.unwrap().is_none());

    outbox.append(vec![work("rig2", 7)]).await.unwrap();
    let b2 = outbox.seal().await.unwrap().unwrap();
    assert_eq!(b2.sequence, 2);
    assert_eq!(
        outbox.unacknowledged(10).await.unwrap(),
        vec![b1, b2.clone()]
    );
    assert_eq!(sequences(&outbox.unacknowledged(1).await.unwrap()), [1]);
    let t = outbox.totals().await.unwrap();
    assert_eq!(
        (t.last_sequence, t.unacknowledged_batches, t.unbatched_rows),
        (2, 2, 0)
    );

    outbox.acknowledge(1).await.unwrap();
    outbox.acknowledge(1).await.unwrap();
    outbox.acknowledge(0).await.unwrap();
    assert_eq!(outbox.unacknowledged(10).await.unwrap(), vec![b2]);
    match outbox.acknowledge(3).await {
        Err(OutboxError::AcknowledgeBeyondLast {
            sequence: 3,
            last_sequence: 2,
            ..
        }) => {}
        other => panic!("expected AcknowledgeBeyondLast, got {other:?}"),
    }
    let t = outbox.totals().await.unwrap();
    assert_eq!(t.acknowledged_sequence, 1);
    assert_eq!((t.acknowledged_work, t.acknowledged_shares), (150, 2));
    assert_eq!((t.held_work, t.held_shares), (7, 1));

    outbox.append(vec![work("rig3", 1_000)]).await.unwrap();
    outbox.close().await.unwrap();

    // Reopen: counters persisted, the sequence continues, the unbatched row is still there.
    let outbox = Outbox::open(&db.path(), proxy(), manual()).await.unwrap();
    let t = outbox.totals().await.unwrap();
    assert_eq!((t.appended_work, t.appended_shares), (1_157, 4));
    assert_eq!(
        (t.held_work, t.last_sequence, t.unbatched_rows),
        (1_007, 2, 1)
    );
    assert_eq!(
        (t.commits, t.appends),
        (0, 0),
        "per-handle statistics start afresh"
    );
    let b3 = outbox.seal().await.unwrap().unwrap();
    assert_eq!(b3.sequence, 3);
    assert_eq!(sequences(&outbox.unacknowledged(10).await.unwrap()), [2, 3]);
    // What the control client sends next: after the last one sent, at most the window's room.
    let after = |a, n| {
        let outbox = outbox.clone();
        async move { sequences(&outbox.unacknowledged_after(a, n).await.unwrap()) }
    };
    assert_eq!(after(0, 10).await, [2, 3]);
    assert_eq!(after(2, 10).await, [3]);
    assert_eq!(after(0, 1).await, [2]);
    assert!(after(3, 10).await.is_empty());
    outbox.acknowledge(3).await.unwrap();
    assert!(outbox.unacknowledged(10).await.unwrap().is_empty());
    let t = outbox.totals().await.unwrap();
    assert_eq!((t.held_work, t.held_shares), (0, 0));
    assert_eq!(t.acknowledged_work, t.appended_work);
    outbox.close().await.unwrap();
}

#[tokio::test]
async fn a_file_of_another_proxy_is_refused() {
    let db = TempDb::new("foreign");
    Outbox::open(&db.path(), proxy(), manual())
        .await
        .unwrap()
        .close()
        .await
        .unwrap();
    let err = Outbox::open(&db.path(), ProxyId("proxy-us-2".into()), manual())
        .await
        .unwrap_err();
    match &err {
        OutboxError::ForeignProxy {
            expected, found, ..
        } => {
            assert_eq!(expected.0, "proxy-us-2");
            assert_eq!(found, &proxy());
        }
        other => panic!("expected ForeignProxy, got {other:?}"),
    }
    let message = err.to_string();
    assert!(message.contains("outbox.sqlite"), "{message}");
    assert!(message.contains("proxy-eu-1"), "{message}");
}

#[tokio::test]
async fn dropping_the_last_handle_releases_the_file() {
    let db = TempDb::new("drop");
    let outbox = Outbox::open(&db.path(), proxy(), OutboxOptions::default())
        .await
        .unwrap();
    outbox.append(vec![work("rig1", 5)]).await.unwrap();
    drop(outbox);
    let outbox = Outbox::open(&db.path(), proxy(), manual()).await.unwrap();
    assert_eq!(outbox.totals().await.unwrap().appended_work, 5);
    outbox.close().await.unwrap();
}

#[tokio::test]
async fn fsync_each_commit_works_the_same() {
    let db = TempDb::new("fsync");
    let opts = OutboxOptions {
        fsync_each_commit: true,
        ..manual()
    };
    let outbox = Outbox::open(&db.path(), proxy(), opts).await.unwrap();
    outbox.append(vec![work("rig1", 9)]).await.unwrap();
    assert_eq!(outbox.seal().await.unwrap().unwrap().accepted_work(), 9);
    outbox.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_share_commits() {
    let db = TempDb::new("group");
    let outbox = Outbox::open(&db.path(), proxy(), manual()).await.unwrap();
    let tasks: Vec<_> = (0..1_000u64)
        .map(|i| {
            let outbox = outbox.clone();
            tokio::spawn(async move {
                outbox
                    .append(vec![work(&format!("rig{}", i % 50), u128::from(i) + 1)])
                    .await
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let t = outbox.totals().await.unwrap();
    println!("1000 concurrent appends: {} commits", t.commits);
    assert_eq!(t.appends, 1_000);
    assert!(t.commits < 100, "{} commits for 1000 appends", t.commits);
    assert_eq!(t.appended_shares, 1_000);
    assert_eq!(t.appended_work, (1..=1_000u128).sum::<u128>());
    let batches = seal_all(&outbox).await;
    let records: usize = batches.iter().map(|b| b.records.len()).sum();
    assert_eq!(records, 50, "one merged record per worker");
    let sealed: u128 = batches.iter().map(Batch::accepted_work).sum();
    assert_eq!(sealed, t.appended_work);
    outbox.close().await.unwrap();
}

#[tokio::test]
async fn batches_respect_the_record_limit_and_keep_order() {
    let db = TempDb::new("limit");
    let opts = OutboxOptions {
        max_batch_records: 10,
        ..manual()
    };
    let outbox = Outbox::open(&db.path(), proxy(), opts).await.unwrap();
    // 25 separate commits, then one commit of 25 records that will be split across batches.
    for i in 0..25 {
        outbox
            .append(vec![user(&format!("u{i:02}"))])
            .await
            .unwrap();
    }
    outbox
        .append((25..50).map(|i| user(&format!("u{i:02}"))).collect())
        .await
        .unwrap();
    let batches = seal_all(&outbox).await;
    assert_eq!(sequences(&batches), [1, 2, 3, 4, 5]);
    assert!(batches.iter().all(|b| b.records.len() == 10));
    let names = user_names(&batches);
    let expected: Vec<String> = (0..50).map(|i| format!("u{i:02}")).collect();
    assert_eq!(names, expected, "records come out once each, in order");
    assert_eq!(outbox.totals().await.unwrap().unbatched_rows, 0);
    outbox.close().await.unwrap();
}

/// The records of one batch without its creation time, for comparing two runs.
fn contents(batches: &[Batch]) -> Vec<(u64, String)> {
    batches
        .iter()
        .map(|b| (b.sequence, serde_json::to_string(&b.records).unwrap()))
        .collect()
}

/// Appends a mix that merges (work of repeated workers) and splits (batches of at most 7): one
/// record per commit, then commits of many.
async fn append_mix(outbox: &Outbox, round: u128) {
    for i in 0..12u128 {
        let worker = format!("rig{}", i % 5);
        outbox
            .append(vec![work(&worker, round * 100 + i)])
            .await
            .unwrap();
    }
    for i in 0..3 {
        let mut records: Vec<Record> = (0..9u128)
            .map(|w| work(&format!("big{w}"), w + i))
            .collect();
        records.push(user(&format!("u{round}-{i}")));
        outbox.append(records).await.unwrap();
    }
}

#[tokio::test]
async fn sealing_the_records_the_writer_holds_equals_sealing_from_the_file() {
    let opts = OutboxOptions {
        max_batch_records: 7,
        ..manual()
    };
    // The same appends and seals twice: once sealed by the same handle (the writer's records),
    // once after a reopen (every row read from the file).
    let held_db = TempDb::new("held");
    let held = Outbox::open(&held_db.path(), proxy(), opts.clone())
        .await
        .unwrap();
    let read_db = TempDb::new("read");
    let mut read = Outbox::open(&read_db.path(), proxy(), opts.clone())
        .await
        .unwrap();
    let (mut from_held, mut from_file) = (Vec::new(), Vec::new());
    for round in 0..3 {
        append_mix(&held, round).await;
        append_mix(&read, round).await;
        read.close().await.unwrap();
        read = Outbox::open(&read_db.path(), proxy(), opts.clone())
            .await
            .unwrap();
        // One seal first (it stops inside a row: the rest of the row and the rows after it
        // stay for the next), then everything; the table empties, so row ids start again.
        from_held.extend(held.seal().await.unwrap());
        from_file.extend(read.seal().await.unwrap());
        from_held.extend(seal_all(&held).await);
        from_file.extend(seal_all(&read).await);
    }
    assert!(
        from_held.len() > 6,
        "the limit splits the records into many batches"
    );
    assert_eq!(contents(&from_held), contents(&from_file));
    let (a, b) = (held.totals().await.unwrap(), read.totals().await.unwrap());
    assert_eq!((a.unbatched_rows, a.appended_work), (0, b.appended_work));
    let sealed: u128 = from_held
        .iter()
        .map(|b| defpool_proxy::outbox::credited(&b.records).0)
        .sum();
    assert_eq!(
        sealed, a.appended_work,
        "every appended unit of work sealed once"
    );
    held.close().await.unwrap();
    read.close().await.unwrap();
}

#[tokio::test]
async fn by_default_a_seal_merges_each_of_thousands_of_workers_into_one_record() {
    let db = TempDb::new("merge");
    let outbox = Outbox::open(&db.path(), proxy(), manual()).await.unwrap();
    // Ten shares from each of 2,000 workers, interleaved as they arrive: 200 commits of 100.
    for c in 0..200u128 {
        let records = (0..100u128)
            .map(|i| work(&format!("rig{}", (c * 100 + i) % 2_000), 1))
            .collect();
        outbox.append(records).await.unwrap();
    }
    let batches = seal_all(&outbox).await;
    assert_eq!(
        batches.len(),
        1,
        "a batch holds every worker of the interval"
    );
    assert_eq!(batches[0].records.len(), 2_000, "one record per worker");
    assert!(batches[0]
        .records
        .iter()
        .all(|r| matches!(r, Record::Work(w) if w.accepted_work == 10 && w.accepted_shares == 10)));
    outbox.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_seals_never_seal_a_record_twice() {
    let db = TempDb::new("race");
    let opts = OutboxOptions {
        max_batch_records: 3,
        commit_interval: Duration::ZERO,
        ..manual()
    };
    let outbox = Outbox::open(&db.path(), proxy(), opts).await.unwrap();
    let appender = tokio::spawn({
        let outbox = outbox.clone();
        async move {
            for i in 0..300 {
                outbox
                    .append(vec![user(&format!("u{i:03}"))])
                    .await
                    .unwrap();
            }
        }
    });
    let sealers: Vec<_> = (0..4)
        .map(|_| {
            let outbox = outbox.clone();
            tokio::spawn(async move {
                let mut mine = Vec::new();
                for _ in 0..200 {
                    if let Some(b) = outbox.seal().await.unwrap() {
                        mine.push(b);
                    }
                    tokio::task::yield_now().await;
                }
                mine
            })
        })
        .collect();
    appender.await.unwrap();
    let mut batches = Vec::new();
    for s in sealers {
        batches.extend(s.await.unwrap());
    }
    batches.extend(seal_all(&outbox).await);
    batches.sort_by_key(|b| b.sequence);
    let expected: Vec<u64> = (1..=batches.len() as u64).collect();
    assert_eq!(sequences(&batches), expected);
    let names = user_names(&batches);
    let all: Vec<String> = (0..300).map(|i| format!("u{i:03}")).collect();
    assert_eq!(names, all, "every record sealed exactly once, in order");
    assert_eq!(outbox.unacknowledged(usize::MAX).await.unwrap(), batches);
    outbox.close().await.unwrap();
}

#[tokio::test]
async fn the_timer_seals_drains_a_backlog_and_notifies() {
    let db = TempDb::new("timer");
    let opts = OutboxOptions {
        seal_interval: Duration::from_millis(10),
        max_batch_records: 5,
        ..OutboxOptions::default()
    };
    let outbox = Outbox::open(&db.path(), proxy(), opts).await.unwrap();
    let mut sealed = outbox.sealed();
    assert_eq!(*sealed.borrow(), 0);
    outbox
        .append((0..23).map(|i| user(&format!("u{i}"))).collect())
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), sealed.wait_for(|s| *s >= 5))
        .await
        .expect("the timer seals within seconds")
        .unwrap();
    let batches = outbox.unacknowledged(100).await.unwrap();
    assert_eq!(sequences(&batches), [1, 2, 3, 4, 5]);
    assert_eq!(user_names(&batches).len(), 23);
    assert_eq!(outbox.totals().await.unwrap().unbatched_rows, 0);
    outbox.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_commits_what_was_queued_before_it() {
    let db = TempDb::new("close");
    let opts = OutboxOptions {
        commit_interval: Duration::from_millis(300),
        ..manual()
    };
    let outbox = Outbox::open(&db.path(), proxy(), opts).await.unwrap();
    let other = outbox.clone();
    let pending = tokio::spawn({
        let outbox = outbox.clone();
        async move { outbox.append(vec![work("rig1", 42)]).await }
    });
    // The append is now waiting in the writer's commit window.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    outbox.close().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(250),
        "close ends the commit window"
    );
    pending.await.unwrap().unwrap();
    assert!(matches!(
        other.append(vec![work("rig1", 1)]).await,
        Err(OutboxError::Closed { .. })
    ));
    drop(other);
    let outbox = Outbox::open(&db.path(), proxy(), manual()).await.unwrap();
    assert_eq!(outbox.totals().await.unwrap().appended_work, 42);
    outbox.close().await.unwrap();
}

// --- kill -9 -------------------------------------------------------------------------------

const CHILD_PATH_ENV: &str = "DEFPOOL_OUTBOX_CRASH_CHILD";
const CHILD_START_ENV: &str = "DEFPOOL_OUTBOX_CRASH_START";

fn crash_work(n: u64) -> u128 {
    // Above 2^53, so the decimal-string path matters.
    u128::from(n % 1_000 + 1) * 1_000_000_000_000_000
}

/// The writer role of [`kill_9_loses_no_acknowledged_share`]: appends from eight tasks and prints
/// `ACK <n> <work>` after each append resolved. Does nothing in an ordinary test run.
#[test]
fn crash_child_writer() {
    let Ok(path) = std::env::var(CHILD_PATH_ENV) else {
        return;
    };
    let start: u64 = std::env::var(CHILD_START_ENV).unwrap().parse().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let opts = OutboxOptions {
            seal_interval: Duration::from_millis(3),
            max_batch_records: 7,
            ..OutboxOptions::default()
        };
        let outbox = Outbox::open(path.as_ref(), proxy(), opts).await.unwrap();
        let next = Arc::new(AtomicU64::new(start));
        for task in 0..8 {
            let outbox = outbox.clone();
            let next = next.clone();
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    let w = crash_work(n);
                    outbox
                        .append(vec![work(&format!("rig{task}"), w), user(&format!("u{n}"))])
                        .await
                        .unwrap();
                    println!("ACK {n} {w}");
                }
            });
        }
        // The parent kills us long before this; it only guards against an orphan.
        tokio::time::sleep(Duration::from_secs(60)).await;
        std::process::exit(3);
    });
}

#[test]
fn kill_9_loses_no_acknowledged_share() {
    let db = TempDb::new("crash");
    let mut acked: BTreeMap<u64, u128> = BTreeMap::new();
    let record = |line: &str, acked: &mut BTreeMap<u64, u128>| {
        if let Some(rest) = line.strip_prefix("ACK ") {
            let (n, w) = rest.split_once(' ').expect("ACK <n> <work>");
            let (n, w): (u64, u128) = (n.parse().unwrap(), w.parse().unwrap());
            assert_eq!(w, crash_work(n));
            assert!(acked.insert(n, w).is_none(), "share {n} reported twice");
            true
        } else {
            false
        }
    };
    for round in 0..3u64 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "crash_child_writer",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_PATH_ENV, db.path())
            .env(CHILD_START_ENV, (round * 1_000_000).to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut this_round = 0;
        while this_round < 300 {
            let line = lines
                .next()
                .expect("the child stopped before being killed")
                .unwrap();
            if record(&line, &mut acked) {
                this_round += 1;
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // Whatever it printed before dying was acknowledged too.
        for line in lines {
            record(&line.unwrap(), &mut acked);
        }
    }

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let outbox = Outbox::open(&db.path(), proxy(), manual()).await.unwrap();
        let before = outbox.totals().await.unwrap();
        assert_eq!(before.acknowledged_work, 0);
        assert_eq!(before.held_work, before.appended_work);
        seal_all(&outbox).await;
        let batches = outbox.unacknowledged(usize::MAX).await.unwrap();
        let t = outbox.totals().await.unwrap();
        assert_eq!(t.unbatched_rows, 0);

        let expected: Vec<u64> = (1..=t.last_sequence).collect();
        assert_eq!(
            sequences(&batches),
            expected,
            "sequences unique and contiguous"
        );

        let in_file: u128 = batches.iter().map(Batch::accepted_work).sum();
        assert_eq!(
            in_file, t.appended_work,
            "records and the appended counter agree"
        );
        let (_, shares) = credited(
            &batches
                .iter()
                .flat_map(|b| b.records.clone())
                .collect::<Vec<_>>(),
        );
        assert_eq!(shares, t.appended_shares);

        let names = user_names(&batches);
        let unique: BTreeSet<&String> = names.iter().collect();
        assert_eq!(unique.len(), names.len(), "no record sealed twice");
        assert_eq!(names.len() as u64, t.appended_shares, "one user per append");
        for n in acked.keys() {
            assert!(
                unique.contains(&format!("u{n}")),
                "acknowledged share {n} lost"
            );
        }
        let acked_work: u128 = acked.values().sum();
        assert!(in_file >= acked_work);
        println!(
            "kill -9 x3: {} appends acknowledged to the child, {} in the file \
             ({} committed but unreported when killed), {} batches",
            acked.len(),
            names.len(),
            names.len() - acked.len(),
            batches.len()
        );
        outbox.close().await.unwrap();
    });
}

// --- throughput ----------------------------------------------------------------------------

/// CPU time of this process so far (user + system), from `/proc/self/stat`, assuming the usual
/// 100 clock ticks per second. `None` off Linux.
fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_single_share_appends_from_100_tasks() {
    let db = TempDb::new("throughput");
    let outbox = Outbox::open(&db.path(), proxy(), OutboxOptions::default())
        .await
        .unwrap();
    let cpu0 = process_cpu();
    let started = Instant::now();
    let tasks: Vec<_> = (0..100u64)
        .map(|task| {
            let outbox = outbox.clone();
            tokio::spawn(async move {
                for i in 0..200u64 {
                    outbox
                        .append(vec![work(&format!("rig{task}"), u128::from(i) + 1)])
                        .await?;
                }
                Ok::<_, OutboxError>(())
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let wall = started.elapsed();
    let cpu = process_cpu().zip(cpu0).map(|(b, a)| b - a);
    let t = outbox.totals().await.unwrap();
    println!(
        "20000 single-share appends from 100 tasks: {wall:.2?} wall, {} commits \
         ({:.0} appends/s, {:.0} commits/s, {:.1} appends per commit), cpu {cpu:.2?} \
         (whole test process)",
        t.commits,
        20_000.0 / wall.as_secs_f64(),
        t.commits as f64 / wall.as_secs_f64(),
        20_000.0 / t.commits as f64,
    );
    assert_eq!(t.appends, 20_000);
    assert_eq!(t.appended_shares, 20_000);
    assert_eq!(t.appended_work, 100 * (1..=200u128).sum::<u128>());
    assert!(t.commits < 20_000 / 4, "{} commits", t.commits);
    outbox.close().await.unwrap();
}

/// 20,000 shares/s offered steadily (100 miners' tasks, one share every 5 ms each) for five
/// seconds: how much CPU does the outbox cost? Run on its own, in release mode:
/// `cargo test --release -p defpool-proxy --test outbox -- --ignored --exact paced --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, run by hand"]
async fn paced() {
    let db = TempDb::new("paced");
    let outbox = Outbox::open(&db.path(), proxy(), OutboxOptions::default())
        .await
        .unwrap();
    let seconds = 5u64;
    let cpu0 = process_cpu();
    let started = Instant::now();
    let tasks: Vec<_> = (0..100u64)
        .map(|task| {
            let outbox = outbox.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(5));
                let mut latencies = Vec::new();
                for i in 0..(200 * seconds) {
                    tick.tick().await;
                    let t0 = Instant::now();
                    outbox
                        .append(vec![work(&format!("rig{task}"), u128::from(i) + 1)])
                        .await
                        .unwrap();
                    latencies.push(t0.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.unwrap());
    }
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    let (p50, p99, max) = (at(0.5), at(0.99), at(1.0));
    let wall = started.elapsed();
    let cpu = process_cpu().zip(cpu0).map(|(b, a)| b - a);
    let t = outbox.totals().await.unwrap();
    let sealed = t.last_sequence;
    let wal = std::fs::metadata(db.path().with_extension("sqlite-wal")).map(|m| m.len());
    println!("paced: WAL file {wal:?} bytes at the end");
    println!(
        "paced: {} appends in {wall:.2?} ({:.0}/s), {} commits ({:.0}/s), {sealed} batches, \
         append latency p50 {p50:.2?} p99 {p99:.2?} max {max:.2?}, cpu {cpu:.2?} = {:.1}% of one core",
        t.appends,
        t.appends as f64 / wall.as_secs_f64(),
        t.commits,
        t.commits as f64 / wall.as_secs_f64(),
        cpu.map(|c| 100.0 * c.as_secs_f64() / wall.as_secs_f64())
            .unwrap_or(f64::NAN),
    );
    outbox.close().await.unwrap();
}

/// The commit window runs from when an append was sent, not from when the writer got to it: an
/// append that queued while the writer was stuck in a commit is committed right after that
/// commit, not a whole window later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_queued_behind_a_commit_does_not_wait_a_window_more() {
    use sqlx::{ConnectOptions, Executor};
    const WINDOW: Duration = Duration::from_millis(400);
    let db = TempDb::new("window-from-send");
    let opts = OutboxOptions {
        commit_interval: WINDOW,
        ..manual()
    };
    let outbox = Outbox::open(&db.path(), proxy(), opts).await.unwrap();
    // Another connection holds the write lock, so the writer's commit of the first append waits.
    let mut blocker = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(db.path())
        .connect()
        .await
        .unwrap();
    blocker.execute("BEGIN IMMEDIATE").await.unwrap();
    let started = Instant::now();
    let append = |worker: &'static str| {
        let outbox = outbox.clone();
        tokio::spawn(async move {
            outbox.append(vec![work(worker, 1)]).await.unwrap();
            Instant::now()
        })
    };
    let first = append("rig1");
    // Past the first window: the writer is now inside the blocked commit.
    tokio::time::sleep(WINDOW + Duration::from_millis(100)).await;
    let second = append("rig2");
    // The second append's own window passes while it waits behind the commit.
    tokio::time::sleep(WINDOW + Duration::from_millis(100)).await;
    blocker.execute("COMMIT").await.unwrap();
    let first_done = first.await.unwrap();
    let second_done = second.await.unwrap();
    assert!(
        first_done.duration_since(started) >= 2 * WINDOW,
        "the lock held the first commit"
    );
    let behind = second_done.duration_since(first_done);
    assert!(
        behind < WINDOW / 2,
        "the second append, sent about {} ms before the writer got to it, waited {} ms after the first commit",
        (WINDOW + Duration::from_millis(100)).as_millis(),
        behind.as_millis()
    );
    sqlx::Connection::close(blocker).await.unwrap();
    assert_eq!(outbox.totals().await.unwrap().appended_work, 2);
    outbox.close().await.unwrap();
}

/// With the timers on, committed pages reach the database file within a fraction of a second
/// (the checkpointing timer), not only when the WAL reaches the writer's own checkpoint at
/// thousands of pages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checkpointing_timer_copies_commits_into_the_database_file() {
    let db = TempDb::new("checkpointer");
    let opts = OutboxOptions {
        // Timers on, but no seal during the test.
        seal_interval: Duration::from_secs(3600),
        ..OutboxOptions::default()
    };
    let outbox = Outbox::open(&db.path(), proxy(), opts).await.unwrap();
    let file_len = || std::fs::metadata(db.path()).unwrap().len();
    let before = file_len();
    let records: Vec<Record> = (0..2_000).map(|i| work(&format!("rig{i}"), 1)).collect();
    outbox.append(records).await.unwrap();
    let started = Instant::now();
    // The WAL holds the commit (compressed, a few pages); only a checkpoint grows the file.
    while file_len() <= before {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the database file stayed at {} bytes ({} before the append)",
            file_len(),
            before
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    outbox.close().await.unwrap();
}

/// Runs `sql` on the outbox file through a connection of its own (what another tool, or an
/// older build, would see).
async fn on_file(path: &std::path::Path, sql: &str) -> Vec<sqlx::sqlite::SqliteRow> {
    use sqlx::{ConnectOptions, Executor};
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .connect()
        .await
        .unwrap();
    let rows = conn.fetch_all(sql).await.unwrap();
    sqlx::Connection::close(conn).await.unwrap();
    rows
}

fn int(rows: &[sqlx::sqlite::SqliteRow]) -> i64 {
    sqlx::Row::get(&rows[0], 0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_rows_are_deleted_and_their_ids_never_come_back() {
    let db = TempDb::new("prune");
    let outbox = Outbox::open(&db.path(), proxy(), manual()).await.unwrap();
    // More rows than one prune command deletes (64), one append (so one row) at a time.
    for i in 0..150 {
        outbox
            .append(vec![work(&format!("rig{i}"), 10)])
            .await
            .unwrap();
    }
    assert_eq!(outbox.totals().await.unwrap().unbatched_rows, 150);
    assert_eq!(seal_all(&outbox).await.len(), 1);
    outbox.close().await.unwrap();
    // The seal marked 150 rows sealed; pruning then deleted them: the table is empty, so
    // SQLite alone would hand out id 1 again, at or below the sealed mark.
    assert_eq!(
        int(&on_file(&db.path(), "SELECT COUNT(*) FROM unbatched").await),
        0
    );
    assert_eq!(
        int(&on_file(&db.path(), "SELECT sealed_through FROM meta").await),
        150
    );

    let outbox = Outbox::open(&db.path(), proxy(), manual()).await.unwrap();
    outbox.append(vec![work("rig4", 7)]).await.unwrap();
    let t = outbox.totals().await.unwrap();
    assert_eq!(
        (t.unbatched_rows, t.held_work, t.appended_work),
        (1, 1_507, 1_507),
        "a row appended after every sealed row was pruned counts as unsealed"
    );
    let batches = seal_all(&outbox).await;
    assert_eq!(sequences(&batches), [2]);
    assert_eq!(batches[0].accepted_work(), 7);
    outbox.close().await.unwrap();
}

/// A file written by schema 1 (sealing deleted rows; counters of appended work in `meta`).
const SCHEMA_1: &str = "
CREATE TABLE meta (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    proxy_id TEXT NOT NULL,
    last_sequence INTEGER NOT NULL DEFAULT 0,
    acknowledged_sequence INTEGER NOT NULL DEFAULT 0,
    appended_work TEXT NOT NULL DEFAULT '0',
    appended_shares INTEGER NOT NULL DEFAULT 0,
    acknowledged_work TEXT NOT NULL DEFAULT '0',
    acknowledged_shares INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE unbatched (id INTEGER PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE batches (
    sequence INTEGER PRIMARY KEY,
    body TEXT NOT NULL,
    work TEXT NOT NULL,
    shares INTEGER NOT NULL
);
PRAGMA user_version = 1;
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_1_file_is_migrated_with_its_records_and_counters() {
    let db = TempDb::new("migrate");
    let batch = Batch {
        proxy_id: proxy(),
        sequence: 2,
        created_at_ms: 5,
        records: vec![work("rig0", 50)],
    };
    let row = |r: Vec<Record>| serde_json::to_string(&r).unwrap().replace('\'', "''");
    // Acknowledged 100 (one share), batch 2 holds 50, two unbatched rows hold 150 and a user.
    let setup = format!(
        "{SCHEMA_1}
         INSERT INTO meta VALUES (1, 'proxy-eu-1', 2, 1, '300', 4, '100', 1);
         INSERT INTO batches VALUES (2, '{}', '50', 1);
         INSERT INTO unbatched VALUES (5, '{}');
         INSERT INTO unbatched VALUES (6, '{}');",
        serde_json::to_string(&batch).unwrap().replace('\'', "''"),
        row(vec![work("rig1", 100), user("alice")]),
        row(vec![work("rig2", 50)]),
    );
    on_file(&db.path(), &setup).await;

    let outbox = Outbox::open(&db.path(), proxy(), manual()).await.unwrap();
    assert_eq!(int(&on_file(&db.path(), "PRAGMA user_version").await), 3);
    let t = outbox.totals().await.unwrap();
    assert_eq!((t.appended_work, t.appended_shares), (300, 4));
    assert_eq!((t.acknowledged_work, t.acknowledged_shares), (100, 1));
    assert_eq!((t.held_work, t.held_shares), (200, 3));
    assert_eq!(
        (t.last_sequence, t.unacknowledged_batches, t.unbatched_rows),
        (2, 1, 2)
    );
    outbox.append(vec![work("rig3", 1)]).await.unwrap();
    let sealed = seal_all(&outbox).await;
    assert_eq!(sequences(&sealed), [3]);
    assert_eq!(sealed[0].accepted_work(), 151);
    assert_eq!(user_names(&sealed), ["alice"]);
    assert_eq!(sequences(&outbox.unacknowledged(10).await.unwrap()), [2, 3]);
    outbox.acknowledge(3).await.unwrap();
    let t = outbox.totals().await.unwrap();
    assert_eq!(
        (t.appended_work, t.acknowledged_work, t.held_work),
        (301, 301, 0)
    );
    outbox.close().await.unwrap();
}

/// A file written by schema 2: bodies as JSON text.
const SCHEMA_2: &str = "
CREATE TABLE meta (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    proxy_id TEXT NOT NULL,
    last_sequence INTEGER NOT NULL DEFAULT 0,
    acknowledged_sequence INTEGER NOT NULL DEFAULT 0,
    acknowledged_work TEXT NOT NULL DEFAULT '0',
    acknowledged_shares INTEGER NOT NULL DEFAULT 0,
    sealed_through INTEGER NOT NULL DEFAULT 0,
    sealed_work TEXT NOT NULL DEFAULT '0',
    sealed_shares INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE unbatched (
    id INTEGER PRIMARY KEY,
    work TEXT NOT NULL DEFAULT '0',
    shares INTEGER NOT NULL DEFAULT 0,
    body TEXT NOT NULL
);
CREATE TABLE batches (
    sequence INTEGER PRIMARY KEY,
    work TEXT NOT NULL,
    shares INTEGER NOT NULL,
    body TEXT NOT NULL
);
PRAGMA user_version = 2;
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_2_file_keeps_its_json_bodies_readable_and_writes_compressed_ones() {
    let db = TempDb::new("migrate-2");
    let batch = Batch {
        proxy_id: proxy(),
        sequence: 1,
        created_at_ms: 5,
        records: vec![work("rig0", 50)],
    };
    let json = |v: String| v.replace('\'', "''");
    // Batch 1 sealed (50 in one share), one unbatched row of 100 and a user.
    let setup = format!(
        "{SCHEMA_2}
         INSERT INTO meta VALUES (1, 'proxy-eu-1', 1, 0, '0', 0, 0, '50', 1);
         INSERT INTO batches VALUES (1, '50', 1, '{}');
         INSERT INTO unbatched VALUES (1, '100', 1, '{}');",
        json(serde_json::to_string(&batch).unwrap()),
        json(serde_json::to_string(&vec![work("rig1", 100), user("alice")]).unwrap()),
    );
    on_file(&db.path(), &setup).await;

    let outbox = Outbox::open(&db.path(), proxy(), manual()).await.unwrap();
    assert_eq!(int(&on_file(&db.path(), "PRAGMA user_version").await), 3);
    assert_eq!(outbox.unacknowledged(10).await.unwrap(), vec![batch]);
    outbox.append(vec![work("rig2", 7)]).await.unwrap();
    let kinds: Vec<String> = on_file(&db.path(), "SELECT typeof(body) FROM unbatched ORDER BY id")
        .await
        .iter()
        .map(|r| sqlx::Row::get(r, 0))
        .collect();
    assert_eq!(
        kinds,
        ["text", "blob"],
        "the old row as it was, the new one compressed"
    );
    // The seal reads the old row from the file and takes the new one from memory.
    let sealed = seal_all(&outbox).await;
    assert_eq!(sequences(&sealed), [2]);
    assert_eq!(sealed[0].accepted_work(), 107);
    assert_eq!(user_names(&sealed), ["alice"]);
    assert_eq!(
        int(&on_file(
            &db.path(),
            "SELECT COUNT(*) FROM batches WHERE typeof(body) = 'blob'"
        )
        .await),
        1
    );
    assert_eq!(sequences(&outbox.unacknowledged(10).await.unwrap()), [1, 2]);
    outbox.close().await.unwrap();
}
