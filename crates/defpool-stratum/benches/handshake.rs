//! The SV2 responder's per-handshake CPU: ours (`sv2::noise::NoiseResponder::respond`, static
//! key and certificate reused) against SRI's `Responder::new` + `step_1` (fresh static key and
//! certificate per handshake), on the same initiator hellos, in the same run.
//!
//! `cargo bench -p defpool-stratum --bench handshake`

use std::time::{SystemTime, UNIX_EPOCH};

use defpool_stratum::sv2::noise::NoiseResponder;
use divan::{black_box, Bencher};
use secp256k1::{Keypair, Secp256k1};
use stratum_core::noise_sv2::{Initiator, Responder};

/// The certificate validity the proxy uses (24 h).
const VALIDITY: u32 = 24 * 3600;

fn main() {
    divan::main();
}

fn authority() -> Keypair {
    Keypair::from_seckey_slice(&Secp256k1::new(), &[0x42; 32]).expect("valid secret")
}

fn hello() -> [u8; 64] {
    Initiator::without_pk()
        .expect("initiator")
        .step_0()
        .expect("step 0")
}

fn now() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as u32
}

/// Ours: one responder state for the whole run, as a listener holds it.
#[divan::bench(sample_count = 200)]
fn ours(bencher: Bencher) {
    let responder = NoiseResponder::new(authority());
    let now = now();
    // Sign the certificate outside the measurement, as the first connection would.
    responder.certificate(VALIDITY, now);
    bencher
        .with_inputs(hello)
        .bench_local_refs(|hello| black_box(responder.respond(hello, VALIDITY, now).unwrap()));
}

/// SRI's `Responder::new` + `step_1`, what `accept` did before.
#[divan::bench(sample_count = 200)]
fn sri(bencher: Bencher) {
    let authority = authority();
    bencher.with_inputs(hello).bench_local_refs(|hello| {
        let mut responder = Responder::new(authority, VALIDITY);
        black_box(responder.step_1(*hello).unwrap())
    });
}
