//! SV2 transport and codec: loopback handshakes, every message both ways, authority checks,
//! hostile input, frame limits, and wire compatibility with SRI's own codec.

use std::time::{Duration, Instant};

use defpool_stratum::sv2::{
    self, accept, accept_with_timeout, connect, decode_frame, decode_frame_payload, encode_frame,
    encode_frame_payload, error_code, setup_flags, AuthorityKeypair, AuthorityPublicKey,
    EncodedFrame, FrameLimits, KeyError, Message, Protocol, Sv2Error,
};
use proptest::prelude::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

const PUB: &str = "9aubsUESvSxGovf93cGCKXsAQwoPGz8JAqLVH36e9wcGa1rPWQB";
const SEC: &str = "2Xifp7Jz6CPcphddKSKA9Pqga5mfk82powffv1mRkX1ijdETes";
const OTHER_PUB: &str = "9biV8JrgZHbxDZnvN8ysxQ6qJHiFd6ZNFGb73FXB91epVFMbeAs";
const VALIDITY: Duration = Duration::from_secs(3600);

fn keys() -> AuthorityKeypair {
    AuthorityKeypair::from_base58(PUB, SEC).expect("example pair")
}

fn setup_connection() -> Message {
    Message::SetupConnection {
        protocol: Protocol::Mining,
        min_version: 2,
        max_version: 2,
        flags: setup_flags::REQUIRES_VERSION_ROLLING,
        endpoint_host: "pool.example".into(),
        endpoint_port: 3336,
        vendor: "defpool-test".into(),
        hardware_version: "hw-1".into(),
        firmware: "fw-1".into(),
        device_id: "rig-01".into(),
    }
}

fn h(seed: u8) -> [u8; 32] {
    std::array::from_fn(|i| seed.wrapping_add(i as u8))
}

/// One of every variant, with edge values (empty and maximal fields, both `min_ntime` states).
fn all_messages() -> Vec<Message> {
    vec![
        setup_connection(),
        Message::SetupConnection {
            protocol: Protocol::TemplateDistribution,
            min_version: 0,
            max_version: u16::MAX,
            flags: u32::MAX,
            endpoint_host: String::new(),
            endpoint_port: 0,
            vendor: "ü".repeat(127),
            hardware_version: "x".repeat(255),
            firmware: String::new(),
            device_id: String::new(),
        },
        Message::SetupConnectionSuccess {
            used_version: 2,
            flags: setup_flags::SERVER_REQUIRES_EXTENDED_CHANNELS,
        },
        Message::SetupConnectionError {
            flags: setup_flags::REQUIRES_WORK_SELECTION,
            error_code: error_code::UNSUPPORTED_FEATURE_FLAGS.into(),
        },
        Message::ChannelEndpointChanged { channel_id: 9 },
        Message::Reconnect {
            new_host: "other.example".into(),
            new_port: 34255,
        },
        Message::OpenStandardMiningChannel {
            request_id: 1,
            user_identity: "alice.rig1".into(),
            nominal_hash_rate: 1.4e14,
            max_target: [0xff; 32],
        },
        Message::OpenStandardMiningChannelSuccess {
            request_id: 1,
            channel_id: 7,
            target: h(1),
            extranonce_prefix: vec![0xab; 32],
            group_channel_id: 3,
        },
        Message::OpenExtendedMiningChannel {
            request_id: 2,
            user_identity: String::new(),
            nominal_hash_rate: 0.0,
            max_target: h(2),
            min_extranonce_size: 8,
        },
        Message::OpenExtendedMiningChannelSuccess {
            request_id: 2,
            channel_id: 8,
            target: h(3),
            extranonce_size: 8,
            extranonce_prefix: vec![],
            group_channel_id: 0,
        },
        Message::OpenMiningChannelError {
            request_id: 3,
            error_code: error_code::UNKNOWN_USER.into(),
        },
        Message::SetGroupChannel {
            group_channel_id: 3,
            channel_ids: (0..1000).collect(),
        },
        Message::SetGroupChannel {
            group_channel_id: 4,
            channel_ids: vec![],
        },
        Message::UpdateChannel {
            channel_id: 7,
            nominal_hash_rate: f32::MAX,
            maximum_target: h(4),
        },
        Message::UpdateChannelError {
            channel_id: 7,
            error_code: error_code::MAX_TARGET_OUT_OF_RANGE.into(),
        },
        Message::CloseChannel {
            channel_id: 7,
            reason_code: "switching".into(),
        },
        Message::SetExtranoncePrefix {
            channel_id: 8,
            extranonce_prefix: vec![1, 2, 3, 4],
        },
        Message::SetTarget {
            channel_id: 8,
            maximum_target: h(5),
        },
        Message::NewMiningJob {
            channel_id: 7,
            job_id: 100,
            min_ntime: None,
            version: 0x2000_0000,
            merkle_root: h(6),
        },
        Message::NewMiningJob {
            channel_id: 7,
            job_id: 101,
            min_ntime: Some(1_700_000_000),
            version: 0x2000_0000,
            merkle_root: h(7),
        },
        Message::NewExtendedMiningJob {
            channel_id: 8,
            job_id: 200,
            min_ntime: Some(1_700_000_001),
            version: 0x2000_0000,
            version_rolling_allowed: true,
            merkle_path: (0..12).map(h).collect(),
            coinbase_tx_prefix: vec![0x01; 42],
            coinbase_tx_suffix: vec![0x02; 80],
        },
        // Larger than one Noise chunk (65519 plaintext bytes): exercises multi-chunk frames.
        Message::NewExtendedMiningJob {
            channel_id: 8,
            job_id: 201,
            min_ntime: None,
            version: 0x2000_0000,
            version_rolling_allowed: false,
            merkle_path: (0..=254).map(h).collect(),
            coinbase_tx_prefix: (0..65535u32).map(|i| i as u8).collect(),
            coinbase_tx_suffix: vec![0x03; 65535],
        },
        Message::SetNewPrevHash {
            channel_id: 8,
            job_id: 201,
            prev_hash: h(8),
            min_ntime: 1_700_000_002,
            nbits: 0x1703_4219,
        },
        Message::SubmitSharesStandard {
            channel_id: 7,
            sequence_number: 1,
            job_id: 101,
            nonce: 0xdead_beef,
            ntime: 1_700_000_003,
            version: 0x2000_0000,
        },
        Message::SubmitSharesExtended {
            channel_id: 8,
            sequence_number: 2,
            job_id: 200,
            nonce: 1,
            ntime: 1_700_000_004,
            version: 0x2fff_e000,
            extranonce: vec![9; 8],
        },
        Message::SubmitSharesSuccess {
            channel_id: 8,
            last_sequence_number: 2,
            new_submits_accepted_count: 2,
            new_shares_sum: u64::MAX,
        },
        Message::SubmitSharesError {
            channel_id: 8,
            sequence_number: 3,
            error_code: error_code::STALE_SHARE.into(),
        },
    ]
}

async fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
    (client.unwrap(), server.unwrap().0)
}

#[test]
fn every_variant_round_trips_through_the_pure_codec() {
    for m in all_messages() {
        let frame = encode_frame(&m).unwrap();
        assert_eq!(decode_frame(&frame).unwrap(), m);
        let (t, ext, payload) = encode_frame_payload(&m).unwrap();
        assert_eq!(t, m.msg_type());
        assert_eq!(decode_frame_payload(t, ext, &payload).unwrap(), m);
    }
}

#[test]
fn channel_messages_carry_the_channel_bit() {
    let (_, ext, _) = encode_frame_payload(&all_messages()[23]).unwrap(); // SubmitSharesStandard
    assert_eq!(ext, sv2::CHANNEL_MSG_BIT);
    let (_, ext, _) = encode_frame_payload(&setup_connection()).unwrap();
    assert_eq!(ext, 0);
}

#[tokio::test]
async fn loopback_handshake_then_every_message_both_ways() {
    let (client, server) = pair().await;
    let keys = keys();
    let public = keys.public_key();
    let messages = all_messages();
    let expected = messages.clone();
    let server = tokio::spawn(async move {
        let conn = accept(server, &keys, VALIDITY, FrameLimits::default())
            .await
            .expect("server handshake");
        let (mut rx, mut tx) = conn.into_split();
        // Reader and writer in different tasks.
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            for _ in 0..expected.len() {
                got.push(rx.recv().await.expect("server recv"));
            }
            assert_eq!(got, expected);
            rx
        });
        for m in all_messages() {
            tx.send(&m).await.expect("server send");
        }
        let mut rx = reader.await.unwrap();
        // The client closes after reading everything: a clean close between frames.
        assert!(matches!(rx.recv().await, Err(Sv2Error::Closed)));
    });
    let conn = connect(client, Some(&public), FrameLimits::default())
        .await
        .expect("client handshake");
    let (mut rx, mut tx) = conn.into_split();
    for m in &messages {
        tx.send(m).await.expect("client send");
    }
    for m in &messages {
        assert_eq!(&rx.recv().await.expect("client recv"), m);
    }
    drop((rx, tx));
    server.await.unwrap();
}

#[tokio::test]
async fn encoded_frames_fan_out_to_several_connections() {
    let keys = keys();
    let job = EncodedFrame::new(&all_messages()[20]).unwrap();
    for _ in 0..3 {
        let (client, server) = pair().await;
        let keys = keys.clone();
        let job = job.clone();
        let server = tokio::spawn(async move {
            let mut conn = accept(server, &keys, VALIDITY, FrameLimits::default())
                .await
                .unwrap();
            assert_eq!(conn.recv().await.unwrap(), setup_connection());
            let (_, mut tx) = conn.into_split();
            tx.send_encoded(&job).await.unwrap();
        });
        let mut conn = connect(client, None, FrameLimits::default()).await.unwrap();
        conn.send(&setup_connection()).await.unwrap();
        assert_eq!(conn.recv().await.unwrap(), all_messages()[20]);
        server.await.unwrap();
    }
}

/// A channel frame encoded once goes to several channels, queued with other frames and written
/// in one flush; each arrives with its own channel id, in order. A frame without a channel id
/// is refused for `queue_for_channel`.
#[tokio::test]
async fn queued_channel_frames_carry_each_channel_id() {
    let keys = keys();
    let job = Message::NewExtendedMiningJob {
        channel_id: 0,
        job_id: 0x2a00,
        min_ntime: None,
        version: 0x2000_0000,
        version_rolling_allowed: true,
        merkle_path: vec![[7; 32]; 3],
        coinbase_tx_prefix: vec![1; 50],
        coinbase_tx_suffix: vec![2; 90],
    };
    let frame = EncodedFrame::new(&job).unwrap();
    assert!(frame.is_channel_message());
    let setup = EncodedFrame::new(&setup_connection()).unwrap();
    assert!(!setup.is_channel_message());
    let for_channel = |id: u32| match job.clone() {
        Message::NewExtendedMiningJob {
            job_id,
            min_ntime,
            version,
            version_rolling_allowed,
            merkle_path,
            coinbase_tx_prefix,
            coinbase_tx_suffix,
            ..
        } => Message::NewExtendedMiningJob {
            channel_id: id,
            job_id,
            min_ntime,
            version,
            version_rolling_allowed,
            merkle_path,
            coinbase_tx_prefix,
            coinbase_tx_suffix,
        },
        _ => unreachable!(),
    };
    let (client, server) = pair().await;
    let server = tokio::spawn(async move {
        let mut conn = accept(server, &keys, VALIDITY, FrameLimits::default())
            .await
            .unwrap();
        assert_eq!(conn.recv().await.unwrap(), setup_connection());
        let (_, mut tx) = conn.into_split();
        assert!(tx.queue_for_channel(&setup, 3).is_err());
        tx.queue_for_channel(&frame, 3).unwrap();
        tx.queue(&all_messages()[0]).unwrap();
        tx.queue_for_channel(&frame, 0x0102_0304).unwrap();
        tx.flush().await.unwrap();
    });
    let mut conn = connect(client, None, FrameLimits::default()).await.unwrap();
    conn.send(&setup_connection()).await.unwrap();
    assert_eq!(conn.recv().await.unwrap(), for_channel(3));
    assert_eq!(conn.recv().await.unwrap(), all_messages()[0]);
    assert_eq!(conn.recv().await.unwrap(), for_channel(0x0102_0304));
    server.await.unwrap();
}

#[tokio::test]
async fn wrong_authority_is_refused_and_none_accepts_any() {
    let server_keys = AuthorityKeypair::generate();
    let other = AuthorityPublicKey::from_base58(OTHER_PUB).unwrap();

    let (client, server) = pair().await;
    let k = server_keys.clone();
    let server = tokio::spawn(async move {
        // The client aborts after the handshake: the server sees the close, not a message.
        accept(server, &k, VALIDITY, FrameLimits::default()).await
    });
    let err = connect(client, Some(&other), FrameLimits::default())
        .await
        .expect_err("a server signed by another authority");
    assert!(
        matches!(err, Sv2Error::AuthorityMismatch { expected } if expected == other),
        "{err:?}"
    );
    assert!(err.is_protocol_violation());
    assert!(!server.await.unwrap().unwrap_err().is_protocol_violation());

    let (client, server) = pair().await;
    let k = server_keys.clone();
    let server = tokio::spawn(async move {
        let mut conn = accept(server, &k, VALIDITY, FrameLimits::default())
            .await
            .unwrap();
        assert_eq!(conn.recv().await.unwrap(), setup_connection());
    });
    let mut conn = connect(client, None, FrameLimits::default())
        .await
        .expect("unauthenticated connect");
    conn.send(&setup_connection()).await.unwrap();
    server.await.unwrap();

    // And the right key works.
    let (client, server) = pair().await;
    let k = server_keys.clone();
    let server = tokio::spawn(async move {
        let mut conn = accept(server, &k, VALIDITY, FrameLimits::default())
            .await
            .unwrap();
        conn.recv().await.unwrap();
    });
    let mut conn = connect(
        client,
        Some(&server_keys.public_key()),
        FrameLimits::default(),
    )
    .await
    .expect("authenticated connect");
    conn.send(&setup_connection()).await.unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn an_expired_certificate_is_not_an_authority_mismatch() {
    use stratum_core::noise_sv2::Responder;
    let (client, mut server) = pair().await;
    let keys = keys();
    let public = keys.public_key();
    let secret = bs58::decode(SEC).with_check(None).into_vec().unwrap();
    let keypair =
        secp256k1::Keypair::from_seckey_slice(&secp256k1::Secp256k1::new(), &secret).unwrap();
    // An SRI responder whose clock is two hours behind signs a one-minute certificate.
    let server = tokio::spawn(async move {
        let mut hello = [0u8; 64];
        server.read_exact(&mut hello).await.unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as u32;
        let (reply, _) = Responder::new(keypair, 60)
            .step_1_with_now_rng(hello, now - 7200, &mut secp256k1::rand::thread_rng())
            .unwrap();
        server.write_all(&reply).await.unwrap();
        server
    });
    let err = connect(client, Some(&public), FrameLimits::default())
        .await
        .expect_err("expired certificate");
    assert!(
        matches!(err, Sv2Error::CertificateExpired { .. }),
        "{err:?}"
    );
    assert!(err.is_protocol_violation());
    drop(server.await.unwrap());
}

async fn accept_garbage(garbage: &[u8], timeout: Duration) -> (Sv2Error, Duration) {
    let (mut client, server) = pair().await;
    client.write_all(garbage).await.unwrap();
    let started = Instant::now();
    let err = accept_with_timeout(server, &keys(), VALIDITY, FrameLimits::default(), timeout)
        .await
        .expect_err("garbage must not pass as a handshake");
    // Keep the client open until the server gave up: the server must not rely on EOF.
    drop(client);
    (err, started.elapsed())
}

#[tokio::test]
async fn garbage_instead_of_a_handshake_is_a_violation_without_panic() {
    // Enough bytes for the 64-byte ElligatorSwift key and a 22-byte encrypted header: the
    // header's MAC fails.
    let garbage: Vec<u8> = (0..400u32).map(|i| (i * 7 + 3) as u8).collect();
    let (err, took) = accept_garbage(&garbage, Duration::from_secs(5)).await;
    assert!(matches!(err, Sv2Error::Decrypt), "{err:?}");
    assert!(err.is_protocol_violation());
    assert!(took < Duration::from_secs(2), "took {took:?}");

    // An SV1 miner on an SV2 port is recognised at once.
    let sv1 = b"{\"id\":1,\"method\":\"mining.subscribe\",\"params\":[\"cgminer/4.10\"]}\n";
    let (err, took) = accept_garbage(sv1, Duration::from_secs(5)).await;
    assert!(matches!(err, Sv2Error::Handshake(_)), "{err:?}");
    assert!(err.is_protocol_violation());
    assert!(took < Duration::from_secs(2), "took {took:?}");

    // Too few bytes to be anything: the handshake times out, also a violation.
    let (err, took) = accept_garbage(b"hello", Duration::from_millis(300)).await;
    assert!(matches!(err, Sv2Error::HandshakeTimeout(_)), "{err:?}");
    assert!(err.is_protocol_violation());
    assert!(took < Duration::from_secs(2), "took {took:?}");
}

#[tokio::test]
async fn a_client_facing_a_garbage_server_gets_a_violation() {
    let (client, mut server) = pair().await;
    let garbage = vec![0x5a_u8; 234];
    let server = tokio::spawn(async move {
        let mut hello = [0u8; 64];
        server.read_exact(&mut hello).await.unwrap();
        server.write_all(&garbage).await.unwrap();
        server
    });
    let err = connect(client, Some(&keys().public_key()), FrameLimits::default())
        .await
        .expect_err("garbage handshake reply");
    assert!(matches!(err, Sv2Error::Handshake(_)), "{err:?}");
    assert!(err.is_protocol_violation());
    drop(server.await.unwrap());
}

#[tokio::test]
async fn a_frame_over_the_limit_is_refused_before_its_payload() {
    use stratum_core::noise_sv2::{Initiator, ELLSWIFT_ENCODING_SIZE};
    // A hand-driven SRI initiator that sends only an encrypted header declaring 16 MB - 1.
    let (mut client, server) = pair().await;
    let keys = keys();
    let public = keys.public_key();
    let limits = FrameLimits {
        max_frame_bytes: 1024,
    };
    let server =
        tokio::spawn(async move { accept(server, &keys, VALIDITY, limits).await.map(|_| ()) });
    let mut initiator = Initiator::from_raw_k(*public.as_bytes()).unwrap();
    let hello = initiator.step_0().unwrap();
    assert_eq!(hello.len(), ELLSWIFT_ENCODING_SIZE);
    client.write_all(&hello).await.unwrap();
    let mut reply = [0u8; 234];
    client.read_exact(&mut reply).await.unwrap();
    let engine = initiator.step_2(reply).unwrap();
    let (mut enc, _dec) = engine.into_split();
    let mut header = vec![0x00, 0x00, 0x00, 0xff, 0xff, 0xff];
    enc.encrypt(&mut header).unwrap();
    client.write_all(&header).await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(2), server)
        .await
        .expect("refused without waiting for the payload")
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(
            err,
            Sv2Error::FrameTooLarge {
                declared: 0xff_ffff,
                limit: 1024
            }
        ),
        "{err:?}"
    );
    assert!(err.is_protocol_violation());
    drop(client);
}

#[tokio::test]
async fn a_large_message_over_a_small_limit_is_refused_on_recv() {
    let (client, server) = pair().await;
    let keys = keys();
    let public = keys.public_key();
    let server = tokio::spawn(async move {
        let limits = FrameLimits {
            max_frame_bytes: 4096,
        };
        let mut conn = accept(server, &keys, VALIDITY, limits).await.unwrap();
        assert_eq!(conn.recv().await.unwrap(), setup_connection());
        conn.recv().await.unwrap_err()
    });
    let mut conn = connect(client, Some(&public), FrameLimits::default())
        .await
        .unwrap();
    conn.send(&setup_connection()).await.unwrap();
    conn.send(&all_messages()[21]).await.unwrap();
    let err = server.await.unwrap();
    assert!(
        matches!(err, Sv2Error::FrameTooLarge { limit: 4096, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn recv_is_cancel_safe() {
    // A relay forwards client → server in 700-byte pieces with 1 ms pauses (and server →
    // client as is), so the server's `recv` waits in the middle of frames and gets cancelled.
    let (client, mut relay_c) = pair().await;
    let (mut relay_s, server) = pair().await;
    tokio::spawn(async move {
        let (mut c_rd, mut c_wr) = relay_c.split();
        let (mut s_rd, mut s_wr) = relay_s.split();
        let up = async {
            let mut buf = [0u8; 4096];
            loop {
                let n = match c_rd.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                for piece in buf[..n].chunks(700) {
                    if s_wr.write_all(piece).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            let _ = s_wr.shutdown().await;
        };
        let down = async {
            let _ = tokio::io::copy(&mut s_rd, &mut c_wr).await;
        };
        tokio::join!(up, down);
    });
    let keys = keys();
    let public = keys.public_key();
    let server = tokio::spawn(async move {
        let mut conn = accept(server, &keys, VALIDITY, FrameLimits::default())
            .await
            .unwrap();
        assert_eq!(conn.recv().await.unwrap(), setup_connection());
        let mut got = Vec::new();
        let mut cancelled = 0u32;
        // Cancel recv over and over while frames trickle in.
        while got.len() < 3 {
            tokio::select! {
                m = conn.recv() => got.push(m.unwrap()),
                _ = tokio::time::sleep(Duration::from_micros(300)) => cancelled += 1,
            }
        }
        (got, cancelled)
    });
    let mut conn = connect(client, Some(&public), FrameLimits::default())
        .await
        .unwrap();
    conn.send(&setup_connection()).await.unwrap();
    let messages = vec![
        all_messages()[20].clone(),
        all_messages()[23].clone(),
        all_messages()[20].clone(),
    ];
    for m in &messages {
        conn.send(m).await.unwrap();
    }
    let (got, cancelled) = server.await.unwrap();
    assert_eq!(got, messages);
    assert!(cancelled > 0, "recv was never cancelled mid-frame");
}

/// Our transport against SRI's own `codec_sv2` NoiseEncoder/NoiseDecoder and `parsers_sv2`:
/// proves the chunk layout and the message encodings are byte-compatible.
#[tokio::test]
async fn interoperates_with_sri_codec() {
    use stratum_core::{
        binary_sv2::Str0255,
        codec_sv2::{Decrypted, Handshake, NoiseDecoder, NoiseEncoder},
        common_messages_sv2::{
            Protocol as SriProtocol, SetupConnection, MESSAGE_TYPE_SETUP_CONNECTION,
        },
        framing_sv2::framing::MessageFrame,
        noise_sv2::{Initiator, INITIATOR_EXPECTED_HANDSHAKE_MESSAGE_SIZE},
        parsers_sv2::{AnyMessage, Mining},
    };
    let (mut client, server) = pair().await;
    let keys = keys();
    let public = keys.public_key();
    let big = all_messages()[21].clone();
    let to_send = big.clone();
    let server = tokio::spawn(async move {
        let mut conn = accept(server, &keys, VALIDITY, FrameLimits::default())
            .await
            .unwrap();
        let first = conn.recv().await.unwrap();
        conn.send(&to_send).await.unwrap();
        first
    });

    // SRI initiator, driven through codec_sv2's handshake state machine.
    let handshake = Handshake::initiator(Initiator::from_raw_k(*public.as_bytes()).unwrap());
    let (hello, handshake) = handshake.step_0().unwrap();
    let mut encoder = NoiseEncoder::new();
    let hello = encoder.encode_handshake(hello);
    client.write_all(hello.as_ref()).await.unwrap();
    let mut reply = [0u8; INITIATOR_EXPECTED_HANDSHAKE_MESSAGE_SIZE];
    client.read_exact(&mut reply).await.unwrap();
    let (mut tx_state, mut rx_state) = handshake.step_2(reply).unwrap().split();

    // SRI encodes and encrypts a SetupConnection; our server decodes it.
    let sri = SetupConnection {
        protocol: SriProtocol::MiningProtocol,
        min_version: 2,
        max_version: 2,
        flags: setup_flags::REQUIRES_VERSION_ROLLING,
        endpoint_host: Str0255::try_from(&b"pool.example"[..]).unwrap(),
        endpoint_port: 3336,
        vendor: Str0255::try_from(&b"defpool-test"[..]).unwrap(),
        hardware_version: Str0255::try_from(&b"hw-1"[..]).unwrap(),
        firmware: Str0255::try_from(&b"fw-1"[..]).unwrap(),
        device_id: Str0255::try_from(&b"rig-01"[..]).unwrap(),
    };
    let frame = MessageFrame::from_message(sri, MESSAGE_TYPE_SETUP_CONNECTION, 0, false).unwrap();
    let wire = encoder.encode_transport(frame, &mut tx_state).unwrap();
    client.write_all(wire.as_ref()).await.unwrap();

    // SRI decrypts our multi-chunk NewExtendedMiningJob and parses it.
    let mut decoder = NoiseDecoder::new();
    let mut frame = loop {
        client.read_exact(decoder.writable()).await.unwrap();
        match decoder.next_transport_frame(rx_state).unwrap() {
            Decrypted::Frame(frame, _) => break frame,
            Decrypted::Incomplete(_, state) => rx_state = state,
        }
    };
    assert_eq!(frame.as_bytes(), &encode_frame(&big).unwrap()[..]);
    let header = frame.header();
    match AnyMessage::try_from((header, frame.payload())).unwrap() {
        AnyMessage::Mining(Mining::NewExtendedMiningJob(job)) => {
            let Message::NewExtendedMiningJob {
                job_id,
                merkle_path,
                coinbase_tx_prefix,
                coinbase_tx_suffix,
                ..
            } = &big
            else {
                unreachable!()
            };
            assert_eq!(job.job_id, *job_id);
            assert_eq!(job.merkle_path.len(), merkle_path.len());
            assert_eq!(job.merkle_path[3].to_array(), merkle_path[3]);
            assert_eq!(job.coinbase_tx_prefix.as_bytes(), &coinbase_tx_prefix[..]);
            assert_eq!(job.coinbase_tx_suffix.as_bytes(), &coinbase_tx_suffix[..]);
        }
        other => panic!("SRI parsed {other}"),
    }
    assert_eq!(server.await.unwrap(), setup_connection());
}

#[test]
fn example_key_pair_parses_and_matches() {
    let pair = keys();
    assert_eq!(pair.public_key().to_base58(), PUB);
    assert_eq!(pair.secret_to_base58(), SEC);
    assert_eq!(
        AuthorityPublicKey::from_base58(PUB).unwrap(),
        pair.public_key()
    );
}

#[test]
fn mismatched_key_pair_is_refused() {
    let err = AuthorityKeypair::from_base58(OTHER_PUB, SEC).unwrap_err();
    match err {
        KeyError::Mismatch {
            configured,
            derived,
        } => {
            assert_eq!(configured.to_base58(), OTHER_PUB);
            assert_eq!(derived.to_base58(), PUB);
        }
        other => panic!("{other:?}"),
    }
    // Public and secret swapped: a length error, not a panic.
    assert!(matches!(
        AuthorityKeypair::from_base58(SEC, PUB),
        Err(KeyError::Length { .. })
    ));
}

#[test]
fn unknown_and_unsupported_types_are_violations() {
    let unknown = decode_frame_payload(0x0f, 0, &[]).unwrap_err();
    assert!(matches!(
        unknown,
        Sv2Error::UnknownMessage { msg_type: 0x0f, .. }
    ));
    assert!(unknown.is_protocol_violation());
    let extension = decode_frame_payload(0x00, 0x0001, &[]).unwrap_err();
    assert!(matches!(extension, Sv2Error::UnknownMessage { .. }));
    // SetCustomMiningJob (job declaration territory) and a template distribution message.
    for t in [0x22, 0x71] {
        let e = decode_frame_payload(t, 0, &[0; 64]).unwrap_err();
        assert!(
            matches!(
                e,
                Sv2Error::UnsupportedMessage { .. } | Sv2Error::BadPayload { .. }
            ),
            "{e:?}"
        );
        assert!(e.is_protocol_violation());
    }
    let truncated = decode_frame_payload(0x1a, sv2::CHANNEL_MSG_BIT, &[1, 2, 3]).unwrap_err();
    assert!(
        matches!(truncated, Sv2Error::BadPayload { .. }),
        "{truncated:?}"
    );
    assert!(truncated.is_protocol_violation());
}

#[test]
fn oversized_fields_are_encode_errors_not_violations() {
    let err = encode_frame(&Message::SubmitSharesExtended {
        channel_id: 1,
        sequence_number: 1,
        job_id: 1,
        nonce: 1,
        ntime: 1,
        version: 1,
        extranonce: vec![0; 33],
    })
    .unwrap_err();
    assert!(matches!(err, Sv2Error::Encode { .. }), "{err:?}");
    assert!(!err.is_protocol_violation());
    let err = encode_frame(&Message::CloseChannel {
        channel_id: 1,
        reason_code: "x".repeat(256),
    })
    .unwrap_err();
    assert!(matches!(err, Sv2Error::Encode { .. }), "{err:?}");
}

#[test]
fn invalid_utf8_strings_decode_lossily() {
    let (t, ext, mut payload) = encode_frame_payload(&Message::OpenMiningChannelError {
        request_id: 5,
        error_code: "ab".into(),
    })
    .unwrap();
    let last = payload.len() - 1;
    payload[last] = 0xff;
    assert_eq!(
        decode_frame_payload(t, ext, &payload).unwrap(),
        Message::OpenMiningChannelError {
            request_id: 5,
            error_code: "a\u{fffd}".into(),
        }
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn decode_never_panics(
        msg_type in any::<u8>(),
        extension in any::<u16>(),
        payload in proptest::collection::vec(any::<u8>(), 0..600),
    ) {
        let _ = decode_frame_payload(msg_type, extension, &payload);
        let _ = decode_frame(&payload);
    }

    #[test]
    fn decode_never_panics_on_defined_types(
        msg_type in prop_oneof![0x00u8..=0x25, 0x50u8..=0x76],
        channel_bit in any::<bool>(),
        payload in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let extension = if channel_bit { sv2::CHANNEL_MSG_BIT } else { 0 };
        if let Ok(m) = decode_frame_payload(msg_type, extension, &payload) {
            prop_assert_eq!(m.msg_type(), msg_type);
        }
    }

    #[test]
    fn mutated_valid_payloads_never_panic(
        which in 0usize..27,
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
        cut in any::<usize>(),
    ) {
        prop_assume!(which != 21); // the 200 KB job: slow, and covered by the round trips
        let (t, ext, mut payload) = encode_frame_payload(&all_messages()[which]).unwrap();
        for (at, xor) in flips {
            if !payload.is_empty() {
                let i = at % payload.len();
                payload[i] ^= xor;
            }
        }
        payload.truncate(cut % (payload.len() + 1));
        if let Ok(m) = decode_frame_payload(t, ext, &payload) {
            // Whatever decodes and re-encodes is a fixed point.
            if let Ok(frame) = encode_frame(&m) {
                prop_assert_eq!(encode_frame(&decode_frame(&frame).unwrap()).unwrap(), frame);
            }
        }
    }
}

/// CPU cost of handshakes. Run:
/// `cargo test -p defpool-stratum --release --test sv2 -- --ignored --nocapture handshake_cost`
#[tokio::test(flavor = "current_thread")]
#[ignore = "timing measurement, run in release mode with --nocapture"]
async fn handshake_cost() {
    use stratum_core::noise_sv2::{Initiator, Responder};
    const N: u32 = 200;
    let secret = bs58::decode(SEC).with_check(None).into_vec().unwrap();
    let keypair =
        secp256k1::Keypair::from_seckey_slice(&secp256k1::Secp256k1::new(), &secret).unwrap();

    // Responder side alone: what `accept` computes per connection (ephemeral key, two
    // ElligatorSwift ECDHs; static key and certificate reused) ...
    let hellos: Vec<_> = (0..N)
        .map(|_| Initiator::without_pk().unwrap().step_0().unwrap())
        .collect();
    let our_keys = keys();
    let ours = our_keys.noise_responder();
    ours.certificate(3600, 1_800_000_000);
    let started = Instant::now();
    for hello in &hellos {
        std::hint::black_box(ours.respond(hello, 3600, 1_800_000_000).unwrap());
    }
    let responder = started.elapsed() / N;
    // ... and SRI's responder, which `accept` used before (fresh static key and certificate
    // signature per handshake).
    let started = Instant::now();
    for hello in hellos {
        let mut responder = Responder::new(keypair, 3600);
        std::hint::black_box(responder.step_1(hello).unwrap());
    }
    let sri_responder = started.elapsed() / N;

    // Initiator side alone, for comparison (includes certificate verification).
    let mut replies = Vec::new();
    for _ in 0..N {
        let mut initiator = Initiator::from_raw_k(*keys().public_key().as_bytes()).unwrap();
        let hello = initiator.step_0().unwrap();
        let (reply, _) = Responder::new(keypair, 3600).step_1(hello).unwrap();
        replies.push((initiator, reply));
    }
    let started = Instant::now();
    for (mut initiator, reply) in replies {
        std::hint::black_box(initiator.step_2(reply).unwrap());
    }
    let initiator = started.elapsed() / N;

    // Full loopback: TCP connect, both handshake sides, the first message, one task each.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let keys = keys();
    let public = keys.public_key();
    let started = Instant::now();
    for _ in 0..N {
        let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let server = server.unwrap().0;
        let (server, client) = tokio::join!(
            accept(server, &keys, VALIDITY, FrameLimits::default()),
            async {
                let mut conn = connect(client.unwrap(), Some(&public), FrameLimits::default())
                    .await
                    .unwrap();
                conn.send(&setup_connection()).await.unwrap();
                conn
            }
        );
        server.unwrap();
        drop(client);
    }
    let loopback = started.elapsed() / N;
    println!(
        "SV2 handshake cost over {N} runs: responder step {responder:?} (SRI's: \
         {sri_responder:?}), initiator step {initiator:?}, full loopback accept+connect+first message {loopback:?} (both sides, \
         one thread)"
    );
}
