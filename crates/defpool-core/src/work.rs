//! Targets, difficulty and work: the one unit of effort used everywhere in DefPool.
//!
//! * A *target* is a 256-bit number; a hash (read as a little-endian integer) meets it when
//!   `hash <= target`.
//! * *Difficulty* is `DIFF1 / target` with Bitcoin's difficulty-1 target, for every coin: that is
//!   what `getdifficulty` reports for Bitcoin and Litecoin alike. Scrypt pools show share
//!   difficulty 2^16 times larger; that convention is applied only by
//!   [`Target::from_stratum_difficulty`] and [`Target::stratum_difficulty`], where SV1
//!   difficulty is sent or shown.
//! * *Work* is the expected number of hashes to meet a target, `floor(2^256 / (target + 1))`,
//!   as `u128`. Every share is credited the work of the target it was judged against.

use std::cmp::Ordering;
use std::fmt;

use primitive_types::U256;

use crate::coin::Algorithm;

/// A 256-bit proof-of-work target.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Target(pub U256);

/// A target in the header's compact `nBits` form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CompactTarget(pub u32);

/// 2^32: the expected hashes per unit of difficulty (exactly 2^256 / (DIFF1 + 1) up to rounding).
pub const HASHES_PER_DIFFICULTY: f64 = 4_294_967_296.0;

impl Target {
    /// Bitcoin's difficulty-1 target, `0x00000000FFFF << 208`.
    pub fn diff1() -> Target {
        Target(U256::from(0xffffu64) << 208)
    }

    pub const MAX: Target = Target(U256::MAX);

    pub fn from_le_bytes(bytes: [u8; 32]) -> Target {
        Target(U256::from_little_endian(&bytes))
    }

    pub fn to_le_bytes(self) -> [u8; 32] {
        self.0.to_little_endian()
    }

    /// Whether a hash, in the little-endian byte order it comes out of the hash function, meets
    /// this target.
    pub fn is_met_by(&self, hash: &[u8; 32]) -> bool {
        // Compare from the most significant byte (index 31) down, without building a U256.
        for i in (0..32).rev() {
            let t = self.byte(i);
            match hash[i].cmp(&t) {
                Ordering::Less => return true,
                Ordering::Greater => return false,
                Ordering::Equal => {}
            }
        }
        true
    }

    fn byte(&self, i: usize) -> u8 {
        (self.0 .0[i / 8] >> ((i % 8) * 8)) as u8
    }

    /// Network difficulty of this target (`DIFF1 / target`).
    pub fn difficulty(&self) -> f64 {
        if self.0.is_zero() {
            return f64::INFINITY;
        }
        Target::diff1().0.to_f64_lossy() / self.0.to_f64_lossy()
    }

    /// The target of network difficulty `d`. Integral difficulties are converted exactly.
    pub fn from_difficulty(d: f64) -> Option<Target> {
        if !(d.is_finite() && d > 0.0) {
            return None;
        }
        if d.fract() == 0.0 && d < 18_446_744_073_709_551_616.0 {
            return Some(Target(Target::diff1().0 / U256::from(d as u64)));
        }
        let t = Target::diff1().0.to_f64_lossy() / d;
        if t >= U256::MAX.to_f64_lossy() {
            return Some(Target::MAX);
        }
        Some(Target(U256::from_f64_lossy(t)))
    }

    /// The target for a share difficulty as stratum V1 pools state it for `algorithm`.
    pub fn from_stratum_difficulty(d: f64, algorithm: Algorithm) -> Option<Target> {
        Target::from_difficulty(d / algorithm.stratum_difficulty_factor())
    }

    /// Share difficulty as stratum V1 pools state it for `algorithm`.
    pub fn stratum_difficulty(&self, algorithm: Algorithm) -> f64 {
        self.difficulty() * algorithm.stratum_difficulty_factor()
    }

    /// Expected hashes to meet this target: `floor(2^256 / (target + 1))`, saturated to `u128`
    /// (only targets below 2^128 saturate, far harder than any real chain).
    pub fn work(&self) -> u128 {
        if self.0 == U256::MAX {
            return 1;
        }
        if self.0.is_zero() {
            return u128::MAX;
        }
        // 2^256 / (t+1) = (2^256 - 1 - t) / (t+1) + 1, which stays inside 256 bits.
        let w = (!self.0) / (self.0 + U256::one()) + U256::one();
        if w.bits() > 128 {
            u128::MAX
        } else {
            w.low_u128()
        }
    }

    /// The compact form of this target, rounding down like Bitcoin Core's `GetCompact`.
    pub fn to_compact(&self) -> CompactTarget {
        let mut size = self.0.bits().div_ceil(8) as u32;
        let mut compact: u32 = if size <= 3 {
            (self.0.low_u64() << (8 * (3 - size))) as u32
        } else {
            (self.0 >> (8 * (size - 3) as usize)).low_u64() as u32
        };
        // The mantissa's top bit is a sign bit: move to the next exponent instead.
        if compact & 0x0080_0000 != 0 {
            compact >>= 8;
            size += 1;
        }
        CompactTarget(compact | (size << 24))
    }

    /// The easier of two targets.
    pub fn easier(self, other: Target) -> Target {
        self.max(other)
    }

    /// The harder of two targets.
    pub fn harder(self, other: Target) -> Target {
        self.min(other)
    }
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Target({:064x})", self.0)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:064x}", self.0)
    }
}

impl CompactTarget {
    /// The target this compact form stands for; `None` for negative or overflowing encodings,
    /// which no valid header carries.
    pub fn to_target(self) -> Option<Target> {
        let exponent = self.0 >> 24;
        let mantissa = self.0 & 0x007f_ffff;
        if self.0 & 0x0080_0000 != 0 && mantissa != 0 {
            return None;
        }
        let value = if exponent <= 3 {
            U256::from(mantissa >> (8 * (3 - exponent)))
        } else {
            let overflow = mantissa != 0
                && (exponent > 34
                    || (mantissa > 0xff && exponent > 33)
                    || (mantissa > 0xffff && exponent > 32));
            if overflow {
                return None;
            }
            U256::from(mantissa) << (8 * (exponent - 3) as usize)
        };
        Some(Target(value))
    }
}

impl fmt::Display for CompactTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

/// Average hashrate (hashes per second) from work done over `seconds`.
pub fn hashrate(work: u128, seconds: f64) -> f64 {
    if seconds <= 0.0 {
        return 0.0;
    }
    work as f64 / seconds
}

/// Expected smallest units per day for `hashrate` (H/s) on a chain of network `difficulty` whose
/// blocks pay `reward` units: `86400 · H · reward / (D · 2^32)`. An estimate for display and
/// decisions, never a ledger amount.
pub fn expected_units_per_day(hashrate: f64, reward: u64, difficulty: f64) -> f64 {
    if difficulty <= 0.0 {
        return 0.0;
    }
    86_400.0 * hashrate * reward as f64 / (difficulty * HASHES_PER_DIFFICULTY)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_compact_targets() {
        // Bitcoin genesis nBits: difficulty 1.
        let t = CompactTarget(0x1d00ffff).to_target().unwrap();
        assert_eq!(t, Target::diff1());
        assert_eq!(t.difficulty(), 1.0);
        assert_eq!(t.to_compact(), CompactTarget(0x1d00ffff));
        // Litecoin genesis nBits.
        let ltc = CompactTarget(0x1e0ffff0).to_target().unwrap();
        assert_eq!(ltc.to_compact(), CompactTarget(0x1e0ffff0));
        assert!((ltc.difficulty() - 0.000244140625).abs() < 1e-12);
        // Regtest pow limit: every other hash meets it.
        let reg = CompactTarget(0x207fffff).to_target().unwrap();
        assert_eq!(reg.work(), 2);
        // Bitcoin block 100,000: difficulty 14484.162361
        let b = CompactTarget(0x1b04864c).to_target().unwrap();
        assert!((b.difficulty() - 14_484.162_361_225_6).abs() < 1e-6);
        // Negative and overflowing encodings are refused.
        assert_eq!(CompactTarget(0x04923456).to_target(), None);
        assert_eq!(CompactTarget(0xff123456).to_target(), None);
        assert_eq!(
            CompactTarget(0x01003456).to_target(),
            Some(Target(U256::zero()))
        );
    }

    #[test]
    fn work_of_difficulty_one_is_about_two_to_the_32() {
        let w = Target::diff1().work();
        assert_eq!(w, 4_295_032_833); // floor(2^256 / (0xffff·2^208 + 1))
        assert_eq!(Target::MAX.work(), 1);
        assert_eq!(Target(U256::zero()).work(), u128::MAX);
        assert_eq!(Target(U256::one() << 200).work(), (1u128 << 56) - 1);
        assert_eq!(Target((U256::one() << 200) - 1).work(), 1u128 << 56);
    }

    #[test]
    fn scrypt_stratum_difficulty_differs_by_two_to_the_16() {
        let sha = Target::from_stratum_difficulty(1.0, Algorithm::Sha256d).unwrap();
        let scrypt = Target::from_stratum_difficulty(1.0, Algorithm::Scrypt).unwrap();
        assert_eq!(sha, Target::diff1());
        // Scrypt pools' difficulty 1 is the target 0x0000ffff << 224.
        assert_eq!(scrypt, Target(U256::from(0xffffu64) << 224));
        assert_eq!(scrypt.stratum_difficulty(Algorithm::Scrypt), 1.0);
        assert_eq!(scrypt.difficulty(), 1.0 / 65536.0);
    }

    #[test]
    fn expected_coins_per_day() {
        // 1 TH/s on difficulty 1e12 with 6.25 BTC reward: 86400e12·6.25e8/(1e12·2^32)
        let units = expected_units_per_day(1e12, 625_000_000, 1e12);
        assert!((units - 12_572.854_757_308_96).abs() < 1e-6, "{units}");
        assert_eq!(hashrate(600 * 1_000, 600.0), 1000.0);
    }

    fn any_target() -> impl Strategy<Value = Target> {
        prop::array::uniform32(any::<u8>()).prop_map(Target::from_le_bytes)
    }

    proptest! {
        #[test]
        fn compact_round_trip_is_exact_for_compact_values(exp in 4u32..=32, mant in 0x8000u32..0x7fffff) {
            let c = CompactTarget((exp << 24) | mant);
            let t = c.to_target().unwrap();
            prop_assert_eq!(t.to_compact().to_target().unwrap(), t);
        }

        #[test]
        fn compact_rounds_down_and_keeps_leading_bits(t in any_target()) {
            prop_assume!(!t.0.is_zero());
            let back = t.to_compact().to_target().unwrap();
            prop_assert!(back <= t);
            // At most the bits below the 23- or 24-bit mantissa are lost.
            prop_assert!(t.0 - back.0 < (U256::one() << (t.0.bits().saturating_sub(15))));
        }

        #[test]
        fn work_is_floor_of_two_to_256_over_target_plus_one(shift in 128usize..256, low in any::<u64>()) {
            let t = Target((U256::one() << shift) | U256::from(low));
            let w = U256::from(t.work());
            // w·(t+1) <= 2^256 < (w+1)·(t+1); checked in 512-bit space.
            let t1 = primitive_types::U512::from(t.0) + 1;
            let two256 = primitive_types::U512::one() << 256;
            prop_assert!(primitive_types::U512::from(w) * t1 <= two256);
            prop_assert!((primitive_types::U512::from(w) + 1) * t1 > two256);
        }

        #[test]
        fn harder_target_means_more_work(a in any_target(), b in any_target()) {
            prop_assume!(a.0.bits() > 129 && b.0.bits() > 129);
            if a < b { prop_assert!(a.work() >= b.work()); }
        }

        #[test]
        fn difficulty_round_trips(d in 1e-6f64..1e15) {
            let t = Target::from_difficulty(d).unwrap();
            prop_assert!(((t.difficulty() - d) / d).abs() < 1e-9);
            let w = t.work() as f64;
            prop_assert!(((w / (d * HASHES_PER_DIFFICULTY)) - 1.0).abs() < 1e-4);
        }

        #[test]
        fn is_met_by_agrees_with_integer_order(t in any_target(), h in prop::array::uniform32(any::<u8>())) {
            prop_assert_eq!(t.is_met_by(&h), U256::from_little_endian(&h) <= t.0);
        }
    }
}
