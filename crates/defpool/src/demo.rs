//! `defpool demo`: the whole pool on one machine, on real parts.
//!
//! A supervisor that starts, in its run directory, two independent Litecoin regtest chains (two
//! peered `litecoind` each, registered as the demo coins DEMOA and DEMOB), one `defpool server`
//! on SQLite, one `defpool proxy`, one `defpool adapter` per chain and `defpool loadgen miners`
//! for three demo users. Each chain's second node plays the labelled "rest of the network": it
//! mines a block every half second so our blocks confirm and mature within minutes. Market data
//! comes from the seeded simulator, chosen so the two coins' profitability crosses both ways in
//! the first ~90 s. Everything is labelled demo / regtest / simulated.
//!
//! Children run in their own process groups with a parent-death signal (SIGKILL), and a pidfile
//! each: a demo killed with SIGKILL takes its children with it, and the next start kills any
//! leftover found through the pidfiles. Chains and the SQLite store persist in the run directory,
//! so a restart resumes.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use defpool_adapter::{DaemonRpc, RpcAuth};
use defpool_core::secret::Secret;
use serde_json::{json, Value};

/// `defpool demo` options.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Stop after this many seconds of mining (setup not counted) and write the summary;
    /// default: run until Ctrl-C.
    #[arg(long)]
    pub duration: Option<f64>,
    /// Write the JSON summary here (also on Ctrl-C).
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Run directory: chains, store, outboxes, logs and pidfiles (reused by the next start).
    #[arg(long, default_value = "demo-run")]
    pub dir: PathBuf,
}

/// The demo's coins: tickers, labels and coinbase tags (the tag lets miners tell which coin a
/// job is for, so acknowledged work can be checked per coin).
const COINS: [(&str, &str, &str); 2] = [
    ("DEMOA", "Demo coin A (LTC regtest chain A)", "a"),
    ("DEMOB", "Demo coin B (LTC regtest chain B)", "b"),
];

/// Demo users: name and a regtest BTC payout address (bech32 P2WPKH, derived from the name).
pub const USERS: [(&str, &str); 3] = [
    ("alice", "bcrt1q0ygllsf3wx0lpdc2yr7alqmhnjatnup8k4gkcr"),
    ("bob", "bcrt1qgsed3h7tczt7jucy9hnhyhy2uwdwvrcdddmcct"),
    ("carol", "bcrt1qwqf5y96a6l2npql6z3h5gjcs6ze47f7h42wryz"),
];

/// The simulated market: seed, wall-clock seconds per simulated minute, poll interval, X (%).
/// Both coins start equally profitable, so the first choice is a coin toss; seed 297 crosses
/// by more than X three times in the first minute (DEMOA ahead near 14 s, DEMOB near 32 s,
/// DEMOA near 42 s), so whichever coin comes first, both directions follow. Searched offline
/// with `defpool_switch::sim::simulate` and the engine's rule (Y = dwell = 0), for first polls
/// 2 to 5 s after the server starts.
const MARKET_SEED: u64 = 297;
const MARKET_STEP_SECS: u32 = 1;
const MARKET_POLL_SECS: u32 = 2;
const SWITCH_X_PERCENT: f64 = 1.0;

/// Rest-of-network block interval: 100 confirmations in under a minute.
const REST_OF_NETWORK_EVERY: Duration = Duration::from_millis(500);
/// Height pre-mined on a fresh chain (past IBD, mature wallet coins for the MWEB peg-in).
const PREMINE: u64 = 120;
/// Block candidates must meet this (network convention): ~2,100 hashes.
const BLOCK_TARGET_DIFFICULTY: f64 = 0.000_000_5;
/// Scrypt share difficulty (stratum convention, ×2^16): a hair above the block target, so every
/// share is a block. On regtest the proxy sees every share as a block candidate (nbits is the
/// easiest target) and forwards it; the adapter caps its channel target at the block target,
/// so shares easier than that would be rejected upstream and mark the adapter down. Few shares
/// (about 1.5 a second in all) keep the block rate sensible.
const SHARE_DIFFICULTY: f64 = BLOCK_TARGET_DIFFICULTY * 65_536.0 * 1.001;
/// Miners stop this long before the end, so their last shares reach the store.
const SETTLE_SECS: f64 = 20.0;

const PROXY_PUB: &str = "9aubsUESvSxGovf93cGCKXsAQwoPGz8JAqLVH36e9wcGa1rPWQB";
const PROXY_SEC: &str = "2Xifp7Jz6CPcphddKSKA9Pqga5mfk82powffv1mRkX1ijdETes";
const ADAPTER_PUB: &str = "9biV8JrgZHbxDZnvN8ysxQ6qJHiFd6ZNFGb73FXB91epVFMbeAs";
const ADAPTER_SEC: &str = "AFnAZb3koYMnb6xkbYddrgt2o61Te77FMQqdtBRj5PZDCbRu5";
/// Local-only demo credentials (loopback, generated config in the run directory).
const ADMIN_TOKEN: &str = "demo-admin-token-not-secret";
const CONTROL_TOKEN: &str = "demo-control-token-not-secret";
const RPC_USER: &str = "demo";
const RPC_PASSWORD: &str = "demo-regtest-rpc-not-secret";

pub fn run(args: &DemoArgs) -> ExitCode {
    match Demo::start(args) {
        Ok(mut demo) => {
            let code = demo.supervise(args);
            demo.shutdown();
            let left = demo.processes_left();
            demo.summary["processes_left"] = json!(left);
            if let Some(path) = &args.report {
                let text = serde_json::to_string_pretty(&demo.summary).expect("json") + "\n";
                if let Err(e) = std::fs::write(path, text) {
                    eprintln!("defpool demo: cannot write {}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
                println!("demo: summary written to {}", path.display());
            }
            println!("demo: stopped; processes left running: {left}");
            code
        }
        Err(e) => {
            eprintln!("defpool demo: {e}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Child processes: own process group, parent-death signal, pidfile.

mod sys {
    use std::os::raw::{c_int, c_ulong};
    // The C library is linked by std; these three calls are all the demo needs from it.
    extern "C" {
        pub fn prctl(
            option: c_int,
            arg2: c_ulong,
            arg3: c_ulong,
            arg4: c_ulong,
            arg5: c_ulong,
        ) -> c_int;
        pub fn getppid() -> c_int;
        pub fn kill(pid: c_int, sig: c_int) -> c_int;
    }
    pub const PR_SET_PDEATHSIG: c_int = 1;
    pub const SIGKILL: c_int = 9;
    pub const SIGTERM: c_int = 15;
}

fn signal(pid: u32, sig: i32) -> bool {
    // SAFETY: kill(2) with a plain pid (or -pgid) and a signal number.
    unsafe { sys::kill(pid as i32, sig) == 0 }
}

fn signal_group(pgid: u32, sig: i32) -> bool {
    // SAFETY: as above, a negative pid addresses the process group.
    unsafe { sys::kill(-(pgid as i32), sig) == 0 }
}

fn alive(pid: u32) -> bool {
    // Zombies count as gone: they hold no resources but their exit status.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .map(|(_, rest)| !rest.starts_with('Z'))
            .unwrap_or(true),
        Err(_) => false,
    }
}

struct Proc {
    name: String,
    child: Child,
    pidfile: PathBuf,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGTERM, up to `patience` for a clean exit, then SIGKILL of its process group.
    fn stop(&mut self, patience: Duration) {
        if self.exited().is_none() {
            signal(self.pid(), sys::SIGTERM);
            let deadline = Instant::now() + patience;
            while self.exited().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        signal_group(self.pid(), sys::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.pidfile);
    }
}

/// Spawns `cmd` with stderr (and stdout unless `stdout` is given) appended to `logs/<name>.log`,
/// in its own process group, with SIGKILL as its parent-death signal. Must run on the main
/// thread: the death signal follows the thread that forked.
fn spawn(
    dir: &Path,
    name: &str,
    mut cmd: Command,
    stdout: Option<PathBuf>,
) -> Result<Proc, String> {
    let log_path = dir.join("logs").join(format!("{name}.log"));
    let open = |p: &Path| {
        std::fs::File::options()
            .create(true)
            .append(true)
            .open(p)
            .map_err(|e| format!("cannot open {}: {e}", p.display()))
    };
    let log = open(&log_path)?;
    let out = match &stdout {
        Some(p) => open(p)?,
        None => log.try_clone().map_err(|e| e.to_string())?,
    };
    let parent = std::process::id() as i32;
    cmd.stdin(Stdio::null())
        .stdout(out)
        .stderr(log)
        .process_group(0);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if sys::prctl(sys::PR_SET_PDEATHSIG, sys::SIGKILL as _, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The demo died between fork and prctl: do not outlive it.
            if sys::getppid() != parent {
                return Err(std::io::Error::other("the demo exited"));
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {name} ({:?}): {e}", cmd.get_program()))?;
    let pidfile = dir.join("pids").join(format!("{name}.pid"));
    std::fs::write(&pidfile, format!("{}\n", child.id()))
        .map_err(|e| format!("cannot write {}: {e}", pidfile.display()))?;
    Ok(Proc {
        name: name.into(),
        child,
        pidfile,
    })
}

/// Kills what an earlier, SIGKILLed demo left: every pidfile's process (and its group) whose
/// command line still names this run directory (so a reused pid is never hit).
fn clean_stale(dir: &Path) -> Result<usize, String> {
    let pids = dir.join("pids");
    let marker = dir.to_string_lossy().to_string();
    let mut killed = 0;
    let Ok(entries) = std::fs::read_dir(&pids) else {
        return Ok(0);
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let pid: Option<u32> = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| t.trim().parse().ok());
        if let Some(pid) = pid {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
                .unwrap_or_default();
            if path.file_name().is_some_and(|n| n == "demo.pid") {
                if alive(pid) && pid != std::process::id() && cmdline.contains(" demo") {
                    return Err(format!(
                        "another demo (pid {pid}) is running in {}",
                        dir.display()
                    ));
                }
            } else if alive(pid) && cmdline.contains(&marker) {
                signal_group(pid, sys::SIGKILL);
                signal(pid, sys::SIGKILL);
                let deadline = Instant::now() + Duration::from_secs(5);
                while alive(pid) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
                killed += 1;
            }
        }
        let _ = std::fs::remove_file(&path);
    }
    Ok(killed)
}

// ---------------------------------------------------------------------------------------------
// Nodes.

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

fn free_port() -> Result<u16, String> {
    defpool_loadgen::free_loopback_port().map_err(|e| format!("no free loopback port: {e}"))
}

fn port_or_free(preferred: u16) -> Result<u16, String> {
    match TcpListener::bind(("127.0.0.1", preferred)) {
        Ok(_) => Ok(preferred),
        Err(_) => free_port(),
    }
}

struct Node {
    label: String,
    rpc_port: u16,
    p2p_port: u16,
    rpc: DaemonRpc,
}

impl Node {
    fn call(
        &self,
        rt: &tokio::runtime::Runtime,
        method: &str,
        params: Value,
    ) -> Result<Value, String> {
        rt.block_on(self.rpc.call::<Value>(method, params))
            .map_err(|e| format!("{} {method}: {e}", self.label))
    }

    fn height(&self, rt: &tokio::runtime::Runtime) -> Result<u64, String> {
        self.call(rt, "getblockcount", json!([]))?
            .as_u64()
            .ok_or_else(|| format!("{}: getblockcount is not a number", self.label))
    }
}

/// One regtest chain: node 1 serves the adapter, node 2 is the rest of the network (and holds
/// the wallet: its rewards, the adapter's payout address, the MWEB peg-in).
struct Chain {
    ticker: &'static str,
    name: &'static str,
    key: &'static str,
    node1: Node,
    node2: Node,
    reward_address: String,
    payout_address: String,
    height_at_start: u64,
    next_block: Instant,
    blocks_by_rest: u64,
}

fn start_node(
    dir: &Path,
    name: &str,
    datadir: &Path,
    extra: &[String],
) -> Result<(Proc, Node), String> {
    std::fs::create_dir_all(datadir).map_err(|e| format!("{}: {e}", datadir.display()))?;
    let (rpc_port, p2p_port) = (free_port()?, free_port()?);
    let mut cmd = Command::new(litecoind());
    cmd.args([
        "-regtest".to_string(),
        "-server".into(),
        format!("-datadir={}", datadir.display()),
        format!("-rpcport={rpc_port}"),
        format!("-bind=127.0.0.1:{p2p_port}"),
        "-rpcbind=127.0.0.1".into(),
        "-rpcallowip=127.0.0.1".into(),
        format!("-rpcuser={RPC_USER}"),
        format!("-rpcpassword={RPC_PASSWORD}"),
        "-dnsseed=0".into(),
        "-upnp=0".into(),
        "-discover=0".into(),
        "-printtoconsole=0".into(),
        "-fallbackfee=0.0001".into(),
    ])
    .args(extra);
    let proc = spawn(dir, name, cmd, None)?;
    let node = Node {
        label: name.into(),
        rpc_port,
        p2p_port,
        rpc: DaemonRpc::new(
            format!("http://127.0.0.1:{rpc_port}"),
            RpcAuth::UserPass {
                user: RPC_USER.into(),
                password: Secret::new(RPC_PASSWORD),
            },
            Duration::from_secs(30),
        ),
    };
    Ok((proc, node))
}

fn wait_for(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    while !ready() {
        if Instant::now() > deadline {
            return Err(format!("timed out after {timeout:?} waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// A small HTTP/1.1 client for the server's API on loopback.

fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("GET {path}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("GET {path}: {e}"))?;
    let mut reader = BufReader::new(s);
    let (status, chunked) = read_head(&mut reader).map_err(|e| format!("GET {path}: {e}"))?;
    let mut body = Vec::new();
    if chunked {
        ChunkedReader::new(reader).read_to_end(&mut body)
    } else {
        reader.read_to_end(&mut body)
    }
    .map_err(|e| format!("GET {path}: {e}"))?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Status code and whether the body is chunked.
fn read_head(reader: &mut impl BufRead) -> std::io::Result<(u16, bool)> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut chunked = false;
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
            chunked = true;
        }
    }
    Ok((status, chunked))
}

struct ChunkedReader<R> {
    inner: R,
    left: usize,
    done: bool,
}

impl<R: BufRead> ChunkedReader<R> {
    fn new(inner: R) -> Self {
        ChunkedReader {
            inner,
            left: 0,
            done: false,
        }
    }
}

impl<R: BufRead> Read for ChunkedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.done {
            return Ok(0);
        }
        if self.left == 0 {
            let mut line = String::new();
            // The CRLF closing the previous chunk, then the size line.
            while line.trim().is_empty() {
                line.clear();
                if self.inner.read_line(&mut line)? == 0 {
                    self.done = true;
                    return Ok(0);
                }
            }
            let size = line.trim().split(';').next().unwrap_or("0");
            self.left = usize::from_str_radix(size, 16)
                .map_err(|_| std::io::Error::other(format!("bad chunk size {line:?}")))?;
            if self.left == 0 {
                self.done = true;
                return Ok(0);
            }
        }
        let n = buf.len().min(self.left);
        let n = self.inner.read(&mut buf[..n])?;
        if n == 0 {
            self.done = true;
        }
        self.left -= n;
        Ok(n)
    }
}

fn api_json(addr: SocketAddr, path: &str) -> Result<Value, String> {
    let (status, body) = http_get(addr, path)?;
    if status != 200 {
        return Err(format!("GET {path}: HTTP {status}"));
    }
    serde_json::from_str(&body).map_err(|e| format!("GET {path}: not JSON: {e}"))
}

/// Follows the SSE live feed, collecting every event, reconnecting until `stop`.
fn follow_feed(addr: SocketAddr, events: Arc<Mutex<Vec<Value>>>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let attempt = || -> std::io::Result<()> {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_millis(500)))?;
            write!(
                s,
                "GET /api/feed HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
            )?;
            let mut reader = BufReader::new(s);
            let (status, chunked) = read_head(&mut reader)?;
            if status != 200 {
                return Err(std::io::Error::other(format!("HTTP {status}")));
            }
            let mut lines: Box<dyn BufRead> = if chunked {
                Box::new(BufReader::new(ChunkedReader::new(reader)))
            } else {
                Box::new(reader)
            };
            let mut line = String::new();
            while !stop.load(Ordering::Relaxed) {
                match lines.read_line(&mut line) {
                    Ok(0) => return Ok(()),
                    Ok(_) => {
                        if line.ends_with('\n') {
                            if let Some(data) = line.trim_end().strip_prefix("data:") {
                                if let Ok(v) = serde_json::from_str::<Value>(data.trim()) {
                                    events.lock().expect("feed events").push(v);
                                }
                            }
                            line.clear();
                        }
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        };
        let _ = attempt();
        std::thread::sleep(Duration::from_millis(500));
    }
}

// ---------------------------------------------------------------------------------------------
// The demo.

struct MinerGroup {
    name: &'static str,
    user: &'static str,
    kind: &'static str,
    count: u32,
    shares_per_sec: f64,
}

const MINERS: [MinerGroup; 4] = [
    MinerGroup {
        name: "alice-sv1",
        user: "alice",
        kind: "sv1",
        count: 2,
        shares_per_sec: 0.5,
    },
    MinerGroup {
        name: "bob-sv2-extended",
        user: "bob",
        kind: "sv2-extended",
        count: 2,
        shares_per_sec: 0.5,
    },
    MinerGroup {
        name: "carol-sv1-xnsub",
        user: "carol",
        kind: "sv1-xnsub",
        count: 1,
        shares_per_sec: 0.25,
    },
    MinerGroup {
        name: "carol-sv2-standard",
        user: "carol",
        kind: "sv2-standard",
        count: 1,
        shares_per_sec: 0.25,
    },
];

struct Ports {
    api: u16,
    control: u16,
    proxy_admin: u16,
    sv1: u16,
    sv2: u16,
    adapters: [u16; 2],
}

impl Ports {
    /// The ports of the previous start when they are still free (the server's stored
    /// assignment names the adapters' addresses, and the API URL stays the same), else new ones.
    fn load_or_pick(dir: &Path) -> Result<Ports, String> {
        let path = dir.join("ports.json");
        let saved: Value = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null);
        let pick = |key: &str, default: Option<u16>| -> Result<u16, String> {
            match saved[key].as_u64().map(|p| p as u16).or(default) {
                Some(p) => port_or_free(p),
                None => free_port(),
            }
        };
        let ports = Ports {
            api: pick("api", Some(8080))?,
            control: pick("control", None)?,
            proxy_admin: pick("proxy_admin", None)?,
            sv1: pick("sv1", Some(3433))?,
            sv2: pick("sv2", Some(34255))?,
            adapters: [pick("adapter_a", None)?, pick("adapter_b", None)?],
        };
        let text = serde_json::to_string_pretty(&json!({
            "api": ports.api,
            "control": ports.control,
            "proxy_admin": ports.proxy_admin,
            "sv1": ports.sv1,
            "sv2": ports.sv2,
            "adapter_a": ports.adapters[0],
            "adapter_b": ports.adapters[1],
        }))
        .expect("json");
        std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(ports)
    }
}

struct Demo {
    dir: PathBuf,
    rt: tokio::runtime::Runtime,
    stop: Arc<AtomicBool>,
    nodes: Vec<Proc>,
    roles: Vec<Proc>,
    miners: Vec<Proc>,
    chains: Vec<Chain>,
    ports: Ports,
    api: SocketAddr,
    feed: Arc<Mutex<Vec<Value>>>,
    feed_stop: Arc<AtomicBool>,
    resumed: bool,
    mining_started: Instant,
    work_at_start: Option<BTreeMap<String, u128>>,
    summary: Value,
    all_pids: Vec<u32>,
}

fn pool_state_file(dir: &Path) -> PathBuf {
    dir.join("chains.json")
}

impl Demo {
    fn start(args: &DemoArgs) -> Result<Demo, String> {
        let dir = std::path::absolute(&args.dir)
            .map_err(|e| format!("run directory {}: {e}", args.dir.display()))?;
        for sub in ["pids", "logs"] {
            std::fs::create_dir_all(dir.join(sub))
                .map_err(|e| format!("cannot create {}: {e}", dir.join(sub).display()))?;
        }
        let killed = clean_stale(&dir)?;
        std::fs::write(
            dir.join("pids").join("demo.pid"),
            format!("{}\n", std::process::id()),
        )
        .map_err(|e| format!("cannot write the demo's pidfile: {e}"))?;
        if killed > 0 {
            println!("demo: killed {killed} process(es) left by an earlier run");
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| format!("tokio runtime: {e}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        {
            let stop = stop.clone();
            rt.spawn(async move {
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                        .expect("SIGTERM handler");
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
                stop.store(true, Ordering::Relaxed);
            });
        }
        let ports = Ports::load_or_pick(&dir)?;
        let api: SocketAddr = ([127, 0, 0, 1], ports.api).into();
        let mut demo = Demo {
            dir: dir.clone(),
            rt,
            stop,
            nodes: Vec::new(),
            roles: Vec::new(),
            miners: Vec::new(),
            chains: Vec::new(),
            ports,
            api,
            feed: Arc::new(Mutex::new(Vec::new())),
            feed_stop: Arc::new(AtomicBool::new(false)),
            resumed: false,
            mining_started: Instant::now(),
            work_at_start: None,
            summary: json!({}),
            all_pids: Vec::new(),
        };
        if let Err(e) = demo.bring_up(args) {
            demo.shutdown();
            return Err(e);
        }
        Ok(demo)
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn bring_up(&mut self, args: &DemoArgs) -> Result<(), String> {
        println!("DefPool demo (regtest chains, demo coins, simulated market; nothing here is real money)");
        println!("demo: run directory {}", self.dir.display());
        self.start_chains()?;
        self.write_config()?;
        let config = self.dir.join("demo.toml");
        let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
        let role = |args: &[&str]| {
            let mut c = Command::new(&exe);
            c.args(args).env("RUST_LOG", "info");
            c
        };
        let cfg = config.to_string_lossy().to_string();
        let server = spawn(
            &self.dir,
            "server",
            role(&["server", "--config", &cfg]),
            None,
        )?;
        self.all_pids.push(server.pid());
        self.roles.push(server);
        self.wait_port("server API", self.ports.api)?;
        for (i, (ticker, _, key)) in COINS.iter().enumerate() {
            let name = format!("adapter-{key}");
            let adapter_name = format!("demo{key}");
            let p = spawn(
                &self.dir,
                &name,
                role(&["adapter", "--config", &cfg, "--name", &adapter_name]),
                None,
            )?;
            self.all_pids.push(p.pid());
            self.roles.push(p);
            self.wait_port(&format!("{ticker} adapter"), self.ports.adapters[i])?;
        }
        let proxy = spawn(&self.dir, "proxy", role(&["proxy", "--config", &cfg]), None)?;
        self.all_pids.push(proxy.pid());
        self.roles.push(proxy);
        self.wait_port("proxy SV1 port", self.ports.sv1)?;
        self.wait_port("proxy SV2 port", self.ports.sv2)?;
        {
            let (addr, events, stop) = (self.api, self.feed.clone(), self.feed_stop.clone());
            std::thread::spawn(move || follow_feed(addr, events, stop));
        }
        self.work_at_start = self.accounted_work().ok();
        let miner_secs = match args.duration {
            Some(d) => (d - SETTLE_SECS).max(5.0),
            None => 7.0 * 86_400.0,
        };
        for g in &MINERS {
            let address = user_address(g.user);
            let url = if g.kind.starts_with("sv2") {
                self.ports.sv2
            } else {
                self.ports.sv1
            };
            let report = self.dir.join(format!("loadgen-{}.json", g.name));
            let _ = std::fs::remove_file(&report);
            let mut cmd = Command::new(&exe);
            cmd.args([
                "loadgen",
                "miners",
                "--url",
                &format!("127.0.0.1:{url}"),
                "--kind",
                g.kind,
                "--algorithm",
                "scrypt",
                "--count",
                &g.count.to_string(),
                "--username",
                address,
                "--duration",
                &format!("{miner_secs:.0}"),
                "--shares-per-sec",
                &g.shares_per_sec.to_string(),
                "--report",
                &report.to_string_lossy(),
            ]);
            if g.kind.starts_with("sv2") {
                cmd.args(["--authority-public-key", PROXY_PUB]);
            }
            cmd.env("RUST_LOG", "warn");
            let stdout = self
                .dir
                .join("logs")
                .join(format!("loadgen-{}.out", g.name));
            let p = spawn(&self.dir, &format!("loadgen-{}", g.name), cmd, Some(stdout))?;
            self.all_pids.push(p.pid());
            self.miners.push(p);
        }
        self.mining_started = Instant::now();
        let api = format!("http://127.0.0.1:{}", self.ports.api);
        println!("demo: pool running — API {api}/api/status  docs {api}/api/docs  live feed {api}/api/feed  metrics {api}/metrics");
        println!(
            "demo: miners connect to stratum+tcp://127.0.0.1:{} (SV1) and stratum2+tcp://127.0.0.1:{} (SV2, authority key {PROXY_PUB}); username = BTC payout address[.worker]",
            self.ports.sv1, self.ports.sv2
        );
        std::fs::write(
            self.dir.join("run.json"),
            serde_json::to_string_pretty(&json!({
                "api": api,
                "sv1": self.ports.sv1,
                "sv2": self.ports.sv2,
                "nodes": self.chains.iter().map(|c| json!({
                    "coin": c.ticker,
                    "node1_rpc": c.node1.rpc_port,
                    "node2_rpc": c.node2.rpc_port,
                    "rpc_user": RPC_USER,
                    "height_at_start": c.height_at_start,
                })).collect::<Vec<_>>(),
                "users": USERS.iter().map(|(n, a)| json!({"name": n, "address": a})).collect::<Vec<_>>(),
            }))
            .expect("json"),
        )
        .map_err(|e| format!("cannot write run.json: {e}"))?;
        Ok(())
    }

    fn wait_port(&mut self, what: &str, port: u16) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if self.stopped() {
                return Err("stopped".into());
            }
            if let Some(p) = self.roles.iter_mut().find_map(|p| {
                let name = p.name.clone();
                p.exited().map(|s| (name, s))
            }) {
                return Err(format!(
                    "{} exited ({}) before the {what} opened; see {}",
                    p.0,
                    p.1,
                    self.dir.join("logs").join(format!("{}.log", p.0)).display()
                ));
            }
            if Instant::now() > deadline {
                return Err(format!("the {what} (port {port}) did not open in 60 s"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Both chains' nodes: fresh and pre-mined at the first start, reused afterwards.
    fn start_chains(&mut self) -> Result<(), String> {
        let state_path = pool_state_file(&self.dir);
        let state: Option<Value> = std::fs::read_to_string(&state_path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok());
        self.resumed = state.is_some();
        if !self.resumed {
            for (_, _, key) in COINS {
                let _ = std::fs::remove_dir_all(self.dir.join(format!("chain-{key}")));
            }
            for f in [
                "defpool-demo.db",
                "defpool-demo.db-wal",
                "defpool-demo.db-shm",
                "proxy-outbox.db",
                "proxy-outbox.db-wal",
                "proxy-outbox.db-shm",
                "adapter-a.db",
                "adapter-a.db-wal",
                "adapter-a.db-shm",
                "adapter-b.db",
                "adapter-b.db-wal",
                "adapter-b.db-shm",
            ] {
                let _ = std::fs::remove_file(self.dir.join(f));
            }
        }
        let mut saved = json!({});
        for (ticker, name, key) in COINS {
            let base = self.dir.join(format!("chain-{key}"));
            let (p1, node1) = start_node(
                &self.dir,
                &format!("litecoind-{key}1"),
                &base.join("node1"),
                &[
                    "-listen=1".into(),
                    "-connect=0".into(),
                    "-disablewallet".into(),
                ],
            )?;
            self.all_pids.push(p1.pid());
            self.nodes.push(p1);
            let (p2, node2) = start_node(
                &self.dir,
                &format!("litecoind-{key}2"),
                &base.join("node2"),
                &[format!("-connect=127.0.0.1:{}", node1.p2p_port)],
            )?;
            self.all_pids.push(p2.pid());
            self.nodes.push(p2);
            let rt = &self.rt;
            wait_for(
                &format!("chain {key} nodes' RPC"),
                Duration::from_secs(90),
                || node1.height(rt).is_ok() && node2.height(rt).is_ok(),
            )?;
            wait_for(
                &format!("chain {key} peering"),
                Duration::from_secs(60),
                || {
                    node1
                        .call(rt, "getconnectioncount", json!([]))
                        .ok()
                        .and_then(|v| v.as_u64())
                        .unwrap_or(0)
                        > 0
                },
            )?;
            let (reward_address, payout_address) = match state.as_ref().map(|s| &s[key]) {
                Some(s) if s["reward_address"].is_string() => {
                    // Restart: the wallet is not loaded automatically.
                    let _ = node2.call(rt, "loadwallet", json!(["demo"]));
                    (
                        s["reward_address"].as_str().unwrap_or_default().to_string(),
                        s["payout_address"].as_str().unwrap_or_default().to_string(),
                    )
                }
                _ => {
                    node2.call(rt, "createwallet", json!(["demo"]))?;
                    let reward =
                        node2.call(rt, "getnewaddress", json!(["rest-of-network", "bech32"]))?;
                    let payout =
                        node2.call(rt, "getnewaddress", json!(["pool-payout", "bech32"]))?;
                    let reward = reward.as_str().unwrap_or_default().to_string();
                    node2.call(rt, "generatetoaddress", json!([PREMINE, reward]))?;
                    (reward, payout.as_str().unwrap_or_default().to_string())
                }
            };
            let h2 = node2.height(rt)?;
            wait_for(
                &format!("chain {key} nodes agree"),
                Duration::from_secs(60),
                || node1.height(rt).map(|h| h >= h2).unwrap_or(false),
            )?;
            println!(
                "demo: chain {key} ({ticker}, \"{name}\") at height {h2}: node 1 RPC {} (our adapter), node 2 RPC {} (rest of the network)",
                node1.rpc_port, node2.rpc_port
            );
            saved[key] =
                json!({"reward_address": reward_address, "payout_address": payout_address});
            self.chains.push(Chain {
                ticker,
                name,
                key,
                node1,
                node2,
                reward_address,
                payout_address,
                height_at_start: h2,
                next_block: Instant::now(),
                blocks_by_rest: 0,
            });
        }
        std::fs::write(
            &state_path,
            serde_json::to_string_pretty(&saved).expect("json"),
        )
        .map_err(|e| format!("cannot write {}: {e}", state_path.display()))?;
        Ok(())
    }

    fn write_config(&self) -> Result<(), String> {
        let text = demo_config(&self.dir, &self.ports, &self.chains);
        let path = self.dir.join("demo.toml");
        std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        // Refuse to start on a config the roles would refuse (exit 78 explains itself there).
        defpool_config::load(&path).map_err(|e| format!("generated {}: {e}", path.display()))?;
        Ok(())
    }

    /// The rest of the network: one block per chain every half second on node 2. Before MWEB
    /// activates (height 432) it puts a peg-in in the mempool, without which no block at 432
    /// can be built.
    fn rest_of_network(&mut self) {
        let rt = &self.rt;
        for c in &mut self.chains {
            if Instant::now() < c.next_block {
                continue;
            }
            c.next_block = Instant::now() + REST_OF_NETWORK_EVERY;
            let height = c.node2.height(rt).unwrap_or(0);
            if (420..432).contains(&height) {
                let empty = c
                    .node2
                    .call(rt, "getmempoolinfo", json!([]))
                    .map(|m| m["size"].as_u64() == Some(0))
                    .unwrap_or(false);
                if empty {
                    let pegin = c
                        .node2
                        .call(rt, "getnewaddress", json!(["mweb-pegin", "mweb"]))
                        .and_then(|a| c.node2.call(rt, "sendtoaddress", json!([a, 1.0])));
                    if let Err(e) = pegin {
                        eprintln!("demo: chain {}: MWEB peg-in: {e}", c.key);
                    }
                }
            }
            match c
                .node2
                .call(rt, "generatetoaddress", json!([1, c.reward_address]))
            {
                Ok(_) => c.blocks_by_rest += 1,
                Err(e) => eprintln!("demo: chain {} rest-of-network block: {e}", c.key),
            }
        }
    }

    /// Runs until the duration, a stop signal or a role's death; returns the exit code.
    fn supervise(&mut self, args: &DemoArgs) -> ExitCode {
        let deadline = args
            .duration
            .map(|d| self.mining_started + Duration::from_secs_f64(d));
        let mut next_status = Instant::now();
        let mut code = ExitCode::SUCCESS;
        loop {
            if self.stopped() {
                println!("demo: stop requested");
                break;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            if let Some(dead) = self
                .roles
                .iter_mut()
                .chain(self.nodes.iter_mut())
                .find_map(|p| p.exited().map(|s| (p.name.clone(), s)))
            {
                eprintln!(
                    "defpool demo: {} exited ({}); see {}; stopping",
                    dead.0,
                    dead.1,
                    self.dir
                        .join("logs")
                        .join(format!("{}.log", dead.0))
                        .display()
                );
                code = ExitCode::FAILURE;
                break;
            }
            self.rest_of_network();
            if Instant::now() >= next_status {
                next_status = Instant::now() + Duration::from_secs(5);
                self.print_status();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Bounded run: miners end by themselves; give their last shares time to be accounted.
        let wait_miners = Instant::now() + Duration::from_secs(30);
        while self.miners.iter_mut().any(|m| m.exited().is_none()) && Instant::now() < wait_miners {
            if self.stopped() && args.duration.is_none() {
                break;
            }
            self.rest_of_network();
            std::thread::sleep(Duration::from_millis(100));
        }
        for m in &mut self.miners {
            m.stop(Duration::from_secs(3));
        }
        self.wait_accounting_settles();
        self.print_status();
        self.summary = self.collect_summary(args);
        code
    }

    /// The store's work per coin for the demo users, through the API (each user's
    /// `earnings.per_coin[].work`, summed).
    fn accounted_work(&self) -> Result<BTreeMap<String, u128>, String> {
        let mut out = BTreeMap::new();
        for (_, address) in USERS {
            match api_json(self.api, &format!("/api/users/{address}")) {
                Ok(u) => {
                    for (coin, w) in user_work(&u) {
                        *out.entry(coin).or_default() += w;
                    }
                }
                Err(e) if e.contains("HTTP 404") => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Waits (up to 15 s) until the store's work per coin stops changing for 3 s: the proxy
    /// seals batches once a second and the server applies them in order.
    fn wait_accounting_settles(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut last = None;
        let mut since = Instant::now();
        while Instant::now() < deadline {
            let now = self.accounted_work().ok();
            if now != last {
                last = now;
                since = Instant::now();
            } else if since.elapsed() > Duration::from_secs(3) {
                return;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn print_status(&self) {
        let t = self.mining_started.elapsed().as_secs();
        let mut out = format!("--- demo t+{t}s ---\n");
        match api_json(self.api, "/api/status") {
            Ok(s) => out.push_str(&render_status(&s)),
            Err(e) => out.push_str(&format!("  pool status: not available ({e})\n")),
        }
        for c in &self.chains {
            let h1 = c
                .node1
                .height(&self.rt)
                .map(|h| h.to_string())
                .unwrap_or("?".into());
            out.push_str(&format!(
                "  chain {} ({}): height {h1}, rest-of-network blocks {}\n",
                c.key, c.ticker, c.blocks_by_rest
            ));
        }
        match api_json(self.api, "/api/blocks?limit=1000") {
            Ok(b) => out.push_str(&render_blocks(&b)),
            Err(e) => out.push_str(&format!("  blocks: not available ({e})\n")),
        }
        let switches = self.feed_switches();
        if !switches.is_empty() {
            out.push_str(&format!("  switches (live feed): {}\n", switches.len()));
            for s in switches.iter().rev().take(3).rev() {
                out.push_str(&format!(
                    "    {} → {} [{}] {}\n",
                    s["from"].as_str().unwrap_or("-"),
                    s["to"].as_str().unwrap_or("-"),
                    s["kind"].as_str().unwrap_or("?"),
                    s["reason"].as_str().unwrap_or("")
                ));
            }
        }
        for (name, address) in USERS {
            match api_json(self.api, &format!("/api/users/{address}")) {
                Ok(u) => {
                    let (shares, online) = user_shares(&u);
                    out.push_str(&format!(
                        "  {name:<6} workers online {online}  shares {shares}  {}\n",
                        render_balances(&u)
                    ))
                }
                Err(e) => out.push_str(&format!("  {name:<6} not available ({e})\n")),
            }
        }
        print!("{out}");
        let _ = std::io::stdout().flush();
    }

    fn feed_switches(&self) -> Vec<Value> {
        self.feed
            .lock()
            .expect("feed events")
            .iter()
            .filter(|e| e["type"] == "switch")
            .cloned()
            .collect()
    }

    fn collect_summary(&self, args: &DemoArgs) -> Value {
        let mut missing: Vec<String> = Vec::new();
        let mut note = |what: &str, e: &str| missing.push(format!("{what}: {e}"));
        // Switches, from the live feed and from the decision log.
        let feed_switches = self.feed_switches();
        let decisions = api_json(self.api, "/api/decisions").unwrap_or_else(|e| {
            note("decisions", &e);
            Value::Null
        });
        let (a, b) = (COINS[0].0, COINS[1].0);
        let count = |from: &str, to: &str| {
            feed_switches
                .iter()
                .filter(|s| s["from"] == from && s["to"] == to)
                .count()
        };
        // Miners, from loadgen's own reports.
        let mut miners = Vec::new();
        let mut disconnects = 0u64;
        let mut acked_shares = 0u64;
        let mut acked_work: BTreeMap<String, u128> = BTreeMap::new();
        for g in &MINERS {
            let path = self.dir.join(format!("loadgen-{}.json", g.name));
            match std::fs::read_to_string(&path)
                .ok()
                .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            {
                Some(r) => {
                    disconnects += r["disconnects"].as_u64().unwrap_or(0);
                    acked_shares += r["shares_accepted"].as_u64().unwrap_or(0);
                    if let Some(m) = r["accepted_work_by_coin"].as_object() {
                        for (coin, w) in m {
                            *acked_work.entry(coin.clone()).or_default() += as_u128(w);
                        }
                    }
                    miners.push(json!({"group": g.name, "user": g.user, "kind": g.kind, "count": g.count, "report": r}));
                }
                None => {
                    note(&format!("loadgen {}", g.name), "no report (stopped early)");
                    miners.push(json!({"group": g.name, "user": g.user, "kind": g.kind, "count": g.count, "report": null}));
                }
            }
        }
        let acked_total: u128 = acked_work.values().sum();
        let accounted_end = self.accounted_work().unwrap_or_else(|e| {
            note("accounted work", &e);
            BTreeMap::new()
        });
        let start = self.work_at_start.clone().unwrap_or_default();
        let accounted_run: BTreeMap<String, u128> = accounted_end
            .iter()
            .map(|(c, w)| (c.clone(), w.saturating_sub(*start.get(c).unwrap_or(&0))))
            .collect();
        let accounted_run_total: u128 = accounted_run.values().sum();
        // Blocks: found per the store, accepted per the nodes.
        let blocks_api = api_json(self.api, "/api/blocks?limit=1000").unwrap_or_else(|e| {
            note("blocks", &e);
            Value::Null
        });
        let mut chains = serde_json::Map::new();
        for c in &self.chains {
            chains.insert(c.ticker.into(), self.chain_figures(c));
        }
        // Balances per user, against the ledger's earnings events.
        let mut balances = serde_json::Map::new();
        let mut balance_sums: BTreeMap<String, i128> = BTreeMap::new();
        for (name, address) in USERS {
            match api_json(self.api, &format!("/api/users/{address}")) {
                Ok(u) => {
                    let per_coin = user_balances(&u);
                    for (coin, v) in &per_coin {
                        *balance_sums.entry(coin.clone()).or_default() += *v as i128;
                    }
                    balances.insert(
                        name.into(),
                        json!({"address": address, "balances": per_coin}),
                    );
                }
                Err(e) => {
                    note(&format!("user {name}"), &e);
                    balances.insert(name.into(), json!({"address": address, "balances": null}));
                }
            }
        }
        let mut earnings: BTreeMap<String, i128> = BTreeMap::new();
        for e in self.feed.lock().expect("feed").iter() {
            if e["type"] == "earnings" {
                if let Some(coin) = e["coin"].as_str() {
                    *earnings.entry(coin.into()).or_default() +=
                        e["users_amount"].as_i64().unwrap_or(0) as i128;
                }
            }
        }
        json!({
            "labels": {
                "coins": COINS.iter().map(|(t, n, _)| json!({"ticker": t, "name": n})).collect::<Vec<_>>(),
                "market": "simulated (seeded simulator, not market data)",
                "chains": "litecoind regtest",
            },
            "run_dir": self.dir,
            "resumed": self.resumed,
            "duration_secs": args.duration,
            "mining_secs": self.mining_started.elapsed().as_secs_f64(),
            "api": format!("http://127.0.0.1:{}", self.ports.api),
            "switches": {
                "feed": feed_switches,
                "a_to_b": count(a, b),
                "b_to_a": count(b, a),
                "decisions_api": decisions,
            },
            "miners": {
                "groups": miners,
                "disconnects": disconnects,
            },
            "shares": {
                "acknowledged_shares": acked_shares,
                "acknowledged_work_by_coin": to_strings(&acked_work),
                "acknowledged_work_total": acked_total.to_string(),
                "accounted_work_by_coin_this_run": to_strings(&accounted_run),
                "accounted_work_total_this_run": accounted_run_total.to_string(),
                "accounted_work_by_coin_total": to_strings(&accounted_end),
                "equal": acked_total == accounted_run_total && acked_total > 0,
            },
            "blocks": {
                "chains": chains,
                "store_phases_by_coin": block_phases(&blocks_api),
            },
            "balances": {
                "users": balances,
                "sum_by_coin": balance_sums.iter().map(|(c, v)| (c.clone(), v.to_string())).collect::<BTreeMap<_, _>>(),
                "earnings_events_users_amount_by_coin": earnings.iter().map(|(c, v)| (c.clone(), v.to_string())).collect::<BTreeMap<_, _>>(),
            },
            "missing": missing,
        })
    }

    /// Our blocks in each chain since this run started, read from the nodes: the coinbase
    /// carries our tag; node 2 must hold the same block at that height.
    fn chain_figures(&self, c: &Chain) -> Value {
        let rt = &self.rt;
        let tag_hex: String = coinbase_tag(c.ticker)
            .bytes()
            .map(|b| format!("{b:02x}"))
            .collect();
        let tip = c.node1.height(rt).unwrap_or(0);
        let (mut ours, mut on_both, mut mature) = (0u64, 0u64, 0u64);
        let mut heights = Vec::new();
        for h in c.height_at_start + 1..=tip {
            let Ok(hash) = c.node1.call(rt, "getblockhash", json!([h])) else {
                continue;
            };
            let Ok(block) = c.node1.call(rt, "getblock", json!([hash, 2])) else {
                continue;
            };
            let coinbase = block["tx"][0]["vin"][0]["coinbase"].as_str().unwrap_or("");
            if !coinbase.contains(&tag_hex) {
                continue;
            }
            ours += 1;
            heights.push(h);
            if c.node2.call(rt, "getblockhash", json!([h])).ok() == Some(hash) {
                on_both += 1;
            }
            if block["confirmations"].as_u64().unwrap_or(0) > 100 {
                mature += 1;
            }
        }
        json!({
            "name": c.name,
            "height_at_start": c.height_at_start,
            "height_at_end": tip,
            "rest_of_network_blocks": c.blocks_by_rest,
            "pool_blocks_in_main_chain": ours,
            "pool_blocks_on_both_nodes": on_both,
            "pool_blocks_mature": mature,
            "pool_block_heights": heights,
            "payout_address": c.payout_address,
        })
    }

    fn shutdown(&mut self) {
        self.feed_stop.store(true, Ordering::Relaxed);
        for p in self.miners.iter_mut().rev() {
            p.stop(Duration::from_secs(3));
        }
        // Proxy first (its outbox keeps what the server has not acknowledged), then adapters,
        // then the server, then the nodes.
        for p in self.roles.iter_mut().rev() {
            p.stop(Duration::from_secs(10));
        }
        for c in &self.chains {
            let _ = c.node1.call(&self.rt, "stop", json!([]));
            let _ = c.node2.call(&self.rt, "stop", json!([]));
        }
        for p in self.nodes.iter_mut() {
            p.stop(Duration::from_secs(20));
        }
        let _ = std::fs::remove_file(self.dir.join("pids").join("demo.pid"));
    }

    fn processes_left(&self) -> usize {
        self.all_pids.iter().filter(|p| alive(**p)).count()
    }
}

fn user_address(user: &str) -> &'static str {
    USERS
        .iter()
        .find(|(n, _)| *n == user)
        .map(|(_, a)| *a)
        .expect("known demo user")
}

fn coinbase_tag(ticker: &str) -> String {
    format!("/DefPool/coin:{ticker}/")
}

fn as_u128(v: &Value) -> u128 {
    match v {
        Value::Number(n) => n
            .as_u64()
            .map(u128::from)
            .or_else(|| n.to_string().parse().ok())
            .unwrap_or(0),
        Value::String(s) => s.parse().unwrap_or(0),
        _ => 0,
    }
}

fn to_strings(m: &BTreeMap<String, u128>) -> BTreeMap<String, String> {
    m.iter().map(|(k, v)| (k.clone(), v.to_string())).collect()
}

fn user_balances(u: &Value) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    match u.get("balances") {
        Some(Value::Object(m)) => {
            for (coin, v) in m {
                let amount = v
                    .as_i64()
                    .or_else(|| v["amount"].as_i64())
                    .or_else(|| v["balance"].as_i64())
                    .or_else(|| v.as_str().and_then(|s| s.parse().ok()));
                if let Some(a) = amount {
                    out.insert(coin.clone(), a);
                }
            }
        }
        Some(Value::Array(rows)) => {
            for r in rows {
                let coin = r["coin"].as_str();
                let amount = r["amount"]
                    .as_i64()
                    .or_else(|| r["balance"].as_i64())
                    .or_else(|| r["realised"].as_i64());
                if let (Some(c), Some(a)) = (coin, amount) {
                    out.insert(c.to_string(), a);
                }
            }
        }
        _ => {}
    }
    out
}

fn render_balances(u: &Value) -> String {
    let b = user_balances(u);
    if b.is_empty() {
        return "balance: none yet".into();
    }
    let parts: Vec<String> = b
        .iter()
        .map(|(c, v)| format!("{} {c}", defpool_core::money::format_units(*v as i128, 8)))
        .collect();
    format!("balance: {}", parts.join(", "))
}

fn render_status(s: &Value) -> String {
    let mut out = String::new();
    let hashrates: BTreeMap<String, f64> = s["hashrate"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|h| {
            Some((
                h["algorithm"].as_str()?.to_string(),
                h["hashrate_hs"].as_f64()?,
            ))
        })
        .collect();
    for g in s["groups"].as_array().into_iter().flatten() {
        let algorithm = g["algorithm"].as_str().unwrap_or("?");
        out.push_str(&format!(
            "  {algorithm} (group {}): mining {}  pool hashrate {}  epoch {}\n",
            g["group"].as_str().unwrap_or("?"),
            g["coin"].as_str().unwrap_or("-"),
            hashrate(hashrates.get(algorithm).copied()),
            short(g.get("epoch")),
        ));
    }
    if s["groups"].as_array().is_none_or(|g| g.is_empty()) {
        out.push_str("  no assignment yet (the decision loop has not chosen a coin)\n");
    }
    let c = &s["counts"];
    out.push_str(&format!(
        "  miners online {}  workers {}  users {}\n",
        short(c.get("miners")),
        short(c.get("workers")),
        short(c.get("users"))
    ));
    let rows = s["profitability"]["rows"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if !rows.is_empty() {
        let cells: Vec<String> = rows
            .iter()
            .map(|r| {
                format!(
                    "{}{} {}",
                    r["coin"].as_str().unwrap_or("?"),
                    if r["current"] == true { "*" } else { "" },
                    r["profitability"]
                        .as_str()
                        .map(trim_decimal)
                        .unwrap_or("-".into())
                )
            })
            .collect();
        out.push_str(&format!(
            "  profitability (simulated market, BTC/day per {}): {}\n",
            rows[0]["unit"].as_str().unwrap_or("unit"),
            cells.join("  ")
        ));
    }
    out
}

/// Work per coin of one user (`earnings.per_coin[].work`, decimal strings).
fn user_work(u: &Value) -> BTreeMap<String, u128> {
    u["earnings"]["per_coin"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| Some((r["coin"].as_str()?.to_string(), as_u128(&r["work"]))))
        .collect()
}

fn user_shares(u: &Value) -> (u64, u64) {
    let workers = u["workers"].as_array().cloned().unwrap_or_default();
    let shares = workers
        .iter()
        .map(|w| w["accepted_shares"].as_u64().unwrap_or(0))
        .sum();
    let online = workers.iter().filter(|w| w["online"] == true).count() as u64;
    (shares, online)
}

/// Blocks per coin and phase (candidate, found, rejected, immature, matured, orphaned), from
/// `/api/blocks`.
fn block_phases(b: &Value) -> BTreeMap<String, BTreeMap<String, u64>> {
    let mut per: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for r in b["blocks"].as_array().into_iter().flatten() {
        let coin = r["coin"].as_str().unwrap_or("?").to_string();
        let phase = r["phase"].as_str().unwrap_or("?").to_string();
        *per.entry(coin).or_default().entry(phase).or_default() += 1;
    }
    per
}

fn render_blocks(b: &Value) -> String {
    let per = block_phases(b);
    if per.is_empty() {
        return "  blocks found by the pool: none yet\n".into();
    }
    let parts: Vec<String> = per
        .iter()
        .map(|(c, phases)| {
            let p: Vec<String> = phases.iter().map(|(k, v)| format!("{v} {k}")).collect();
            format!("{c}: {}", p.join(", "))
        })
        .collect();
    format!("  blocks found by the pool: {}\n", parts.join("; "))
}

/// A decimal string for display: four significant digits (floats only for showing).
fn trim_decimal(s: &str) -> String {
    match s.parse::<f64>() {
        Ok(x) if x != 0.0 => format!("{x:.4e}"),
        _ => s.to_string(),
    }
}

fn hashrate(v: Option<f64>) -> String {
    let Some(h) = v else {
        return "-".into();
    };
    let units = ["H/s", "kH/s", "MH/s", "GH/s", "TH/s"];
    let mut x = h;
    let mut i = 0;
    while x >= 1000.0 && i + 1 < units.len() {
        x /= 1000.0;
        i += 1;
    }
    format!("{x:.1} {}", units[i])
}

fn short(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "-".into(),
        Some(Value::String(s)) => s.clone(),
        Some(v) => {
            let t = v.to_string();
            if t.len() > 160 {
                format!("{}…", &t[..160])
            } else {
                t
            }
        }
    }
}

/// The demo's configuration: two demo coins (clones of LTC's regtest parameters), their
/// adapters and upstreams, the server with the simulated market, the proxy.
fn demo_config(dir: &Path, p: &Ports, chains: &[Chain]) -> String {
    let d = dir.display();
    let mut t = String::from(
        r#"# Generated by `defpool demo` at each start: the demo topology (regtest chains registered as
# demo coins, simulated market, local-only demo credentials). Not for real money.
network = "regtest"

[log]
level = "info"
"#,
    );
    for (ticker, name, _) in COINS {
        t.push_str(&format!(
            r#"
[[coins]]
ticker = "{ticker}"
name = "{name}"
algorithm = "scrypt"
decimals = 8
block_time_secs = 150
segwit = true
mweb = true
version_rolling_mask = 0x1fffe000
gbt_rules = ["mweb", "segwit"]
[coins.networks.regtest]
address = {{ p2pkh = [0x6f], p2sh = [0x3a, 0xc4], bech32_hrp = "rltc", mweb_hrp = "tmweb" }}
subsidy = {{ kind = "halving", initial = 5_000_000_000, interval = 150 }}
coinbase_maturity = 100
pow_limit_bits = 0x207fffff
rpc_port = 19443
"#
        ));
    }
    let tickers: Vec<String> = COINS.iter().map(|(t, _, _)| format!("\"{t}\"")).collect();
    t.push_str(&format!(
        r#"
[server]
api_listen = "127.0.0.1:{api}"
control_listen = "127.0.0.1:{control}"
database_url = "sqlite:{d}/defpool-demo.db"
admin_token = "{ADMIN_TOKEN}"
pool_fee_bps = 100
whitelist = [{wl}]

[server.rate_limit]
requests_per_sec = 1000
burst = 1000

[server.switching]
hysteresis_percent = {SWITCH_X_PERCENT:.1}
hysteresis_minutes = 0
min_dwell_minutes = 0
stale_after_secs = 30

[[server.proxies]]
id = "demo-proxy"
token = "{CONTROL_TOKEN}"
[[server.proxies]]
id = "demoa"
token = "{CONTROL_TOKEN}"
[[server.proxies]]
id = "demob"
token = "{CONTROL_TOKEN}"

# Simulated market data (seeded): labelled `simulator` everywhere it shows.
[[server.market]]
kind = "simulator"
coins = [{wl}]
seed = {MARKET_SEED}
poll_secs = {MARKET_POLL_SECS}
step_secs = {MARKET_STEP_SECS}

[proxy]
id = "demo-proxy"
outbox_path = "{d}/proxy-outbox.db"
authority_public_key = "{PROXY_PUB}"
authority_secret_key = "{PROXY_SEC}"
admin_listen = "127.0.0.1:{admin}"
admin_token = "demo-proxy-admin-token-not-secret"
upstream_stall_job_secs = 30

[[proxy.ports]]
algorithm = "scrypt"
protocol = "sv1"
listen = "127.0.0.1:{sv1}"
start_difficulty = {SHARE_DIFFICULTY}
min_difficulty = {SHARE_DIFFICULTY}
max_difficulty = {SHARE_DIFFICULTY}

[[proxy.ports]]
algorithm = "scrypt"
protocol = "sv2"
listen = "127.0.0.1:{sv2}"
start_difficulty = {SHARE_DIFFICULTY}
min_difficulty = {SHARE_DIFFICULTY}
max_difficulty = {SHARE_DIFFICULTY}
"#,
        api = p.api,
        control = p.control,
        wl = tickers.join(", "),
        admin = p.proxy_admin,
        sv1 = p.sv1,
        sv2 = p.sv2,
    ));
    for (i, c) in chains.iter().enumerate() {
        let key = c.key;
        let ticker = c.ticker;
        let port = p.adapters[i];
        t.push_str(&format!(
            r#"
[[upstreams]]
name = "demo{key}-solo"
coin = "{ticker}"
protocol = "adapter"
url = "stratum2+tcp://127.0.0.1:{port}"
authority_public_key = "{ADAPTER_PUB}"
payout_scheme = "solo"

[[adapters]]
name = "demo{key}"
coin = "{ticker}"
listen = "127.0.0.1:{port}"
authority_public_key = "{ADAPTER_PUB}"
authority_secret_key = "{ADAPTER_SEC}"
rpc_url = "http://127.0.0.1:{rpc}"
rpc_user = "{RPC_USER}"
rpc_password = "{RPC_PASSWORD}"
payout_address = "{payout}"
coinbase_tag = "{tag}"
block_target_difficulty = {BLOCK_TARGET_DIFFICULTY}
template_refresh_secs = 5
outbox_path = "{d}/adapter-{key}.db"
"#,
            rpc = c.node1.rpc_port,
            payout = c.payout_address,
            tag = coinbase_tag(ticker),
        ));
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(label: &str, port: u16) -> Node {
        Node {
            label: label.into(),
            rpc_port: port,
            p2p_port: port + 1,
            rpc: DaemonRpc::new(
                format!("http://127.0.0.1:{port}"),
                RpcAuth::UserPass {
                    user: RPC_USER.into(),
                    password: Secret::new(RPC_PASSWORD),
                },
                Duration::from_secs(1),
            ),
        }
    }

    #[test]
    fn the_generated_config_is_valid_and_labels_the_demo_coins() {
        let dir = std::env::temp_dir().join(format!("defpool-demo-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ports = Ports {
            api: 18080,
            control: 13340,
            proxy_admin: 13341,
            sv1: 13433,
            sv2: 13434,
            adapters: [13500, 13501],
        };
        let chains: Vec<Chain> = COINS
            .iter()
            .enumerate()
            .map(|(i, (ticker, name, key))| Chain {
                ticker,
                name,
                key,
                node1: node("n1", 20000 + 10 * i as u16),
                node2: node("n2", 20005 + 10 * i as u16),
                reward_address: "rltc1q3mz0ydhwr6nmsqme4wrzn6hgtcvqqlewuz97c6".into(),
                payout_address: "rltc1q3mz0ydhwr6nmsqme4wrzn6hgtcvqqlewuz97c6".into(),
                height_at_start: 120,
                next_block: Instant::now(),
                blocks_by_rest: 0,
            })
            .collect();
        let path = dir.join("demo.toml");
        std::fs::write(&path, demo_config(&dir, &ports, &chains)).unwrap();
        let valid = defpool_config::load(&path).expect("the demo's config validates");
        let _ = std::fs::remove_dir_all(&dir);
        for (ticker, name, _) in COINS {
            let coin = valid
                .registry
                .by_ticker(ticker)
                .expect("demo coin registered");
            assert_eq!(coin.name, name);
            assert!(coin.name.contains("Demo") && coin.name.contains("regtest"));
        }
        let server = valid.config.server.as_ref().unwrap();
        assert_eq!(server.whitelist.len(), 2);
        assert_eq!(server.market.len(), 1);
        assert_eq!(server.market[0].seed, Some(MARKET_SEED));
        assert_eq!(valid.config.adapters.len(), 2);
        assert_eq!(valid.config.upstreams.len(), 2);
        // Every share is a block: the share target is not easier than the block target.
        let share = defpool_core::work::Target::from_stratum_difficulty(
            SHARE_DIFFICULTY,
            defpool_core::Algorithm::Scrypt,
        )
        .unwrap();
        let block = defpool_core::work::Target::from_difficulty(BLOCK_TARGET_DIFFICULTY).unwrap();
        assert!(
            block.is_met_by(&share.to_le_bytes()),
            "share target meets the block target"
        );
    }

    #[test]
    fn chunked_bodies_are_decoded() {
        let raw = b"5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n";
        let mut out = String::new();
        ChunkedReader::new(&raw[..])
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(out, "hello, world");
    }

    #[test]
    fn balances_and_work_are_read_from_the_user_document() {
        let u = json!({
            "balances": {"DEMOA": 123, "DEMOB": 0},
            "earnings": {"per_coin": [
                {"coin": "DEMOA", "work": "340282366920938463463374607431768211455"},
                {"coin": "DEMOB", "work": "7"}
            ]},
            "workers": [{"accepted_shares": 3, "online": true}, {"accepted_shares": 4, "online": false}]
        });
        assert_eq!(user_balances(&u)["DEMOA"], 123);
        assert_eq!(user_work(&u)["DEMOA"], u128::MAX);
        assert_eq!(user_work(&u)["DEMOB"], 7);
        assert_eq!(user_shares(&u), (7, 1));
        assert!(render_balances(&u).contains("0.00000123 DEMOA"));
    }
}
