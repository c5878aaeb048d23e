//! End to end: `defpool demo` (two litecoind regtest chains as demo coins, server on SQLite,
//! proxy, two coin adapters, SV1 and SV2 scrypt miners, simulated market), bounded, checked from
//! its report AND independently: the live feed (SSE, followed by this test) delivered switches
//! both ways, the miners never disconnected, every acknowledged share is accounted once to the
//! right coin (loadgen's own reports against the SQLite store), the nodes hold our blocks,
//! matured blocks were credited to the users (balances equal the ledger's, users' credits equal
//! the matured rewards minus the pool fee), the API's figures equal the store's, and no process
//! is left. Then the demo is killed with SIGKILL: its children must die with it, and a restart
//! resumes from the SQLite file with no accounted work lost.
//!
//! Needs litecoind (Debian's package; `scripts/test.sh` installs it). Without it the test fails
//! unless DEFPOOL_SKIP_LITECOIND is set.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Proc;
use defpool_core::Ticker;
use defpool_store::{BlockPhase, Store};
use serde_json::Value;

const COINS: [&str; 2] = ["DEMOA", "DEMOB"];
const USERS: [&str; 3] = [
    "bcrt1q0ygllsf3wx0lpdc2yr7alqmhnjatnup8k4gkcr",
    "bcrt1qgsed3h7tczt7jucy9hnhyhy2uwdwvrcdddmcct",
    "bcrt1qwqf5y96a6l2npql6z3h5gjcs6ze47f7h42wryz",
];
const POOL_FEE_BPS: u64 = 100;

fn litecoind() -> PathBuf {
    if let Some(p) = std::env::var_os("LITECOIND") {
        return p.into();
    }
    let debian = PathBuf::from("/usr/lib/litecoin/litecoind");
    if debian.exists() {
        debian
    } else {
        "litecoind".into()
    }
}

fn demo(dir: &Path, duration: Option<u32>, report: Option<&Path>, out: &Path) -> Proc {
    let mut args = vec![
        "demo".to_string(),
        "--dir".into(),
        dir.display().to_string(),
    ];
    if let Some(d) = duration {
        args.extend(["--duration".into(), d.to_string()]);
    }
    if let Some(r) = report {
        args.extend(["--report".into(), r.display().to_string()]);
    }
    let out = std::fs::File::create(out).unwrap();
    Proc(
        Command::new(env!("CARGO_BIN_EXE_defpool"))
            .args(&args)
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .expect("defpool demo starts"),
    )
}

/// The API port from the run's `run.json` (written once the miners started).
fn wait_run_json(dir: &Path, demo: &mut Proc, out: &Path) -> Value {
    let path = dir.join("run.json");
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        if let Some(v) = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        {
            return v;
        }
        if let Some(status) = demo.0.try_wait().unwrap() {
            panic!(
                "demo exited ({status}) before the pool ran:\n{}",
                std::fs::read_to_string(out).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "the demo never started mining");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn api_port(run: &Value) -> u16 {
    run["api"]
        .as_str()
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .expect("api port in run.json")
}

/// Follows `/api/feed` (SSE) and keeps every event's JSON.
fn follow_feed(port: u16, events: Arc<Mutex<Vec<Value>>>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            s.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            let _ = write!(
                s,
                "GET /api/feed HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n"
            );
            let mut reader = BufReader::new(s);
            let mut line = String::new();
            while !stop.load(Ordering::Relaxed) {
                match reader.read_line(&mut line) {
                    Ok(0) => break,
                    Ok(_) if line.ends_with('\n') => {
                        if let Some(data) = line.trim_end().strip_prefix("data:") {
                            if let Ok(v) = serde_json::from_str::<Value>(data.trim()) {
                                events.lock().unwrap().push(v);
                            }
                        }
                        line.clear();
                    }
                    Ok(_) => {}
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(_) => break,
                }
            }
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn wait_exit(p: &mut Proc, timeout: Duration, out: &Path) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = p.0.try_wait().unwrap() {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "demo did not finish in {timeout:?}:\n{}",
            std::fs::read_to_string(out).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Live (non-zombie) processes whose command line names `dir`.
fn processes_naming(dir: &Path) -> Vec<(u32, String)> {
    let marker = dir.display().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z')))
            .unwrap_or(true);
        if cmdline.contains(&marker) && !zombie {
            found.push((pid, cmdline));
        }
    }
    found
}

fn wait_no_processes(dir: &Path, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let left = processes_naming(dir);
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "processes left running: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Loadgen's reports in the run directory: (disconnects, accepted work per coin tag).
fn loadgen_reports(dir: &Path) -> (u64, BTreeMap<String, u128>, usize) {
    let mut disconnects = 0;
    let mut work = BTreeMap::new();
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if !(name.starts_with("loadgen-") && name.ends_with(".json")) {
            continue;
        }
        let r: Value = serde_json::from_str(&std::fs::read_to_string(entry.path()).unwrap())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        n += 1;
        disconnects += r["disconnects"].as_u64().unwrap();
        assert_eq!(r["shares_rejected"], 0, "{name}: {r}");
        for (coin, w) in r["accepted_work_by_coin"].as_object().unwrap() {
            let w: u128 = w.to_string().parse().unwrap();
            *work.entry(coin.clone()).or_insert(0) += w;
        }
    }
    (disconnects, work, n)
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

struct StoreFigures {
    work_by_coin: BTreeMap<String, u128>,
    total_work: u128,
    balances: BTreeMap<String, BTreeMap<String, i64>>,
    matured: Vec<(String, String, u64)>,
    in_chain: Vec<(String, String)>,
    ledger: (i64, i64),
}

/// Reads the demo's SQLite store (the demo is stopped).
fn store_figures(dir: &Path) -> StoreFigures {
    let url = format!("sqlite:{}", dir.join("defpool-demo.db").display());
    block_on(async {
        let store = Store::connect(&url).await.unwrap();
        let work_by_coin = store
            .work_by_coin(0, u64::MAX / 2)
            .await
            .unwrap()
            .into_iter()
            .map(|(c, w)| (c.to_string(), w))
            .collect();
        let total_work = store.total_work().await.unwrap();
        let mut balances = BTreeMap::new();
        for u in USERS {
            let b = store
                .balances(&format!("user:{u}"))
                .await
                .unwrap()
                .into_iter()
                .map(|(c, v)| (c.to_string(), v))
                .collect();
            balances.insert(u.to_string(), b);
        }
        let mut matured = Vec::new();
        let mut in_chain = Vec::new();
        for c in COINS {
            let coin: Ticker = c.parse().unwrap();
            for b in store.blocks(Some(&coin), 100_000).await.unwrap() {
                if b.phase == BlockPhase::Matured {
                    matured.push((c.to_string(), b.block_hash.clone(), b.reward.unwrap()));
                }
                if matches!(b.phase, BlockPhase::Matured | BlockPhase::Immature) {
                    in_chain.push((c.to_string(), b.block_hash.clone()));
                }
            }
        }
        let ledger = store.ledger_check().await.unwrap();
        store.close().await;
        StoreFigures {
            work_by_coin,
            total_work,
            balances,
            matured,
            in_chain,
            ledger,
        }
    })
}

/// Starts a chain's first node alone on its data directory and asks it about our blocks.
fn node_confirmations(datadir: &Path, hashes: &[String]) -> Vec<i64> {
    let rpc = common::free_port();
    let password = "e2e-check-password";
    let mut node = Proc(
        Command::new(litecoind())
            .args([
                "-regtest".to_string(),
                format!("-datadir={}", datadir.display()),
                format!("-rpcport={rpc}"),
                "-rpcbind=127.0.0.1".into(),
                "-rpcallowip=127.0.0.1".into(),
                "-rpcuser=e2e".into(),
                format!("-rpcpassword={password}"),
                "-connect=0".into(),
                "-listen=0".into(),
                "-disablewallet".into(),
                "-printtoconsole=0".into(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("litecoind starts"),
    );
    let cli = |args: &[&str]| -> Option<String> {
        let out = Command::new("litecoin-cli")
            .args([
                "-regtest".to_string(),
                format!("-rpcport={rpc}"),
                "-rpcuser=e2e".into(),
                format!("-rpcpassword={password}"),
            ])
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while cli(&["getblockcount"]).is_none() {
        assert!(
            Instant::now() < deadline,
            "litecoind on {datadir:?} did not start"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let confirmations = hashes
        .iter()
        .map(|h| {
            cli(&["getblockheader", h])
                .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                .and_then(|v| v["confirmations"].as_i64())
                .unwrap_or(-2)
        })
        .collect();
    let _ = cli(&["stop"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while node.0.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    node.kill9();
    confirmations
}

#[test]
fn demo_end_to_end_then_sigkill_and_resume() {
    if Command::new(litecoind()).arg("-version").output().is_err() {
        assert!(
            std::env::var_os("DEFPOOL_SKIP_LITECOIND").is_some(),
            "litecoind is not installed (scripts/test.sh installs it)"
        );
        eprintln!("SKIPPED: litecoind missing and DEFPOOL_SKIP_LITECOIND set");
        return;
    }
    let started = Instant::now();
    let dir = std::env::temp_dir().join(format!("defpool-e2e-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();

    // ---- Phase 1: a bounded demo, followed on the live feed.
    let report_path = dir.join("report-1.json");
    let out1 = dir.join("demo-1.out");
    let mut d = demo(&dir, Some(90), Some(&report_path), &out1);
    let run = wait_run_json(&dir, &mut d, &out1);
    let feed = Arc::new(Mutex::new(Vec::new()));
    let stop_feed = Arc::new(AtomicBool::new(false));
    let follower = {
        let (port, feed, stop) = (api_port(&run), feed.clone(), stop_feed.clone());
        std::thread::spawn(move || follow_feed(port, feed, stop))
    };
    let status = wait_exit(&mut d, Duration::from_secs(240), &out1);
    stop_feed.store(true, Ordering::Relaxed);
    follower.join().unwrap();
    let out_text = std::fs::read_to_string(&out1).unwrap();
    assert!(status.success(), "demo failed ({status}):\n{out_text}");
    assert!(
        out_text.contains("/api/docs"),
        "the API and docs URLs are shown"
    );
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&report_path).unwrap())
        .expect("the report is JSON");

    // Switches: both directions, in the report and on this test's own feed subscription.
    let switches: Vec<(String, String)> = feed
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "switch")
        .filter_map(|e| {
            Some((
                e["from"].as_str()?.to_string(),
                e["to"].as_str()?.to_string(),
            ))
        })
        .collect();
    for (from, to) in [("DEMOA", "DEMOB"), ("DEMOB", "DEMOA")] {
        assert!(
            switches.iter().any(|(f, t)| f == from && t == to),
            "the live feed delivered a switch {from} → {to}: {switches:?}"
        );
    }
    assert!(
        report["switches"]["a_to_b"].as_u64().unwrap() >= 1,
        "{}",
        report["switches"]
    );
    assert!(
        report["switches"]["b_to_a"].as_u64().unwrap() >= 1,
        "{}",
        report["switches"]
    );

    // Miners stayed connected through the switches (loadgen's own reports).
    let (disconnects, acked, reports) = loadgen_reports(&dir);
    assert_eq!(reports, 4, "every miner group reported");
    assert_eq!(disconnects, 0, "miner disconnects");
    assert_eq!(report["miners"]["disconnects"], 0);

    // Every acknowledged share accounted once, to the right coin.
    let store = store_figures(&dir);
    let acked_total: u128 = acked.values().sum();
    assert!(acked_total > 0, "the miners did work");
    assert_eq!(
        store.total_work, acked_total,
        "store work = acknowledged work (acked {acked:?}, stored {:?})",
        store.work_by_coin
    );
    let mut untagged_share = 0u128;
    for c in COINS {
        let stored = *store.work_by_coin.get(c).unwrap_or(&0);
        let tagged = *acked.get(c).unwrap_or(&0);
        assert!(tagged > 0, "miners worked on {c}: {acked:?}");
        assert!(
            stored >= tagged,
            "{c}: the store holds at least the work tagged {c} ({stored} < {tagged})"
        );
        untagged_share += stored - tagged;
    }
    // SV2 standard channels see no coinbase, so their work is untagged: it must be exactly
    // what the store holds beyond the tagged work.
    assert_eq!(untagged_share, *acked.get("untagged").unwrap_or(&0));
    assert_eq!(report["shares"]["equal"], true, "{}", report["shares"]);

    // The API's figures equal the store's (the report holds what the API said).
    for (coin, w) in &store.work_by_coin {
        assert_eq!(
            report["shares"]["accounted_work_by_coin_total"][coin].as_str(),
            Some(w.to_string().as_str()),
            "API work for {coin}"
        );
    }
    for (name, u) in report["balances"]["users"].as_object().unwrap() {
        let address = u["address"].as_str().unwrap();
        let api: BTreeMap<String, i64> =
            serde_json::from_value(u["balances"].clone()).unwrap_or_default();
        assert_eq!(
            &api, &store.balances[address],
            "{name}'s balances: API vs store"
        );
    }

    // Matured blocks credited: every user non-zero; users' credits per coin = matured rewards
    // minus the pool fee (PPLNS divides the rest completely); the ledger balances.
    assert_eq!(
        store.ledger,
        (0, 0),
        "ledger entries and balances sum to zero"
    );
    assert!(!store.matured.is_empty(), "some blocks matured");
    for c in COINS {
        let expected: i64 = store
            .matured
            .iter()
            .filter(|(coin, _, _)| coin == c)
            .map(|(_, _, r)| (r - r * POOL_FEE_BPS / 10_000) as i64)
            .sum();
        let credited: i64 = store
            .balances
            .values()
            .map(|b| b.get(c).copied().unwrap_or(0))
            .sum();
        assert_eq!(
            credited, expected,
            "{c}: users' credits = matured rewards − fee"
        );
    }
    for u in USERS {
        assert!(
            store.balances[u].values().any(|v| *v > 0),
            "{u} has a balance: {:?}",
            store.balances[u]
        );
    }

    // No process left, by the report and by /proc.
    assert_eq!(report["processes_left"], 0);
    wait_no_processes(&dir, Duration::from_secs(5));

    // The nodes hold our blocks: every block the store has as immature or matured is in node
    // 1's main chain of its chain (nodes started alone on their data directories).
    for (i, c) in COINS.iter().enumerate() {
        let hashes: Vec<String> = store
            .in_chain
            .iter()
            .filter(|(coin, _)| coin == c)
            .map(|(_, h)| h.clone())
            .collect();
        assert!(!hashes.is_empty(), "{c}: blocks accepted");
        let key = ["a", "b"][i];
        let conf = node_confirmations(&dir.join(format!("chain-{key}")).join("node1"), &hashes);
        assert!(
            conf.iter().all(|c| *c >= 1),
            "{c}: every accepted block is in the main chain: {conf:?}"
        );
        let matured = store
            .matured
            .iter()
            .filter(|(coin, _, _)| coin == c)
            .count();
        assert!(
            conf.iter().filter(|c| **c > 100).count() >= matured,
            "{c}: matured blocks have more than 100 confirmations"
        );
    }
    eprintln!(
        "phase 1 ({:.0}s): switches {switches:?}; acknowledged work {acked_total}; matured blocks {}; balances {:?}",
        started.elapsed().as_secs_f64(),
        store.matured.len(),
        store.balances
    );

    // ---- Phase 2: SIGKILL of the demo takes its children with it.
    let _ = std::fs::remove_file(dir.join("run.json"));
    let out2 = dir.join("demo-2.out");
    let mut d = demo(&dir, None, None, &out2);
    wait_run_json(&dir, &mut d, &out2);
    std::thread::sleep(Duration::from_secs(15));
    let children: Vec<u32> = std::fs::read_dir(dir.join("pids"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name() != "demo.pid")
        .filter_map(|e| std::fs::read_to_string(e.path()).ok()?.trim().parse().ok())
        .collect();
    assert!(
        children.len() >= 10,
        "pidfiles of the children: {children:?}"
    );
    d.kill9();
    wait_no_processes(&dir, Duration::from_secs(10));
    let before = store_figures(&dir);
    assert!(before.total_work >= store.total_work);

    // ---- Phase 3: a restart resumes from the SQLite file without losing accounted work.
    let _ = std::fs::remove_file(dir.join("run.json"));
    let report3 = dir.join("report-3.json");
    let out3 = dir.join("demo-3.out");
    let mut d = demo(&dir, Some(40), Some(&report3), &out3);
    let status = wait_exit(&mut d, Duration::from_secs(180), &out3);
    let out_text = std::fs::read_to_string(&out3).unwrap();
    assert!(
        status.success(),
        "restarted demo failed ({status}):\n{out_text}"
    );
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&report3).unwrap()).unwrap();
    assert_eq!(report["resumed"], true, "the restart reuses the chains");
    assert_eq!(report["processes_left"], 0);
    let (disconnects, acked3, _) = loadgen_reports(&dir);
    assert_eq!(disconnects, 0, "miner disconnects after the restart");
    let after = store_figures(&dir);
    let acked3_total: u128 = acked3.values().sum();
    assert!(acked3_total > 0, "the miners did work after the restart");
    assert!(
        after.total_work >= before.total_work + acked3_total,
        "nothing lost: {} < {} (store at the kill) + {} (acknowledged since)",
        after.total_work,
        before.total_work,
        acked3_total
    );
    for (coin, w) in &before.work_by_coin {
        assert!(after.work_by_coin[coin] >= *w, "{coin}: work never shrinks");
    }
    assert_eq!(after.ledger, (0, 0));
    wait_no_processes(&dir, Duration::from_secs(5));
    eprintln!(
        "e2e demo: done in {:.0}s; store work {} → {} after SIGKILL and restart (+{} acknowledged)",
        started.elapsed().as_secs_f64(),
        before.total_work,
        after.total_work,
        acked3_total
    );
    let _ = std::fs::remove_dir_all(&dir);
}
