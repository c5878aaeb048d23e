//! Against a real `litecoind` (0.21, Debian's package) in regtest: templates from
//! `getblocktemplate`, coinbases paying a wallet address, blocks assembled with a scrypt nonce and
//! accepted by `submitblock` — below MWEB activation, in the BIP9 signalling window, and past
//! height 432 with a peg-in, the HogEx and the MWEB extension block, each with a segwit payment
//! in the block. Also the daemon's answers to a wrong coinbase value, a block that does not
//! decode, a wrong password and a closed port. And the daemon upstream's block follower: a found
//! block is reported mature although the session that found it has ended.
//!
//! Two nodes run, each in its own temporary directory, on loopback with free ports: `getblocktemplate`
//! refuses to work on a node without peers (`-9`), so the second node is the first one's peer
//! (and must end on the same tip). Both are killed when the test ends, however it ends.
//!
//! Skips with a notice when `litecoind` is not installed.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use defpool_adapter::{
    assemble_block, block_header, AssembledBlock, BlockTemplate, CoinbaseParts, DaemonRpc,
    HeaderFields, RpcAuth, RpcCode, RpcError, DEFAULT_TAG,
};
use defpool_core::address::parse_payout_address;
use defpool_core::block::Block;
use defpool_core::hash::{pow_hash, to_display_hex};
use defpool_core::secret::Secret;
use defpool_core::{Algorithm, CoinRegistry, CompactTarget, Network};
use serde_json::{json, Value};

const RULES: [&str; 2] = ["mweb", "segwit"];
const EXTRANONCE_SIZE: usize = 8;

/// A litecoind child process with its data directory; killed and removed on drop.
struct Node {
    child: Child,
    dir: PathBuf,
    rpc_port: u16,
    args: Vec<String>,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    defpool_loadgen::free_loopback_port().unwrap()
}

fn temp_dir(name: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let dir = std::env::temp_dir().join(format!(
        "defpool-adapter-{name}-{}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Node {
    fn start(name: &str, extra: &[String]) -> Node {
        let dir = temp_dir(name);
        let rpc_port = free_port();
        let mut args = vec![
            "-regtest".to_string(),
            "-server".into(),
            format!("-datadir={}", dir.display()),
            format!("-rpcport={rpc_port}"),
            "-rpcbind=127.0.0.1".into(),
            "-rpcallowip=127.0.0.1".into(),
            "-dnsseed=0".into(),
            "-upnp=0".into(),
            "-discover=0".into(),
            "-printtoconsole=0".into(),
            "-fallbackfee=0.0001".into(),
        ];
        args.extend_from_slice(extra);
        let child = spawn(&dir, &args);
        Node {
            child,
            dir,
            rpc_port,
            args,
        }
    }

    /// Kill the daemon and start it again on the same data directory and ports (it writes a
    /// new cookie).
    fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn(&self.dir, &self.args);
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.rpc_port)
    }

    fn cookie(&self) -> PathBuf {
        self.dir.join("regtest").join(".cookie")
    }

    /// Fail with the daemon's own words if it exited.
    fn check_alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            let log = std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default();
            panic!("litecoind exited ({status}): {log}");
        }
    }
}

fn spawn(dir: &std::path::Path, args: &[String]) -> Child {
    let log = std::fs::File::options()
        .create(true)
        .append(true)
        .open(dir.join("stderr.log"))
        .unwrap();
    Command::new(litecoind())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start litecoind")
}

/// The daemon binary: `$LITECOIND`, else Debian's binary itself (its `/usr/bin/litecoind`
/// wrapper also creates `~/.litecoin/litecoin.conf`), else `litecoind` from the `PATH`.
fn litecoind() -> PathBuf {
    if let Some(path) = std::env::var_os("LITECOIND") {
        return path.into();
    }
    let debian = PathBuf::from("/usr/lib/litecoin/litecoind");
    if debian.exists() {
        return debian;
    }
    PathBuf::from("litecoind")
}

fn installed() -> bool {
    Command::new(litecoind())
        .arg("-version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

async fn wait_ready(node: &mut Node, rpc: &DaemonRpc) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match rpc.get_blockchain_info().await {
            Ok(_) => return,
            Err(e) if e.is_retryable() && Instant::now() < deadline => {
                node.check_alive();
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("litecoind did not come up: {e}"),
        }
    }
}

async fn wait_connected(rpc: &DaemonRpc) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while rpc.get_connection_count().await.unwrap() == 0 {
        assert!(Instant::now() < deadline, "the peer never connected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn call(rpc: &DaemonRpc, method: &str, params: Value) -> Value {
    rpc.call(method, params)
        .await
        .unwrap_or_else(|e| panic!("{method}: {e}"))
}

async fn generate_to(rpc: &DaemonRpc, height: u64, address: &str) {
    let tip = rpc.get_blockchain_info().await.unwrap().blocks;
    if height > tip {
        call(rpc, "generatetoaddress", json!([height - tip, address])).await;
    }
}

/// The pool's side: build the coinbase, grind a scrypt nonce against the template's target,
/// assemble the block.
fn mine(template: &BlockTemplate, payout_script: &[u8], extranonce: [u8; 8]) -> AssembledBlock {
    let parts = CoinbaseParts::build(template, payout_script, DEFAULT_TAG, EXTRANONCE_SIZE)
        .expect("coinbase");
    let target = CompactTarget(template.bits).to_target().expect("target");
    let mut fields = HeaderFields {
        version: template.version,
        ntime: template.cur_time,
        nonce: 0,
    };
    let header = block_header(template, &parts, &extranonce, fields).expect("header");
    loop {
        let bytes = defpool_core::header::Header {
            nonce: fields.nonce,
            ..header
        }
        .serialize();
        if target.is_met_by(&pow_hash(Algorithm::Scrypt, &bytes)) {
            break;
        }
        fields.nonce += 1;
    }
    assemble_block(template, &parts, &extranonce, fields).expect("assemble")
}

struct Pool {
    rpc: DaemonRpc,
    address: String,
    script: Vec<u8>,
    rules: Vec<String>,
}

impl Pool {
    async fn template(&self) -> BlockTemplate {
        self.rpc
            .get_block_template(&self.rules, None)
            .await
            .unwrap_or_else(|e| panic!("getblocktemplate: {e}"))
    }

    /// Mine the current template through the pool's path and check the node took it: accepted,
    /// the tip, its coinbase paying our address the whole coinbase value. Returns the template
    /// and the block as the node has it (`getblock` verbosity 2).
    async fn mine_and_check(&self, extranonce: [u8; 8]) -> (BlockTemplate, AssembledBlock, Value) {
        let template = self.template().await;
        let block = mine(&template, &self.script, extranonce);
        let verdict = self.rpc.submit_block(&block.hex()).await.unwrap();
        assert_eq!(
            verdict, None,
            "block at height {} rejected",
            template.height
        );
        assert_eq!(self.rpc.get_best_block_hash().await.unwrap(), block.hash);
        let header = self.rpc.get_block_header(&block.hash).await.unwrap();
        assert_eq!(header.height, u64::from(template.height));
        assert_eq!(header.confirmations, 1);
        assert_eq!(
            header.previous_block_hash,
            Some(template.previous_block_hash)
        );
        assert_eq!(
            self.rpc
                .get_block_hash(u64::from(template.height))
                .await
                .unwrap(),
            block.hash
        );

        let shown = to_display_hex(&block.hash);
        let got = call(&self.rpc, "getblock", json!([shown, 2])).await;
        assert_eq!(got["height"], json!(template.height));
        let coinbase = &got["tx"][0];
        let payout = &coinbase["vout"][0];
        assert_eq!(
            payout["scriptPubKey"]["hex"],
            json!(hex::encode(&self.script))
        );
        let paid = payout["value"].as_f64().unwrap();
        assert_eq!((paid * 1e8).round() as u64, template.coinbase_value);
        assert!(
            payout["scriptPubKey"].to_string().contains(&self.address),
            "{payout}"
        );
        let total: f64 = coinbase["vout"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["value"].as_f64().unwrap())
            .sum();
        assert_eq!((total * 1e8).round() as u64, template.coinbase_value);
        // The node's copy of the block is ours, byte for byte.
        let raw = call(&self.rpc, "getblock", json!([shown, 0])).await;
        assert_eq!(raw.as_str().unwrap(), block.hex());
        (template, block, got)
    }
}

fn block_txids(block: &Value) -> Vec<String> {
    block["tx"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["txid"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_from_templates_are_accepted_before_and_after_mweb() {
    if !installed() {
        eprintln!("SKIPPED: litecoind is not installed (apt-get install litecoind); the regtest test did not run");
        return;
    }
    let started = Instant::now();
    let password = "defpool-regtest-password";

    // Node A: the pool's daemon (wallet, user/password). Node B: its peer (cookie auth).
    let p2p_a = free_port();
    let mut a = Node::start(
        "a",
        &[
            "-listen=1".into(),
            format!("-bind=127.0.0.1:{p2p_a}"),
            "-connect=0".into(),
            "-rpcuser=defpool".into(),
            format!("-rpcpassword={password}"),
        ],
    );
    let rpc = DaemonRpc::new(
        a.url(),
        RpcAuth::UserPass {
            user: "defpool".into(),
            password: Secret::new(password),
        },
        Duration::from_secs(10),
    );
    wait_ready(&mut a, &rpc).await;
    let rules: Vec<String> = RULES.iter().map(|r| r.to_string()).collect();

    // A node without peers refuses templates, and so does one in initial block download (a
    // fresh regtest chain: its tip, the genesis block, is old).
    let err = rpc.get_block_template(&rules, None).await.unwrap_err();
    assert_eq!(err.rpc_code(), Some(RpcCode::NotConnected), "{err:?}");
    assert!(err.is_retryable());
    let mut b = Node::start(
        "b",
        &[
            "-listen=0".into(),
            format!("-connect=127.0.0.1:{p2p_a}"),
            "-disablewallet".into(),
        ],
    );
    let rpc_b = DaemonRpc::new(
        b.url(),
        RpcAuth::Cookie(b.cookie()),
        Duration::from_secs(10),
    );
    wait_ready(&mut b, &rpc_b).await;
    wait_connected(&rpc).await;
    assert!(
        rpc.get_blockchain_info()
            .await
            .unwrap()
            .initial_block_download
    );
    let err = rpc.get_block_template(&rules, None).await.unwrap_err();
    assert_eq!(err.rpc_code(), Some(RpcCode::InInitialDownload), "{err:?}");
    assert!(err.is_retryable());

    // --- bad input: wrong password, closed port, a block that does not decode ---------------
    let wrong = DaemonRpc::new(
        a.url(),
        RpcAuth::UserPass {
            user: "defpool".into(),
            password: Secret::new("not-the-password"),
        },
        Duration::from_secs(5),
    );
    let err = wrong.get_best_block_hash().await.unwrap_err();
    assert!(matches!(err, RpcError::Auth { status: 401, .. }), "{err:?}");
    assert!(
        !err.to_string().contains("not-the-password")
            && !format!("{err:?}").contains("not-the-password")
    );
    let closed = DaemonRpc::new(
        format!("http://127.0.0.1:{}/", free_port()),
        RpcAuth::Cookie(b.cookie()),
        Duration::from_secs(5),
    )
    .with_retry(defpool_adapter::RetryPolicy::none());
    let err = closed.get_connection_count().await.unwrap_err();
    assert!(matches!(err, RpcError::Transport { .. }), "{err:?}");
    assert!(err.is_retryable());
    let err = rpc.submit_block("00").await.unwrap_err();
    assert_eq!(err.rpc_code(), Some(RpcCode::Deserialization), "{err:?}");

    // --- wallet, mature coins, peer --------------------------------------------------------
    call(&rpc, "createwallet", json!(["defpool"])).await;
    let address = call(&rpc, "getnewaddress", json!(["", "bech32"])).await;
    let address = address.as_str().unwrap().to_string();
    let mine_to = call(&rpc, "getnewaddress", json!(["", "bech32"])).await;
    let mine_to = mine_to.as_str().unwrap().to_string();
    let registry = CoinRegistry::builtin();
    let ltc = registry.by_ticker("LTC").unwrap();
    let payout = parse_payout_address(&address, ltc, Network::Regtest).unwrap();
    let info = call(&rpc, "getaddressinfo", json!([address])).await;
    assert_eq!(
        info["scriptPubKey"],
        json!(hex::encode(&payout.script_pubkey))
    );
    generate_to(&rpc, 101, &mine_to).await;
    assert!(
        !rpc.get_blockchain_info()
            .await
            .unwrap()
            .initial_block_download
    );

    let pool = Pool {
        rpc: rpc.clone(),
        address: address.clone(),
        script: payout.script_pubkey.clone(),
        rules,
    };

    // --- (a) below MWEB: a segwit payment in the mempool; first a wrong coinbase value -------
    let segwit_to = call(&rpc, "getnewaddress", json!(["", "bech32"])).await;
    let segwit_txid = call(&rpc, "sendtoaddress", json!([segwit_to, 1.5])).await;
    let mut greedy = pool.template().await;
    assert_eq!(greedy.height, 102);
    assert!(greedy.default_witness_commitment.is_some() && greedy.mweb.is_none());
    greedy.coinbase_value += 1;
    let bad = mine(&greedy, &pool.script, [9; 8]);
    let verdict = rpc.submit_block(&bad.hex()).await.unwrap();
    assert_eq!(verdict.as_deref(), Some("bad-cb-amount"));
    assert_ne!(rpc.get_best_block_hash().await.unwrap(), bad.hash);

    let (template, _, got) = pool.mine_and_check([1; 8]).await;
    assert_eq!(template.height, 102);
    assert!(block_txids(&got).contains(&segwit_txid.as_str().unwrap().to_string()));
    assert_eq!(
        got["tx"][0]["vin"][0]["txinwitness"],
        json!(["00".repeat(32)])
    );

    // Submitting the same block again: the daemon says so.
    let again = mine(&template, &pool.script, [1; 8]);
    assert_eq!(
        rpc.submit_block(&again.hex()).await.unwrap().as_deref(),
        Some("duplicate")
    );

    // --- (a') in MWEB's BIP9 signalling window: the template's version carries bit 4 ---------
    generate_to(&rpc, 199, &mine_to).await;
    let (template, block, _) = pool.mine_and_check([2; 8]).await;
    assert_eq!(template.height, 200);
    assert_ne!(
        template.version & (1 << 4),
        0,
        "version {:#x}",
        template.version
    );
    assert_eq!(block.header.version, template.version);

    // --- long poll: held until the tip moves -----------------------------------------------
    let current = pool.template().await;
    let poller = rpc.clone();
    let rules = pool.rules.clone();
    let longpoll_id = current.longpoll_id.clone();
    assert!(longpoll_id.is_some());
    let waiting = tokio::spawn(async move { poller.get_block_template(&rules, longpoll_id).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "the long poll answered before the tip moved"
    );
    generate_to(&rpc, 201, &mine_to).await;
    let next = tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .expect("long poll answered")
        .unwrap()
        .unwrap();
    assert_eq!(next.height, 202);

    // --- (b) MWEB activation at 432: a peg-in and a segwit payment --------------------------
    generate_to(&rpc, 431, &mine_to).await;
    let mweb_address = call(&rpc, "getnewaddress", json!(["", "mweb"])).await;
    assert!(parse_payout_address(mweb_address.as_str().unwrap(), ltc, Network::Regtest).is_err());
    let pegin_txid = call(&rpc, "sendtoaddress", json!([mweb_address, 3])).await;
    let segwit_txid = call(&rpc, "sendtoaddress", json!([segwit_to, 2])).await;
    let (template, block, got) = pool.mine_and_check([3; 8]).await;
    assert_eq!(template.height, 432);
    assert!(template.has_hogex() && template.mweb.is_some());
    let txids = block_txids(&got);
    assert!(txids.contains(&pegin_txid.as_str().unwrap().to_string()));
    assert!(txids.contains(&segwit_txid.as_str().unwrap().to_string()));
    assert!(got["mweb"].is_object(), "no MWEB block: {}", got["mweb"]);
    let parsed = Block::parse(&block.bytes).unwrap();
    let hogex = parsed.hogex().expect("HogEx last");
    assert_eq!(
        txids.last().unwrap(),
        &to_display_hex(&hogex.txid()),
        "the node's last transaction is our HogEx"
    );
    assert_eq!(parsed.mweb, template.mweb);

    // Past activation every block carries a HogEx, with or without new MWEB transactions.
    for (i, height) in [433u32, 434].into_iter().enumerate() {
        let (template, block, got) = pool.mine_and_check([4 + i as u8; 8]).await;
        assert_eq!(template.height, height);
        assert!(template.has_hogex() && got["mweb"].is_object());
        assert!(Block::parse(&block.bytes).unwrap().hogex().is_some());
    }

    // --- the peer agrees on the tip ---------------------------------------------------------
    let tip = rpc.get_best_block_hash().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while rpc_b.get_best_block_hash().await.unwrap() != tip {
        assert!(
            Instant::now() < deadline,
            "node B did not follow to our tip"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let on_b = rpc_b.get_block_header(&tip).await.unwrap();
    assert_eq!((on_b.height, on_b.confirmations), (434, 1));

    // --- the peer restarts: a new cookie, read again on the next call -----------------------
    let old_cookie = std::fs::read_to_string(b.cookie()).unwrap();
    b.restart();
    let fresh = DaemonRpc::new(
        b.url(),
        RpcAuth::Cookie(b.cookie()),
        Duration::from_secs(10),
    );
    wait_ready(&mut b, &fresh).await;
    assert_ne!(std::fs::read_to_string(b.cookie()).unwrap(), old_cookie);
    // `rpc_b` still holds the old cookie: its first answer is a 401, then it reads the new one.
    // (Killed, the node may have lost its last blocks; it syncs them again from A.)
    let deadline = Instant::now() + Duration::from_secs(20);
    while rpc_b.get_best_block_hash().await.unwrap() != tip {
        assert!(
            Instant::now() < deadline,
            "node B did not return to our tip"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    eprintln!(
        "regtest: blocks 102, 200, 432-434 accepted in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    drop(b);
    drop(a);
}

/// A block the adapter found is followed to maturity even after the daemon session that found
/// it has ended (the proxies gone, the session failing over): following is not tied to a session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn found_blocks_are_followed_to_maturity_after_the_session_ends() {
    use defpool_adapter::daemon::{DaemonConnector, DaemonSettings};
    use defpool_adapter::lifecycle::Tracker;
    use defpool_control::{BlockState, Event, ProxyId, Record, UpstreamKind, UpstreamRef};
    use defpool_proxy::outbox::{Outbox, OutboxOptions};
    use defpool_proxy::upstream::{
        Emitter, StallLimits, UpstreamConnector, UpstreamEvent, UpstreamSpec, UpstreamStats,
    };

    if !installed() {
        eprintln!("SKIPPED: litecoind is not installed (apt-get install litecoind); the regtest test did not run");
        return;
    }
    let password = "defpool-follow-password";
    let mut node = Node::start(
        "follow",
        &[
            "-rpcuser=defpool".into(),
            format!("-rpcpassword={password}"),
        ],
    );
    let rpc = DaemonRpc::new(
        node.url(),
        RpcAuth::UserPass {
            user: "defpool".into(),
            password: Secret::new(password),
        },
        Duration::from_secs(10),
    );
    wait_ready(&mut node, &rpc).await;
    call(&rpc, "createwallet", json!(["defpool"])).await;
    let address = call(&rpc, "getnewaddress", json!(["", "bech32"])).await;
    let address = address.as_str().unwrap().to_string();
    // "Our" block at height 102, as the tracker holds it after a submitblock.
    generate_to(&rpc, 101, &address).await;
    let ours = call(&rpc, "generatetoaddress", json!([1, address])).await;
    let ours = ours[0].as_str().unwrap().to_string();

    let dir = temp_dir("follow-adapter");
    let tracker_file = dir.join("adapter.db.blocks.json");
    let mut tracker = Tracker::new(100);
    assert!(tracker.found(&ours, 102, 5_000_000_000));
    std::fs::write(&tracker_file, serde_json::to_vec(&tracker).unwrap()).unwrap();
    let outbox = Outbox::open(
        &dir.join("adapter.db"),
        ProxyId("follow-test".into()),
        OutboxOptions {
            seal_interval: Duration::ZERO,
            ..OutboxOptions::default()
        },
    )
    .await
    .unwrap();
    let settings = DaemonSettings {
        adapter: "follow-test".into(),
        coin: "LTC".parse().unwrap(),
        rules: RULES.iter().map(|r| r.to_string()).collect(),
        payout_script: vec![0x51],
        tag: DEFAULT_TAG.into(),
        extranonce_size: EXTRANONCE_SIZE,
        block_target: None,
        refresh: Duration::from_secs(5),
        maturity: 100,
        tracker_file,
    };
    let connector = DaemonConnector::new(rpc.clone(), settings, outbox.clone());

    // A session: it reports ready (the node has no peer, so it then waits for templates), and
    // ends.
    let (events_tx, mut events) = tokio::sync::mpsc::channel(16);
    let (_commands_tx, commands) = tokio::sync::mpsc::channel(16);
    let spec = UpstreamSpec {
        upstream: UpstreamRef {
            name: "follow-test".into(),
            coin: "LTC".parse().unwrap(),
            kind: UpstreamKind::Adapter,
            address: node.url(),
            authority_public_key: None,
            username: String::new(),
            password: Secret::new(""),
        },
        algorithm: Algorithm::Scrypt,
        coin_version_mask: 0,
        min_extranonce_size: EXTRANONCE_SIZE,
        limits: StallLimits::default(),
    };
    let session = tokio::spawn(connector.run(
        spec,
        Emitter::new("follow-test".into(), 1, events_tx),
        commands,
        std::sync::Arc::new(UpstreamStats::default()),
    ));
    let ready = tokio::time::timeout(Duration::from_secs(30), events.recv())
        .await
        .expect("the session reports ready")
        .expect("an event");
    assert!(matches!(ready.2, UpstreamEvent::Ready { .. }), "{ready:?}");
    session.abort();
    let _ = session.await;

    // The rest of the network mines 100 blocks: ours has 101 confirmations, mature.
    generate_to(&rpc, 202, &address).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        while outbox.seal().await.unwrap().is_some() {}
        let matured = outbox
            .unacknowledged(1_000)
            .await
            .unwrap()
            .into_iter()
            .flat_map(|b| b.records)
            .any(|r| {
                matches!(r, Record::Event(Event::BlockStatus { block_hash, state: BlockState::Matured, .. }) if block_hash == ours)
            });
        if matured {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "block {ours} was never reported mature once its session had ended"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}
