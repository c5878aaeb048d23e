//! The miners' search: build the header of a job and iterate nonces (then extranonces, rolled
//! version bits) until the proof-of-work hash meets the share target.

use std::sync::Arc;

use defpool_core::coin::Algorithm;
use defpool_core::hash::{pow_hash, sha256d, Hash32};
use defpool_core::header::Header;
use defpool_core::merkle::fold_branch;
use defpool_core::work::Target;

/// One job as a miner mines it, whatever protocol carried it.
#[derive(Clone, Debug)]
pub(crate) struct Work {
    pub algorithm: Algorithm,
    /// The job's version.
    pub version: u32,
    /// The bits this miner may roll (0 = none).
    pub version_mask: u32,
    pub prev_hash: Hash32,
    /// Everything of the coinbase before the miner's own extranonce (SV1: coinb1 + extranonce1;
    /// SV2 extended: coinbase prefix + extranonce prefix).
    pub coinbase_prefix: Vec<u8>,
    pub coinbase_suffix: Vec<u8>,
    /// Size of the miner's own extranonce part.
    pub extranonce_size: usize,
    pub merkle_branch: Vec<Hash32>,
    /// SV2 standard channels: the pool computed the merkle root; no extranonce to roll.
    pub merkle_root: Option<Hash32>,
    pub ntime: u32,
    pub nbits: u32,
    pub target: Target,
    /// Work credited per accepted share: `target.work()`.
    pub work: u128,
    /// Coin tag of the coinbase, if any.
    pub coin: Option<Arc<str>>,
}

impl Work {
    pub fn coin_of(prefix: &[u8], suffix: &[u8]) -> Option<Arc<str>> {
        crate::coin_tag(prefix)
            .or_else(|| crate::coin_tag(suffix))
            .map(Arc::from)
    }
}

/// A share found by the search.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Found {
    pub extranonce: Vec<u8>,
    pub ntime: u32,
    pub nonce: u32,
    /// The full header version.
    pub version: u32,
    /// `version & mask`: what SV1 BIP310 submits.
    pub version_bits: u32,
}

/// The state of the search through one job.
pub(crate) struct Search {
    pub work: Arc<Work>,
    extranonce: Vec<u8>,
    extranonce_counter: u64,
    roll_counter: u32,
    header: [u8; 80],
    nonce: u32,
    ntime: u32,
}

/// Spread the low bits of `value` over the set bits of `mask` (a software PDEP).
fn deposit(mut value: u32, mask: u32) -> u32 {
    let mut out = 0;
    let mut m = mask;
    while m != 0 && value != 0 {
        let bit = m & m.wrapping_neg();
        if value & 1 != 0 {
            out |= bit;
        }
        value >>= 1;
        m &= m - 1;
    }
    out
}

impl Search {
    /// Start on `work`; `seed` spreads different miners' (and different jobs') extranonces.
    pub fn new(work: Arc<Work>, seed: u64) -> Search {
        let mut s = Search {
            extranonce: vec![0; work.extranonce_size],
            extranonce_counter: seed,
            roll_counter: 1,
            header: [0; 80],
            // Spread the nonce start too: a standard channel's work has no extranonce to vary,
            // and a re-sent identical job must not replay the same nonces.
            nonce: (seed as u32).wrapping_mul(0x9e37_79b9),
            ntime: work.ntime,
            work,
        };
        s.set_extranonce();
        s
    }

    fn set_extranonce(&mut self) {
        let bytes = self.extranonce_counter.to_be_bytes();
        let n = self.extranonce.len();
        // The counter's low bytes go to the end; larger extranonces keep leading zeros.
        for (i, b) in self.extranonce.iter_mut().enumerate() {
            let from_end = n - 1 - i;
            *b = if from_end < 8 { bytes[7 - from_end] } else { 0 };
        }
        let root = match self.work.merkle_root {
            Some(root) => root,
            None => {
                let mut coinbase = Vec::with_capacity(
                    self.work.coinbase_prefix.len() + n + self.work.coinbase_suffix.len(),
                );
                coinbase.extend_from_slice(&self.work.coinbase_prefix);
                coinbase.extend_from_slice(&self.extranonce);
                coinbase.extend_from_slice(&self.work.coinbase_suffix);
                fold_branch(sha256d(&coinbase), &self.work.merkle_branch)
            }
        };
        self.header = Header {
            version: self.version(),
            prev_hash: self.work.prev_hash,
            merkle_root: root,
            ntime: self.ntime,
            nbits: self.work.nbits,
            nonce: 0,
        }
        .serialize();
    }

    fn version(&self) -> u32 {
        let mask = self.work.version_mask;
        (self.work.version & !mask) | deposit(self.roll_counter, mask)
    }

    /// Try up to `budget` nonces; the first share found, if any.
    pub fn step(&mut self, budget: u32) -> Option<Found> {
        for _ in 0..budget {
            let nonce = self.nonce;
            self.header[76..80].copy_from_slice(&nonce.to_le_bytes());
            let hash = pow_hash(self.work.algorithm, &self.header);
            self.advance();
            if self.work.target.is_met_by(&hash) {
                let version = u32::from_le_bytes(self.header[0..4].try_into().expect("4 bytes"));
                let found = Found {
                    extranonce: self.extranonce.clone(),
                    ntime: self.ntime,
                    nonce,
                    version,
                    version_bits: version & self.work.version_mask,
                };
                // Roll version bits after every share, so that submissions carry varied bits.
                if self.work.version_mask != 0 {
                    self.roll_counter = self.roll_counter.wrapping_add(1);
                    let v = self.version();
                    self.header[0..4].copy_from_slice(&v.to_le_bytes());
                }
                return Some(found);
            }
        }
        None
    }

    fn advance(&mut self) {
        self.nonce = self.nonce.wrapping_add(1);
        if self.nonce != 0 {
            return;
        }
        // Nonce space exhausted: next extranonce, or (no extranonce) the next ntime.
        if self.extranonce.is_empty() || self.work.merkle_root.is_some() {
            self.ntime = self.ntime.wrapping_add(1);
        } else {
            self.extranonce_counter = self.extranonce_counter.wrapping_add(1);
        }
        self.set_extranonce();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use defpool_core::share::{Job, Submission, SubmittedVersion};

    fn work(mask: u32) -> Work {
        let target = Target::from_difficulty(1.0 / 4096.0 / 256.0).unwrap();
        Work {
            algorithm: Algorithm::Sha256d,
            version: 0x2000_0000,
            version_mask: mask,
            prev_hash: [3; 32],
            coinbase_prefix: b"prefix/coin:BTC/\x01\x02\x03\x04".to_vec(),
            coinbase_suffix: b"suffix".to_vec(),
            extranonce_size: 8,
            merkle_branch: vec![[5; 32]],
            merkle_root: None,
            ntime: 1_700_000_000,
            nbits: 0x207fffff,
            target,
            work: target.work(),
            coin: Work::coin_of(b"prefix/coin:BTC/", b""),
        }
    }

    #[test]
    fn deposit_spreads_bits_over_the_mask() {
        assert_eq!(deposit(0b11, 0x1fff_e000), 0x0000_6000);
        assert_eq!(deposit(1, 0), 0);
        assert_eq!(deposit(u32::MAX, 0x1fff_e000), 0x1fff_e000);
    }

    #[test]
    fn found_shares_validate_as_the_pool_checks_them() {
        for mask in [0, 0x1fff_e000] {
            let w = Arc::new(work(mask));
            let job = Job {
                id: 1,
                algorithm: w.algorithm,
                version: w.version,
                version_mask: mask,
                prev_hash: w.prev_hash,
                coinbase_prefix: b"prefix/coin:BTC/".to_vec(),
                coinbase_suffix: w.coinbase_suffix.clone(),
                extranonce_size: 12,
                merkle_branch: w.merkle_branch.clone(),
                nbits: w.nbits,
                ntime: w.ntime,
                share_target: w.target,
                block_target: Target::from_difficulty(1.0).unwrap(),
            };
            let mut s = Search::new(w.clone(), 7);
            let mut found = Vec::new();
            while found.len() < 3 {
                if let Some(f) = s.step(1 << 20) {
                    found.push(f);
                }
            }
            for f in &found {
                let mut en = vec![1, 2, 3, 4];
                en.extend_from_slice(&f.extranonce);
                let version = if mask == 0 {
                    SubmittedVersion::Unrolled
                } else {
                    SubmittedVersion::RolledBits(f.version_bits)
                };
                let sub = Submission {
                    extranonce: &en,
                    ntime: f.ntime,
                    nonce: f.nonce,
                    version,
                };
                let checked = job.validate(&sub, w.ntime).unwrap();
                assert_eq!(checked.work, w.work);
                if mask != 0 {
                    assert_ne!(f.version_bits, 0);
                }
            }
            assert_eq!(w.coin.as_deref(), Some("BTC"));
        }
    }
}
