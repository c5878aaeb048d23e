//! Share-validation throughput, per core (divan runs every benchmark on one thread).
//!
//! Each benchmark checks one share (or hashes one header) per iteration, with a fresh nonce every
//! time, and counts one item per iteration so divan prints checks per second.
//!
//! * `raw_header_hash`: the proof-of-work hash of an 80-byte header alone, the floor of any
//!   check.
//! * `job_validate`: [`Job::validate`] on an extended channel: coinbase of 110 + 8 + 150 bytes
//!   (prefix, extranonce, suffix), a merkle branch of 12 levels (a block of ~3000
//!   transactions), header, proof-of-work hash, classification.
//! * `book_admit_judge` (sha256d): what the proxy calls, [`JobBook::admit`] (job lookup, cheap
//!   checks, duplicate detection) then `PreparedShare::judge`.
//! * `header_only` (sha256d): a standard channel, whose merkle root is fixed by the job: build
//!   the header, hash it, classify.
//!
//! The share target is regtest's pow limit, met by about half of all hashes, so both the
//! credited and the below-target paths are taken; the block target is a mainnet-like one that
//! no hash here meets.
//!
//! Each benchmark runs for at least one second (`--min-time` or `DIVAN_MIN_TIME` overrides it).
//! Run with `cargo bench -p defpool-core --bench share_check`.

use std::sync::Arc;

use defpool_core::hash::{pow_hash, scrypt_pow, sha256d, Hash32};
use defpool_core::header::Header;
use defpool_core::share::{classify, Job, JobBook, Submission, SubmittedVersion};
use defpool_core::{Algorithm, CompactTarget};
use divan::counter::ItemsCount;
use divan::Bencher;

fn main() {
    divan::main();
}

const PREFIX_LEN: usize = 110;
const EXTRANONCE: [u8; 8] = [0x5a, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07];
const SUFFIX_LEN: usize = 150;
/// 12 levels: a block of 2049..=4096 transactions.
const BRANCH_LEVELS: usize = 12;
const JOB_NTIME: u32 = 1_700_000_000;
const NOW: u32 = JOB_NTIME + 10;
/// Shares the `JobBook` benchmark sends per job before a new (clean) job replaces it, which
/// bounds the duplicate set as a real channel's job changes do.
const SHARES_PER_JOB: u32 = 4_096;

/// Deterministic filler bytes.
fn filler(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn job(algorithm: Algorithm) -> Job {
    // Bitcoin- and Litecoin-like network targets: never met by these benchmarks.
    let nbits = match algorithm {
        Algorithm::Sha256d => 0x1703_0ecd,
        Algorithm::Scrypt => 0x1a01_cd2d,
    };
    Job {
        id: 0,
        algorithm,
        version: 0x2000_0000,
        version_mask: 0x1fff_e000,
        prev_hash: filler(1, 32).try_into().expect("32 bytes"),
        coinbase_prefix: filler(2, PREFIX_LEN),
        coinbase_suffix: filler(3, SUFFIX_LEN),
        extranonce_size: EXTRANONCE.len(),
        merkle_branch: (0..BRANCH_LEVELS as u64)
            .map(|i| filler(10 + i, 32).try_into().expect("32 bytes"))
            .collect(),
        nbits,
        ntime: JOB_NTIME,
        share_target: CompactTarget(0x207f_ffff).to_target().expect("valid nBits"),
        block_target: CompactTarget(nbits).to_target().expect("valid nBits"),
    }
}

fn submission(nonce: u32) -> Submission<'static> {
    Submission {
        extranonce: &EXTRANONCE,
        ntime: JOB_NTIME + 1,
        nonce,
        version: SubmittedVersion::Unrolled,
    }
}

/// The job's header for [`EXTRANONCE`] and nonce 0.
fn header(job: &Job) -> Header {
    job.prepare(&submission(0), NOW)
        .expect("valid submission")
        .header
}

/// Raw proof-of-work hash of an 80-byte header under `algorithm`, nonce varied in place.
fn raw_header_hash(bencher: Bencher, algorithm: Algorithm, hash: impl Fn(&[u8; 80]) -> Hash32) {
    let mut bytes = header(&job(algorithm)).serialize();
    let mut nonce = 0u32;
    bencher.counter(ItemsCount::new(1usize)).bench_local(|| {
        nonce = nonce.wrapping_add(1);
        bytes[76..80].copy_from_slice(&nonce.to_le_bytes());
        hash(&bytes)
    });
}

/// Full share check through `Job::validate`, nonce varied.
fn job_validate(bencher: Bencher, algorithm: Algorithm) {
    let job = job(algorithm);
    let mut nonce = 0u32;
    bencher.counter(ItemsCount::new(1usize)).bench_local(|| {
        nonce = nonce.wrapping_add(1);
        job.validate(&submission(nonce), NOW)
            .expect("valid submission")
    });
}

mod sha256d {
    use super::*;

    /// One sha256d of an 80-byte header (`defpool_core::hash::sha256d`, the `sha2` crate).
    #[divan::bench(min_time = 1)]
    fn raw_header_hash(bencher: Bencher) {
        super::raw_header_hash(bencher, Algorithm::Sha256d, |h| sha256d(h));
    }

    /// `Job::validate`: coinbase, 12-level merkle fold, header, hash, classification.
    #[divan::bench(min_time = 1)]
    fn job_validate(bencher: Bencher) {
        super::job_validate(bencher, Algorithm::Sha256d);
    }

    /// `JobBook::admit` + `PreparedShare::judge`: `job_validate` plus job lookup and duplicate
    /// detection.
    #[divan::bench(min_time = 1)]
    fn book_admit_judge(bencher: Bencher) {
        let template = job(Algorithm::Sha256d);
        let mut book = JobBook::new(0, 4);
        let mut id = 0u64;
        book.add(Arc::new(template.clone()), true, NOW);
        let mut nonce = 0u32;
        bencher.counter(ItemsCount::new(1usize)).bench_local(|| {
            nonce = nonce.wrapping_add(1);
            if nonce.is_multiple_of(SHARES_PER_JOB) {
                id += 1;
                book.add(
                    Arc::new(Job {
                        id,
                        ..template.clone()
                    }),
                    true,
                    NOW,
                );
            }
            let (prepared, _late) = book
                .admit(id, &submission(nonce), NOW)
                .expect("fresh submission");
            prepared.judge()
        });
    }

    /// Standard channel: the merkle root is fixed, so a check is header, hash, classification.
    #[divan::bench(min_time = 1)]
    fn header_only(bencher: Bencher) {
        let job = job(Algorithm::Sha256d);
        let mut header = header(&job);
        bencher.counter(ItemsCount::new(1usize)).bench_local(|| {
            header.nonce = header.nonce.wrapping_add(1);
            let hash = pow_hash(Algorithm::Sha256d, &header.serialize());
            classify(header, hash, job.share_target, job.block_target)
        });
    }
}

mod scrypt {
    use super::*;

    /// One scrypt (N=1024, r=1, p=1) of an 80-byte header (`defpool_core::hash::scrypt_pow`).
    #[divan::bench(min_time = 1)]
    fn raw_header_hash(bencher: Bencher) {
        super::raw_header_hash(bencher, Algorithm::Scrypt, scrypt_pow);
    }

    /// `Job::validate` for a scrypt job: the same coinbase and merkle work as sha256d, then
    /// scrypt.
    #[divan::bench(min_time = 1)]
    fn job_validate(bencher: Bencher) {
        super::job_validate(bencher, Algorithm::Scrypt);
    }
}
