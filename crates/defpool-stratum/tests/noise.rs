//! Our Noise NX responder (`sv2::noise`) against SRI's initiator (`noise_sv2` 2.0.0, what SRI's
//! miners, proxies and translator use): handshakes, transport frames both ways, authority and
//! certificate checks, the certificate cache, and hostile first messages over TCP.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use defpool_stratum::sv2::{
    accept, connect, noise::NoiseResponder, setup_flags, AuthorityKeypair, AuthorityPublicKey,
    FrameLimits, Message, Protocol, Sv2Error,
};
use stratum_core::noise_sv2::{Error as SriError, Initiator, NoiseEngine};
use tokio::{
    io::AsyncWriteExt,
    net::{TcpListener, TcpStream},
    sync::mpsc,
};

const PUB: &str = "9aubsUESvSxGovf93cGCKXsAQwoPGz8JAqLVH36e9wcGa1rPWQB";
const SEC: &str = "2Xifp7Jz6CPcphddKSKA9Pqga5mfk82powffv1mRkX1ijdETes";
const OTHER_PUB: &str = "9biV8JrgZHbxDZnvN8ysxQ6qJHiFd6ZNFGb73FXB91epVFMbeAs";
const VALIDITY: u32 = 3600;

fn keys() -> AuthorityKeypair {
    AuthorityKeypair::from_base58(PUB, SEC).expect("example pair")
}

fn now() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as u32
}

/// A full handshake: SRI initiator expecting `expected`, our responder at `responder_now`, the
/// initiator checking at `initiator_now`.
fn handshake(
    responder: &NoiseResponder,
    expected: &AuthorityPublicKey,
    validity: u32,
    responder_now: u32,
    initiator_now: u32,
) -> (
    Result<NoiseEngine, SriError>,
    defpool_stratum::sv2::noise::TransportCiphers,
) {
    let mut initiator = Initiator::from_raw_k(*expected.as_bytes()).unwrap();
    let hello = initiator.step_0().unwrap();
    let (reply, ciphers) = responder.respond(&hello, validity, responder_now).unwrap();
    (initiator.step_2_with_now(reply, initiator_now), ciphers)
}

#[test]
fn sri_initiator_completes_the_handshake_and_frames_decrypt_both_ways() {
    let keys = keys();
    let t = now();
    let (engine, ciphers) = handshake(keys.noise_responder(), &keys.public_key(), VALIDITY, t, t);
    let mut engine = engine.expect("SRI accepts our handshake");
    let mut ours = ciphers;
    // Several messages each way: the nonce counters must advance in step on both sides.
    for i in 0..5u8 {
        let plain: Vec<u8> = (0..(i as usize * 37 + 1)).map(|b| b as u8 ^ i).collect();

        let mut wire = plain.clone();
        engine.encrypt(&mut wire).unwrap();
        assert_eq!(wire.len(), plain.len() + 16);
        ours.decryptor
            .decrypt(&mut wire)
            .expect("we decrypt SRI's frame");
        assert_eq!(wire, plain);

        let mut wire = plain.clone();
        ours.encryptor.encrypt(&mut wire).unwrap();
        engine.decrypt(&mut wire).expect("SRI decrypts our frame");
        assert_eq!(wire, plain);
    }
    // A tampered frame fails, and does not desynchronise the stream.
    let mut wire = b"after tampering".to_vec();
    engine.encrypt(&mut wire).unwrap();
    let mut bad = wire.clone();
    bad[3] ^= 0x10;
    assert!(ours.decryptor.decrypt(&mut bad).is_err());
    ours.decryptor.decrypt(&mut wire).unwrap();
    assert_eq!(wire, b"after tampering");
}

#[test]
fn each_handshake_gets_its_own_session_keys() {
    let keys = keys();
    let t = now();
    let (a, mut a_ours) = handshake(keys.noise_responder(), &keys.public_key(), VALIDITY, t, t);
    let (b, _) = handshake(keys.noise_responder(), &keys.public_key(), VALIDITY, t, t);
    let (mut a, mut b) = (a.unwrap(), b.unwrap());
    let mut wire = b"for a only".to_vec();
    a_ours.encryptor.encrypt(&mut wire).unwrap();
    let mut copy = wire.clone();
    assert!(b.decrypt(&mut copy).is_err(), "another session's key");
    a.decrypt(&mut wire).unwrap();
}

#[test]
fn a_wrong_authority_key_is_refused_by_sri_initiator() {
    let keys = keys();
    let other = AuthorityPublicKey::from_base58(OTHER_PUB).unwrap();
    let t = now();
    let (result, _) = handshake(keys.noise_responder(), &other, VALIDITY, t, t);
    match result {
        Err(SriError::InvalidCertificate(cert)) => {
            // The certificate itself is well-formed and current: only the signer is wrong.
            assert_eq!(cert.version, 0);
            assert_eq!(cert.valid_from, t);
            assert_eq!(cert.not_valid_after, t + VALIDITY);
        }
        Err(e) => panic!("refused for another reason: {e:?}"),
        Ok(_) => panic!("a certificate signed by another authority was accepted"),
    }
    // A responder made from another pair is refused by an initiator expecting ours.
    let stranger = AuthorityKeypair::generate();
    let (result, _) = handshake(
        stranger.noise_responder(),
        &keys.public_key(),
        VALIDITY,
        t,
        t,
    );
    assert!(matches!(result, Err(SriError::InvalidCertificate(_))));
}

#[test]
fn an_expired_certificate_is_refused_by_sri_initiator() {
    let keys = AuthorityKeypair::generate();
    let t = now();
    // Our clock two hours behind, a one-minute certificate.
    let (result, _) = handshake(keys.noise_responder(), &keys.public_key(), 60, t - 7200, t);
    assert!(
        matches!(&result, Err(SriError::InvalidCertificate(c)) if c.not_valid_after == t - 7140),
        "{:?}",
        result.err()
    );
    // Within SRI's 10 s leeway it is still accepted; beyond it, not.
    let (result, _) = handshake(keys.noise_responder(), &keys.public_key(), 60, t, t + 69);
    assert!(result.is_ok());
    let (result, _) = handshake(keys.noise_responder(), &keys.public_key(), 60, t, t + 71);
    assert!(matches!(result, Err(SriError::InvalidCertificate(_))));
}

#[test]
fn the_certificate_is_signed_once_and_renewed_at_half_its_validity() {
    let keys = AuthorityKeypair::generate();
    let responder = keys.noise_responder();
    let t0 = now();
    let first = responder.certificate(VALIDITY, t0);
    assert_eq!(
        (first.version, first.valid_from, first.not_valid_after),
        (0, t0, t0 + VALIDITY)
    );
    // Reused (same signature bytes: BIP340 signing is randomized, a new one would differ).
    assert_eq!(responder.certificate(VALIDITY, t0 + 1), first);
    assert_eq!(
        responder.certificate(VALIDITY, t0 + VALIDITY / 2 - 1),
        first
    );
    // Renewed once half the validity has passed.
    let renewed = responder.certificate(VALIDITY, t0 + VALIDITY / 2);
    assert_ne!(renewed, first);
    assert_eq!(renewed.valid_from, t0 + VALIDITY / 2);
    // A clock that went back gets a certificate valid from its new now.
    assert_eq!(
        responder.certificate(VALIDITY, t0 - 100).valid_from,
        t0 - 100
    );

    // Ten validity periods later, handshakes still succeed: the cache renews what it serves.
    let later = t0 + 10 * VALIDITY;
    let (result, _) = handshake(responder, &keys.public_key(), VALIDITY, later, later);
    assert!(result.is_ok(), "{:?}", result.err());
    assert_eq!(responder.certificate(VALIDITY, later).valid_from, later);

    // Another validity is signed for, not served from the cache.
    assert_eq!(responder.certificate(60, later).not_valid_after, later + 60);
}

#[test]
fn clones_share_one_responder() {
    let keys = keys();
    let clone = keys.clone();
    assert!(std::ptr::eq(
        keys.noise_responder(),
        clone.noise_responder()
    ));
    let t = now();
    assert_eq!(
        keys.noise_responder().certificate(VALIDITY, t),
        clone.noise_responder().certificate(VALIDITY, t)
    );
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

/// A listener that runs `accept` on every connection in its own task, as the proxy does, and
/// reports each outcome (or, for good connections, echoes every message back).
async fn server() -> (
    std::net::SocketAddr,
    mpsc::UnboundedReceiver<Result<(), Sv2Error>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let keys = keys();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (keys, tx) = (keys.clone(), tx.clone());
            tokio::spawn(async move {
                match accept(
                    stream,
                    &keys,
                    Duration::from_secs(VALIDITY as u64),
                    FrameLimits::default(),
                )
                .await
                {
                    Ok(mut conn) => {
                        let _ = tx.send(Ok(()));
                        while let Ok(m) = conn.recv().await {
                            if conn.send(&m).await.is_err() {
                                break;
                            }
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            });
        }
    });
    (addr, rx)
}

#[tokio::test]
async fn malformed_and_truncated_first_messages_close_only_that_connection() {
    let (addr, mut outcomes) = server().await;
    let public = keys().public_key();

    // A good miner first (SRI's initiator inside `connect`), kept open throughout.
    let mut good = connect(
        TcpStream::connect(addr).await.unwrap(),
        Some(&public),
        FrameLimits::default(),
    )
    .await
    .unwrap();
    good.send(&setup_connection()).await.unwrap();
    assert!(outcomes.recv().await.unwrap().is_ok());
    assert_eq!(good.recv().await.unwrap(), setup_connection());

    // Truncated: 30 of the 64 hello bytes, then the peer closes.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&[0xab; 30]).await.unwrap();
    s.shutdown().await.unwrap();
    let err = outcomes.recv().await.unwrap().unwrap_err();
    assert!(
        matches!(&err, Sv2Error::Handshake(m) if m.contains("30 of 64")),
        "{err:?}"
    );
    assert!(err.is_protocol_violation());
    drop(s);

    // Malformed: a 64-byte "key" (any 64 bytes decode as ElligatorSwift) and then a transport
    // frame not encrypted with the session's key: its MAC fails.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let junk: Vec<u8> = (0..64 + 22).map(|i| (i * 13 + 5) as u8).collect();
    s.write_all(&junk).await.unwrap();
    let err = outcomes.recv().await.unwrap().unwrap_err();
    assert!(matches!(err, Sv2Error::Decrypt), "{err:?}");
    assert!(err.is_protocol_violation());
    drop(s);

    // A real initiator's hello whose first frame was encrypted for another session.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let hello = Initiator::without_pk().unwrap().step_0().unwrap();
    s.write_all(&hello).await.unwrap();
    let (mut engine, _) = handshake(keys().noise_responder(), &public, VALIDITY, now(), now());
    let mut frame = vec![0u8; 6];
    engine.as_mut().unwrap().encrypt(&mut frame).unwrap();
    s.write_all(&frame).await.unwrap();
    let err = outcomes.recv().await.unwrap().unwrap_err();
    assert!(matches!(err, Sv2Error::Decrypt), "{err:?}");
    drop(s);

    // The good connection is unaffected, and new handshakes still succeed.
    good.send(&Message::ChannelEndpointChanged { channel_id: 7 })
        .await
        .unwrap();
    assert_eq!(
        good.recv().await.unwrap(),
        Message::ChannelEndpointChanged { channel_id: 7 }
    );
    let mut again = connect(
        TcpStream::connect(addr).await.unwrap(),
        Some(&public),
        FrameLimits::default(),
    )
    .await
    .unwrap();
    again.send(&setup_connection()).await.unwrap();
    assert!(outcomes.recv().await.unwrap().is_ok());
    assert_eq!(again.recv().await.unwrap(), setup_connection());
}

#[tokio::test]
async fn concurrent_handshakes_through_one_shared_responder() {
    let (addr, mut outcomes) = server().await;
    let public = keys().public_key();
    let clients: Vec<_> = (0..32u32)
        .map(|i| {
            tokio::spawn(async move {
                let mut conn = connect(
                    TcpStream::connect(addr).await.unwrap(),
                    Some(&public),
                    FrameLimits::default(),
                )
                .await
                .unwrap();
                let m = Message::ChannelEndpointChanged { channel_id: i };
                conn.send(&m).await.unwrap();
                assert_eq!(conn.recv().await.unwrap(), m);
            })
        })
        .collect();
    for c in clients {
        c.await.unwrap();
    }
    for _ in 0..32 {
        assert!(outcomes.recv().await.unwrap().is_ok());
    }
}
