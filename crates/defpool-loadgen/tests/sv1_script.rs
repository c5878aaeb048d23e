//! One SV1 miner against a scripted pool that exercises what a switching proxy sends:
//! set_extranonce, set_difficulty applied from the next job, clean jobs, set_version_mask and
//! client.reconnect; plus a switch commanded through an admin endpoint.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use defpool_core::coin::Algorithm;
use defpool_core::share::{Job, ShareClass, Submission, SubmittedVersion};
use defpool_core::work::Target;
use defpool_loadgen::{run_miners, MinerKind, MinersOptions, SwitchPlan};
use defpool_stratum::sv1::{self, parse_line, Incoming, MinerRequest, Notify, PoolMessage};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

const D1: f64 = 1e-7;
const D2: f64 = 2e-7;

struct ScriptJob {
    job: Job,
    extranonce1: Vec<u8>,
    tag: &'static str,
}

struct Conn {
    rd: BufReader<OwnedReadHalf>,
    wr: OwnedWriteHalf,
    jobs: HashMap<String, ScriptJob>,
    /// Jobs retired by a clean job: their shares are stale.
    stale: Vec<String>,
}

#[derive(Default)]
struct Tally {
    accepted_by_tag: BTreeMap<String, u128>,
    accepted: u64,
    stale: u64,
    invalid: Vec<String>,
    rolled_bits_seen: u32,
}

fn job(id: u64, tag: &str, difficulty: f64, mask: u32) -> Job {
    let mut prefix = b"\x01\x00\x00\x00scripted coinbase ".to_vec();
    prefix.extend_from_slice(format!("/coin:{tag}/").as_bytes());
    Job {
        id,
        algorithm: Algorithm::Sha256d,
        version: 0x2000_0000,
        version_mask: mask,
        prev_hash: [id as u8; 32],
        coinbase_prefix: prefix,
        coinbase_suffix: b"\xff\xff\xff\xffsuffix".to_vec(),
        extranonce_size: 8,
        merkle_branch: vec![[7; 32]],
        nbits: 0x207f_ffff,
        ntime: 1_800_000_000,
        share_target: Target::from_stratum_difficulty(difficulty, Algorithm::Sha256d).unwrap(),
        block_target: Target::from_difficulty(1e6).unwrap(),
    }
}

impl Conn {
    async fn send(&mut self, line: String) {
        self.wr.write_all(line.as_bytes()).await.unwrap();
    }

    async fn notify(&mut self, id: &str, j: ScriptJob, clean: bool) {
        let n = Notify {
            job_id: id.into(),
            prev_hash: j.job.prev_hash,
            coinbase1: j.job.coinbase_prefix.clone(),
            coinbase2: j.job.coinbase_suffix.clone(),
            merkle_branch: j.job.merkle_branch.clone(),
            version: j.job.version,
            nbits: j.job.nbits,
            ntime: j.job.ntime,
            clean_jobs: clean,
        };
        if clean {
            self.stale.extend(self.jobs.keys().cloned());
        }
        self.jobs.insert(id.into(), j);
        self.send(PoolMessage::Notify(n).to_line()).await;
    }

    /// The next request from the miner (`None` at end of stream).
    async fn next(&mut self) -> Option<sv1::Request> {
        loop {
            let mut line = String::new();
            if self.rd.read_line(&mut line).await.ok()? == 0 {
                return None;
            }
            if let Ok(Incoming::Request(r)) = parse_line(line.trim_end().as_bytes()) {
                return Some(r);
            }
        }
    }

    /// Answer the handshake: configure, subscribe, extranonce.subscribe, authorize.
    async fn handshake(&mut self, extranonce1: &[u8]) {
        let mut authorized = false;
        while !authorized {
            let req = self.next().await.expect("handshake");
            let line = match MinerRequest::parse(&req).unwrap() {
                MinerRequest::Configure(c) => {
                    assert_eq!(c.version_rolling_mask, Some(0x1fff_e000));
                    sv1::result_line(
                        &req.id,
                        json!({"version-rolling": true, "version-rolling.mask": "1fffe000"}),
                    )
                }
                MinerRequest::Subscribe { .. } => {
                    sv1::result_line(&req.id, sv1::subscribe_result("s", extranonce1, 4))
                }
                MinerRequest::ExtranonceSubscribe => sv1::result_line(&req.id, json!(true)),
                MinerRequest::Authorize { username, password } => {
                    assert_eq!(username, "tb1qscript.w0");
                    assert_eq!(password, "d=1");
                    authorized = true;
                    sv1::result_line(&req.id, json!(true))
                }
                other => panic!("unexpected {other:?}"),
            };
            self.send(line).await;
        }
    }

    /// Judge a submit as a pool would and answer it.
    async fn judge(&mut self, req: sv1::Request, tally: &mut Tally) -> Option<String> {
        let MinerRequest::Submit(s) = MinerRequest::parse(&req).unwrap() else {
            panic!("expected a submit: {req:?}");
        };
        if self.stale.contains(&s.job_id) {
            tally.stale += 1;
            self.send(sv1::error_line(&req.id, 21, "Stale share")).await;
            return None;
        }
        let j = &self.jobs[&s.job_id];
        let mut en = j.extranonce1.clone();
        en.extend_from_slice(&s.extranonce2);
        let sub = Submission {
            extranonce: &en,
            ntime: s.ntime,
            nonce: s.nonce,
            version: s
                .version_bits
                .map_or(SubmittedVersion::Unrolled, SubmittedVersion::RolledBits),
        };
        tally.rolled_bits_seen |= s.version_bits.unwrap_or(0);
        match j.job.validate(&sub, 1_800_000_000) {
            Ok(c) if c.class != ShareClass::BelowTarget => {
                tally.accepted += 1;
                *tally.accepted_by_tag.entry(j.tag.into()).or_default() += c.work;
                self.send(sv1::result_line(&req.id, json!(true))).await;
                Some(s.job_id)
            }
            other => {
                tally.invalid.push(format!("{s:?}: {other:?}"));
                self.send(sv1::error_line(&req.id, 23, "Low difficulty share"))
                    .await;
                None
            }
        }
    }
}

async fn admin_endpoint(listener: TcpListener, switched: mpsc::Sender<()>) {
    let (s, _) = listener.accept().await.unwrap();
    let mut r = BufReader::new(s);
    let mut head = String::new();
    let mut length = 0;
    loop {
        let mut line = String::new();
        r.read_line(&mut line).await.unwrap();
        if let Some(v) = line.strip_prefix("Content-Length: ") {
            length = v.trim().parse().unwrap();
        }
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let mut body = vec![0; length];
    r.read_exact(&mut body).await.unwrap();
    assert!(head.starts_with("POST /assign "), "{head}");
    assert!(head.contains("Authorization: Bearer sekret\r\n"), "{head}");
    assert_eq!(body, br#"{"coin":"BBB"}"#);
    r.get_mut()
        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        .await
        .unwrap();
    switched.send(()).await.unwrap();
}

async fn accept(l: &TcpListener) -> Conn {
    let (s, _) = l.accept().await.unwrap();
    let (rd, wr) = s.into_split();
    Conn {
        rd: BufReader::new(rd),
        wr,
        jobs: HashMap::new(),
        stale: Vec::new(),
    }
}

async fn scripted_pool(listener: TcpListener, mut switched: mpsc::Receiver<()>) -> Tally {
    let mut tally = Tally::default();
    let en1_a = vec![1, 2, 3, 4];
    let en1_b = vec![0xa, 0xb, 0xc, 0xd];
    let mut c = accept(&listener).await;
    c.handshake(&en1_a).await;
    c.send(PoolMessage::SetDifficulty(D1).to_line()).await;
    let a = ScriptJob {
        job: job(1, "AAA", D1, 0x1fff_e000),
        extranonce1: en1_a.clone(),
        tag: "AAA",
    };
    c.notify("a", a, true).await;
    // Phase 1: mine AAA until the admin command arrives.
    while switched.try_recv().is_err() {
        let req = c.next().await.expect("connected");
        c.judge(req, &mut tally).await;
    }
    // The switch: new extranonce1 and difficulty, effective with the next (clean) job.
    c.send(
        PoolMessage::SetExtranonce {
            extranonce1: en1_b.clone(),
            extranonce2_size: 4,
        }
        .to_line(),
    )
    .await;
    c.send(PoolMessage::SetDifficulty(D2).to_line()).await;
    let b = ScriptJob {
        job: job(2, "BBB", D2, 0x1fff_e000),
        extranonce1: en1_b.clone(),
        tag: "BBB",
    };
    c.notify("b", b, true).await;
    let mut on_b = 0;
    while on_b < 20 {
        let req = c.next().await.expect("connected");
        if c.judge(req, &mut tally).await.as_deref() == Some("b") {
            on_b += 1;
        }
    }
    // A narrower version mask from the next job on.
    c.send(PoolMessage::SetVersionMask(0x0000_6000).to_line())
        .await;
    let cj = ScriptJob {
        job: job(3, "BBB", D2, 0x0000_6000),
        extranonce1: en1_b.clone(),
        tag: "BBB",
    };
    c.notify("c", cj, false).await;
    let mut on_c = 0;
    while on_c < 10 {
        let req = c.next().await.expect("connected");
        if c.judge(req, &mut tally).await.as_deref() == Some("c") {
            on_c += 1;
        }
    }
    // Reconnect: the miner closes and comes back.
    c.send(
        PoolMessage::Reconnect {
            host: None,
            port: None,
            wait_secs: 0,
        }
        .to_line(),
    )
    .await;
    while let Some(req) = c.next().await {
        c.judge(req, &mut tally).await;
    }
    let mut c = accept(&listener).await;
    let en1_c = vec![9, 9, 9, 9];
    c.handshake(&en1_c).await;
    c.send(PoolMessage::SetDifficulty(D1).to_line()).await;
    let d = ScriptJob {
        job: job(4, "BBB", D1, 0x1fff_e000),
        extranonce1: en1_c,
        tag: "BBB",
    };
    c.notify("d", d, true).await;
    while let Some(req) = c.next().await {
        c.judge(req, &mut tally).await;
    }
    tally
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_extranonce_difficulty_mask_reconnect_and_a_switch() {
    let pool = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let pool_addr = pool.local_addr().unwrap();
    let admin_addr = admin.local_addr().unwrap();
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(admin_endpoint(admin, tx));
    let script = tokio::spawn(scripted_pool(pool, rx));

    let mut o = MinersOptions::new(
        pool_addr,
        MinerKind::Sv1ExtranonceSubscribe,
        Algorithm::Sha256d,
    );
    o.username = "tb1qscript".into();
    o.password = "d=1".into();
    o.version_rolling = true;
    o.duration = Duration::from_secs(4);
    let plan = SwitchPlan {
        at: Duration::from_millis(600),
        admin_url: format!("http://{admin_addr}"),
        token: "sekret".into(),
        assignment_json: r#"{"coin":"BBB"}"#.into(),
    };
    let m = run_miners(o, Some(plan)).await.unwrap();
    let tally = tokio::time::timeout(Duration::from_secs(10), script)
        .await
        .unwrap()
        .unwrap();

    assert!(tally.invalid.is_empty(), "{:#?}", tally.invalid);
    assert_eq!(m.reconnects, 1, "{m:#?}");
    assert_eq!(m.disconnects, 0, "{m:#?}");
    assert_eq!(m.shares_accepted, tally.accepted);
    assert_eq!(m.accepted_work_by_coin, tally.accepted_by_tag, "{m:#?}");
    assert!(m.accepted_work_by_coin.contains_key("AAA"));
    assert!(m.accepted_work_by_coin["BBB"] > 0);
    assert_eq!(m.shares_rejected, tally.stale);
    assert_ne!(tally.rolled_bits_seen & 0x1fff_e000, 0);
    let sw = m.switch.expect("switch report");
    assert_eq!(sw.http_status, 200, "{sw:?}");
    assert_eq!(sw.error, None);
    assert_eq!(sw.miners_switched, 1);
    assert!(sw.command_to_first_job_ms_max > 0.0 && sw.command_to_first_job_ms_max < 2000.0);
    assert_eq!(sw.stale_in_window, tally.stale);
    assert!(sw.shares_in_window >= 30, "{sw:?}");
}
