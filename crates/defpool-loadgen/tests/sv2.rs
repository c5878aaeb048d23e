//! SV2 miners (extended and standard channels) against the SV2 test pool on loopback.

use std::time::Duration;

use defpool_core::coin::Algorithm;
use defpool_core::work::Target;
use defpool_loadgen::{
    run_miners, MinerKind, MinersOptions, MinersReport, PoolOptions, PoolProtocol, PoolReport,
    TestPool,
};
use defpool_stratum::sv2::{self, AuthorityKeypair, FrameLimits, Message, Protocol};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

struct Running {
    addr: std::net::SocketAddr,
    key: String,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<PoolReport>,
}

async fn pool(opts: PoolOptions) -> Running {
    let pool = TestPool::bind(opts).await.unwrap();
    let addr = pool.local_addr();
    let key = pool.authority_public_key().expect("an SV2 pool has a key");
    let (stop, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        pool.run(async {
            let _ = rx.await;
        })
        .await
        .unwrap()
    });
    Running {
        addr,
        key,
        stop,
        task,
    }
}

fn pool_opts(tag: &str, algorithm: Algorithm) -> PoolOptions {
    let mut o = PoolOptions::new(
        "127.0.0.1:0".parse().unwrap(),
        PoolProtocol::Sv2,
        tag,
        algorithm,
    );
    o.job_interval = Duration::from_millis(300);
    o
}

fn miners(p: &Running, kind: MinerKind) -> MinersOptions {
    let mut o = MinersOptions::new(p.addr, kind, Algorithm::Sha256d);
    o.count = 4;
    o.username = "tb1qloadgen".into();
    o.duration = Duration::from_secs(2);
    o.max_shares = Some(400);
    o.authority_public_key = Some(p.key.clone());
    o
}

async fn finish(p: Running) -> PoolReport {
    p.stop.send(()).unwrap();
    p.task.await.unwrap()
}

fn assert_agree(m: &MinersReport, p: &PoolReport) {
    assert!(m.shares_accepted > 0, "no share accepted: {m:#?}");
    assert_eq!(m.connected, m.miners, "{m:#?}");
    assert_eq!(m.disconnects, 0, "{m:#?}");
    assert_eq!(m.connect_failures, 0, "{m:#?}");
    assert_eq!(m.shares_unanswered, 0, "{m:#?}");
    assert_eq!(m.shares_accepted, p.shares_accepted, "{m:#?}\n{p:#?}");
    assert_eq!(m.accepted_work_total, p.accepted_work);
    for reason in m.rejects_by_reason.keys() {
        assert!(
            reason == "stale-share" || reason == "invalid-job-id",
            "{m:#?}"
        );
    }
    assert!(m.latency_us_p50 > 0 && m.latency_us_p99 <= m.latency_us_max);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_channels_agree_per_coin() {
    let p = pool(pool_opts("LTC", Algorithm::Sha256d)).await;
    let mut o = miners(&p, MinerKind::Sv2Extended);
    o.version_rolling = true;
    let m = run_miners(o, None).await.unwrap();
    let r = finish(p).await;
    assert_agree(&m, &r);
    assert_eq!(m.accepted_work_by_coin, r.accepted_work_by_coin);
    assert!(!r
        .shares_rejected_by_reason
        .contains_key("invalid-version-bits"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standard_channels_agree_in_total() {
    let p = pool(pool_opts("BTC", Algorithm::Sha256d)).await;
    let m = run_miners(miners(&p, MinerKind::Sv2Standard), None)
        .await
        .unwrap();
    let r = finish(p).await;
    assert_agree(&m, &r);
    // Standard channels never see the coinbase: their work is untagged.
    assert_eq!(
        m.accepted_work_by_coin.keys().collect::<Vec<_>>(),
        vec!["untagged"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrypt_extended_channels_agree() {
    let p = pool(pool_opts("DOGE", Algorithm::Scrypt)).await;
    let mut o = miners(&p, MinerKind::Sv2Extended);
    o.algorithm = Algorithm::Scrypt;
    o.count = 2;
    o.max_shares = Some(30);
    let m = run_miners(o, None).await.unwrap();
    let r = finish(p).await;
    assert_agree(&m, &r);
    assert_eq!(m.accepted_work_by_coin, r.accepted_work_by_coin);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_authority_key_is_refused() {
    let p = pool(pool_opts("LTC", Algorithm::Sha256d)).await;
    let mut o = miners(&p, MinerKind::Sv2Extended);
    o.count = 1;
    o.duration = Duration::from_millis(500);
    o.authority_public_key = Some(AuthorityKeypair::generate().public_key().to_base58());
    let m = run_miners(o, None).await.unwrap();
    finish(p).await;
    assert_eq!(m.connected, 0);
    assert!(m.connect_failures >= 1, "{m:#?}");
    assert_eq!(m.shares_submitted, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_submissions_earn_errors_not_disconnects() {
    let p = pool(pool_opts("LTC", Algorithm::Sha256d)).await;
    let key = sv2::AuthorityPublicKey::from_base58(&p.key).unwrap();
    let stream = TcpStream::connect(p.addr).await.unwrap();
    let conn = sv2::connect(stream, Some(&key), FrameLimits::default())
        .await
        .unwrap();
    let (mut rd, mut wr) = conn.into_split();
    wr.send(&Message::SetupConnection {
        protocol: Protocol::Mining,
        min_version: 2,
        max_version: 2,
        flags: 0,
        endpoint_host: "127.0.0.1".into(),
        endpoint_port: p.addr.port(),
        vendor: "test".into(),
        hardware_version: String::new(),
        firmware: String::new(),
        device_id: String::new(),
    })
    .await
    .unwrap();
    assert!(matches!(
        rd.recv().await.unwrap(),
        Message::SetupConnectionSuccess { .. }
    ));
    // Too large a minimum extranonce: refused with the spec's code.
    wr.send(&Message::OpenExtendedMiningChannel {
        request_id: 7,
        user_identity: "a.b".into(),
        nominal_hash_rate: 1.0,
        max_target: Target::MAX.to_le_bytes(),
        min_extranonce_size: 30,
    })
    .await
    .unwrap();
    match rd.recv().await.unwrap() {
        Message::OpenMiningChannelError {
            request_id,
            error_code,
        } => {
            assert_eq!(request_id, 7);
            assert_eq!(error_code, "min-extranonce-size-too-large");
        }
        other => panic!("{other:?}"),
    }
    wr.send(&Message::OpenExtendedMiningChannel {
        request_id: 8,
        user_identity: "a.b".into(),
        nominal_hash_rate: 1.0,
        max_target: Target::MAX.to_le_bytes(),
        min_extranonce_size: 4,
    })
    .await
    .unwrap();
    let (channel_id, size) = match rd.recv().await.unwrap() {
        Message::OpenExtendedMiningChannelSuccess {
            channel_id,
            extranonce_size,
            extranonce_prefix,
            ..
        } => {
            assert_eq!(extranonce_prefix.len(), 4);
            (channel_id, extranonce_size as usize)
        }
        other => panic!("{other:?}"),
    };
    // SetTarget, the job and its prev hash.
    let mut job_id = None;
    while job_id.is_none() {
        if let Message::SetNewPrevHash { job_id: j, .. } = rd.recv().await.unwrap() {
            job_id = Some(j);
        }
    }
    let job_id = job_id.unwrap();
    let submit =
        |channel_id, sequence_number, job_id, extranonce: Vec<u8>| Message::SubmitSharesExtended {
            channel_id,
            sequence_number,
            job_id,
            nonce: 1,
            ntime: 1,
            version: 0x2000_0000,
            extranonce,
        };
    for (msg, code) in [
        (submit(99, 1, job_id, vec![0; size]), "invalid-channel-id"),
        (submit(channel_id, 2, 4242, vec![0; size]), "invalid-job-id"),
        (
            submit(channel_id, 3, job_id, vec![0; 1]),
            "bad-extranonce-size",
        ),
        (
            submit(channel_id, 4, job_id, vec![0; size]),
            "ntime-out-of-range",
        ),
    ] {
        let seq = match &msg {
            Message::SubmitSharesExtended {
                sequence_number, ..
            } => *sequence_number,
            _ => unreachable!(),
        };
        wr.send(&msg).await.unwrap();
        loop {
            match tokio::time::timeout(Duration::from_secs(5), rd.recv())
                .await
                .unwrap()
                .unwrap()
            {
                Message::SubmitSharesError {
                    sequence_number,
                    error_code,
                    ..
                } => {
                    assert_eq!(sequence_number, seq);
                    assert_eq!(error_code, code);
                    break;
                }
                Message::NewExtendedMiningJob { .. } | Message::SetNewPrevHash { .. } => {}
                other => panic!("{other:?}"),
            }
        }
    }
    let r = finish(p).await;
    assert_eq!(r.shares_rejected, 4);
    assert_eq!(r.shares_accepted, 0);
}

/// `--handshake-only` (the handshake benchmark): every miner completes the Noise handshake and
/// holds its connection, and sends nothing after it: no channel, no share reaches the pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_only_holds_connections_and_sends_nothing() {
    let p = pool(pool_opts("LTC", Algorithm::Sha256d)).await;
    let mut o = miners(&p, MinerKind::Sv2Extended);
    o.handshake_only = true;
    o.duration = Duration::from_millis(800);
    let m = run_miners(o, None).await.unwrap();
    let r = finish(p).await;
    assert_eq!(m.connected, m.miners, "{m:#?}");
    assert_eq!((m.connect_failures, m.disconnects), (0, 0), "{m:#?}");
    assert_eq!(m.shares_submitted, 0, "{m:#?}");
    assert_eq!(r.shares_accepted, 0, "{r:#?}");
}
