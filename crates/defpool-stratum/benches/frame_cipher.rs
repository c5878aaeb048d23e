//! Sealing and opening one SV2 transport frame with ChaCha20-Poly1305 (what
//! `sv2::noise::CipherState` does for every message: shares, answers, jobs, the switch fan-out).
//!
//! The workspace builds poly1305 with its portable backend (`--cfg poly1305_force_soft` in
//! `.cargo/config.toml`): its AVX2 backend calls its intrinsics out of line and is several times
//! slower on frames this short. Compare by running this bench once as configured and once with
//! `RUSTFLAGS="--cfg avx2_poly1305"` (any RUSTFLAGS replaces the configured ones).
//!
//! `cargo bench -p defpool-stratum --bench frame_cipher`

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Nonce, Tag};
use divan::{black_box, Bencher};

fn main() {
    divan::main();
}

/// A share submit is about 40 bytes, its answer about 30, an extended job a few hundred.
const SIZES: [usize; 3] = [40, 100, 300];

fn nonce(n: u64) -> Nonce {
    let mut nonce = Nonce::default();
    nonce[4..].copy_from_slice(&n.to_le_bytes());
    nonce
}

#[divan::bench(args = SIZES)]
fn seal(bencher: Bencher, size: usize) {
    let aead = ChaCha20Poly1305::new(&[7u8; 32].into());
    let mut n = 0u64;
    bencher
        .with_inputs(|| vec![1u8; size])
        .bench_local_refs(|buf| {
            n += 1;
            black_box(aead.encrypt_in_place_detached(&nonce(n), &[], buf).unwrap())
        });
}

#[divan::bench(args = SIZES)]
fn open(bencher: Bencher, size: usize) {
    let aead = ChaCha20Poly1305::new(&[7u8; 32].into());
    let mut sealed = vec![1u8; size];
    let tag = aead
        .encrypt_in_place_detached(&nonce(1), &[], &mut sealed)
        .unwrap();
    bencher
        .with_inputs(|| sealed.clone())
        .bench_local_refs(|buf| {
            aead.decrypt_in_place_detached(&nonce(1), &[], buf, Tag::from_slice(&tag))
                .unwrap();
            black_box(buf.len())
        });
}
