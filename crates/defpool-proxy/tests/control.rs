//! The control channel against a test double of the server (a loopback TCP peer that speaks the
//! `defpool_control` wire and applies batches with the exactly-once sequence rule): the proxy
//! takes the server's assignment, drains its outbox in sequence, resends what was not
//! acknowledged after the connection drops, and every acknowledged share reaches the server
//! exactly once.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use defpool_config::StratumProtocol;
use defpool_control::{decode, encode, Message, ProxyId, SequenceCheck, SequenceLedger};
use defpool_core::Algorithm;
use defpool_loadgen::{MinerKind, MinersOptions, PoolProtocol};
use defpool_stratum::sv1::LineReader;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

const SERVER_TOKEN: &str = "control-test-server-token-0123";

#[derive(Default)]
struct ServerState {
    ledger: SequenceLedger,
    applied_work: u128,
    applied_batches: u64,
    duplicates: u64,
    hellos: u64,
}

/// Serves connections until the listener task is aborted; `drop_after` batches into the first
/// connection it closes it without acknowledging, to force a resend.
async fn fake_server(
    listener: TcpListener,
    state: Arc<Mutex<ServerState>>,
    assignment: String,
    drop_after: u64,
) {
    let mut first = true;
    loop {
        let (stream, _) = listener.accept().await.unwrap();
        let (read, mut write) = stream.into_split();
        let mut lines = LineReader::new(BufReader::new(read), 16 << 20);
        let hello = decode(lines.next_line().await.unwrap().unwrap()).unwrap();
        let Message::Hello {
            token, proxy_id, ..
        } = hello
        else {
            panic!("expected Hello")
        };
        assert!(token.matches(SERVER_TOKEN));
        let last = {
            let mut s = state.lock().unwrap();
            s.hellos += 1;
            s.ledger.last_applied(&proxy_id)
        };
        let welcome = Message::Welcome {
            assignments: vec![serde_json::from_str(&assignment).unwrap()],
            last_applied_sequence: last,
        };
        let mut line = encode(&welcome);
        line.push(b'\n');
        write.write_all(&line).await.unwrap();
        let mut in_conn = 0;
        while let Ok(Some(l)) = lines.next_line().await {
            let Ok(Message::Batch(batch)) = decode(l) else {
                continue;
            };
            in_conn += 1;
            if first && in_conn > drop_after {
                break; // connection lost before the acknowledgement
            }
            let ack = {
                let mut s = state.lock().unwrap();
                match s.ledger.check(&batch.proxy_id, batch.sequence) {
                    SequenceCheck::Apply => {
                        s.applied_work += batch.accepted_work();
                        s.applied_batches += 1;
                        s.ledger.mark_applied(&batch.proxy_id, batch.sequence);
                        Some(batch.sequence)
                    }
                    SequenceCheck::Duplicate => {
                        s.duplicates += 1;
                        Some(batch.sequence)
                    }
                    SequenceCheck::Gap { .. } => None,
                }
            };
            if let Some(sequence) = ack {
                let mut line = encode(&Message::Ack { sequence });
                line.push(b'\n');
                if write.write_all(&line).await.is_err() {
                    break;
                }
            }
        }
        first = false;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_drains_its_outbox_exactly_once_and_follows_the_server() {
    let dir = temp_dir("control");
    let btc = pool("BTC", PoolProtocol::Sv1).await;
    let bch = pool("BCH", PoolProtocol::Sv1).await;
    let ups = [
        Up {
            name: "btc",
            coin: "BTC",
            pool: &btc,
        },
        Up {
            name: "bch",
            coin: "BCH",
            pool: &bch,
        },
    ];
    let config = proxy_config(&dir, "control-proxy", &ups);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server_addr = listener.local_addr().unwrap();
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "id = \"control-proxy\"\n",
        &format!("id = \"control-proxy\"\nserver_url = \"tcp://{server_addr}\"\nserver_token = \"{SERVER_TOKEN}\"\n"),
    );
    std::fs::write(&config, text).unwrap();
    let state = Arc::new(Mutex::new(ServerState::default()));
    // The server assigns BCH (epoch 7); the configured default would be BTC.
    let server = tokio::spawn(fake_server(
        listener,
        state.clone(),
        assignment(7, "BCH", &ups),
        3,
    ));
    let proxy = start_proxy(&config).await;
    let mut o = MinersOptions::new(
        proxy.port(StratumProtocol::Sv1),
        MinerKind::Sv1,
        Algorithm::Sha256d,
    );
    o.count = 3;
    o.username = ADDRESS.into();
    o.password = "d=0.000001".into();
    o.duration = Duration::from_secs(6);
    o.target_shares_per_sec = Some(60.0);
    let report = defpool_loadgen::run_miners(o, None).await.unwrap();
    assert!(report.shares_accepted > 50, "{report:?}");
    assert!(
        report.accepted_work_by_coin.contains_key("BCH"),
        "the server's assignment was applied: {report:?}"
    );
    // Let the last batches seal (1 s) and drain.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let status = http(proxy.started.admin, "GET", "/status", "").await;
    proxy.stop();
    server.abort();
    let _ = btc.stop().await;
    let _ = bch.stop().await;
    let s = state.lock().unwrap();
    assert!(s.hellos >= 2, "the dropped connection was re-established");
    assert_eq!(
        s.applied_work, report.accepted_work_total,
        "every acknowledged share reached the server once"
    );
    assert!(status.contains("\"epoch\":7"), "{status}");
    let ledger_last = s.ledger.last_applied(&ProxyId("control-proxy".into()));
    assert_eq!(ledger_last, s.applied_batches, "contiguous sequences");
    let _ = std::fs::remove_dir_all(&dir);
}
