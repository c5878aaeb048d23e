//! Extranonce layout: how one upstream channel's extranonce space is shared by many miners, and
//! how it stays the same for a miner across coins.
//!
//! An upstream gives us `extranonce1` (its prefix, fixed) and `extranonce2_size` bytes we may
//! choose. We split those bytes into `pad ‖ miner prefix ‖ miner rolled bytes`. The miner sees a
//! coinbase prefix of `coinbase1 ‖ upstream extranonce1 ‖ pad` (zeros), its own prefix as its
//! extranonce1 / SV2 extranonce_prefix, and `rolled` bytes to roll. Only the pad depends on the
//! upstream, and it is folded into the coinbase prefix, so a switch never changes what the
//! miner's extranonce looks like — unless the new upstream's space is smaller than
//! `prefix + rolled`, in which case the rolled part shrinks (set_extranonce) or, if even the
//! prefix does not fit, the miner must reconnect.

use std::collections::VecDeque;

/// The proxy-wide split of the miner-visible extranonce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MinerSpace {
    /// Bytes that identify a miner (unique per miner within a group).
    pub prefix_bytes: usize,
    /// Bytes the miner rolls itself.
    pub rolled_bytes: usize,
}

impl Default for MinerSpace {
    fn default() -> Self {
        // 2^24 miners per group; 4 rolled bytes as SV1 firmware expects.
        MinerSpace {
            prefix_bytes: 3,
            rolled_bytes: 4,
        }
    }
}

impl MinerSpace {
    pub fn total(&self) -> usize {
        self.prefix_bytes + self.rolled_bytes
    }
}

/// The smallest rolled part we hand out before preferring a reconnect.
pub const MIN_ROLLED_BYTES: usize = 2;

/// An upstream channel's extranonce as folded for our miners.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fold {
    /// Upstream extranonce1 (or SV2 extranonce_prefix).
    pub upstream_prefix: Vec<u8>,
    /// Zero bytes between the upstream prefix and the miner's prefix.
    pub pad: usize,
    /// Bytes each miner may roll on this upstream.
    pub rolled_bytes: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("upstream offers {offered} extranonce bytes; miners need at least {needed}")]
pub struct SpaceTooSmall {
    pub offered: usize,
    pub needed: usize,
}

impl Fold {
    /// Fits the miner space into an upstream's `extranonce2_size` bytes.
    pub fn new(
        space: MinerSpace,
        upstream_prefix: &[u8],
        upstream_space: usize,
    ) -> Result<Fold, SpaceTooSmall> {
        let needed = space.prefix_bytes + MIN_ROLLED_BYTES;
        if upstream_space < needed {
            return Err(SpaceTooSmall {
                offered: upstream_space,
                needed,
            });
        }
        let rolled = space.rolled_bytes.min(upstream_space - space.prefix_bytes);
        Ok(Fold {
            upstream_prefix: upstream_prefix.to_vec(),
            pad: upstream_space - space.prefix_bytes - rolled,
            rolled_bytes: rolled,
        })
    }

    /// The coinbase prefix miners receive: `coinbase1 ‖ upstream prefix ‖ pad`.
    pub fn miner_coinbase_prefix(&self, coinbase1: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(coinbase1.len() + self.upstream_prefix.len() + self.pad);
        out.extend_from_slice(coinbase1);
        out.extend_from_slice(&self.upstream_prefix);
        out.resize(out.len() + self.pad, 0);
        out
    }

    /// What we submit upstream as extranonce2: `pad ‖ miner prefix ‖ miner rolled bytes`.
    pub fn upstream_extranonce(&self, miner_prefix: &[u8], rolled: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.pad + miner_prefix.len() + rolled.len());
        out.resize(self.pad, 0);
        out.extend_from_slice(miner_prefix);
        out.extend_from_slice(rolled);
        out
    }
}

/// A miner's extranonce prefix (1..=8 bytes), held inline: as a `Vec` it was one more
/// allocation on every miner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prefix {
    bytes: [u8; 8],
    len: u8,
}

impl std::ops::Deref for Prefix {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

impl AsRef<[u8]> for Prefix {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

/// Hands out unique miner prefixes and takes them back when miners leave. Fresh prefixes are
/// used first and released ones only after the space is exhausted, oldest first, so a miner that
/// reconnects does not get a prefix whose shares on a still-live job were just seen upstream.
#[derive(Debug)]
pub struct PrefixAllocator {
    bytes: usize,
    next: u64,
    free: VecDeque<u64>,
}

impl PrefixAllocator {
    pub fn new(bytes: usize) -> PrefixAllocator {
        assert!((1..=8).contains(&bytes), "prefix of 1..=8 bytes");
        PrefixAllocator {
            bytes,
            // Prefix zero is never used, so an all-zero extranonce is recognisably not a miner's.
            next: 1,
            free: VecDeque::new(),
        }
    }

    fn capacity(&self) -> u64 {
        if self.bytes >= 8 {
            u64::MAX
        } else {
            1u64 << (8 * self.bytes)
        }
    }

    pub fn allocate(&mut self) -> Option<Prefix> {
        let n = if self.next < self.capacity() {
            self.next += 1;
            self.next - 1
        } else {
            self.free.pop_front()?
        };
        let mut bytes = [0u8; 8];
        bytes[..self.bytes].copy_from_slice(&n.to_be_bytes()[8 - self.bytes..]);
        Some(Prefix {
            bytes,
            len: self.bytes as u8,
        })
    }

    pub fn release(&mut self, prefix: &[u8]) {
        if prefix.len() == self.bytes {
            let mut be = [0u8; 8];
            be[8 - self.bytes..].copy_from_slice(prefix);
            let n = u64::from_be_bytes(be);
            if n != 0 && n < self.next {
                self.free.push_back(n);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fold_keeps_the_miner_part_and_pads_the_rest() {
        let space = MinerSpace::default();
        let f = Fold::new(space, &[0xaa, 0xbb], 8).unwrap();
        assert_eq!(f.pad, 1);
        assert_eq!(f.rolled_bytes, 4);
        assert_eq!(f.miner_coinbase_prefix(&[1, 2]), vec![1, 2, 0xaa, 0xbb, 0]);
        assert_eq!(
            f.upstream_extranonce(&[7, 8, 9], &[1, 2, 3, 4]),
            vec![0, 7, 8, 9, 1, 2, 3, 4]
        );
        // The full coinbase is identical whichever way it is assembled.
        let coinbase1 = [5u8, 6];
        let mut miner_view = f.miner_coinbase_prefix(&coinbase1);
        miner_view.extend_from_slice(&[7, 8, 9, 1, 2, 3, 4]);
        let mut upstream_view = coinbase1.to_vec();
        upstream_view.extend_from_slice(&[0xaa, 0xbb]);
        upstream_view.extend(f.upstream_extranonce(&[7, 8, 9], &[1, 2, 3, 4]));
        assert_eq!(miner_view, upstream_view);
    }

    #[test]
    fn a_small_upstream_shrinks_the_rolled_part_then_refuses() {
        let space = MinerSpace::default();
        let f = Fold::new(space, &[], 6).unwrap();
        assert_eq!((f.pad, f.rolled_bytes), (0, 3));
        let f = Fold::new(space, &[], 5).unwrap();
        assert_eq!(f.rolled_bytes, 2);
        assert_eq!(
            Fold::new(space, &[], 4),
            Err(SpaceTooSmall {
                offered: 4,
                needed: 5
            })
        );
    }

    #[test]
    fn prefixes_are_unique_reused_and_bounded() {
        let mut a = PrefixAllocator::new(1);
        let all: Vec<Vec<u8>> = std::iter::from_fn(|| a.allocate().map(|p| p.to_vec())).collect();
        assert_eq!(all.len(), 255);
        let set: std::collections::BTreeSet<_> = all.iter().cloned().collect();
        assert_eq!(set.len(), 255);
        assert!(!set.contains(&vec![0u8]));
        a.release(&[42]);
        a.release(&[7]);
        assert_eq!(
            a.allocate().as_deref(),
            Some(&[42][..]),
            "oldest released first"
        );
        assert_eq!(a.allocate().as_deref(), Some(&[7][..]));
        assert_eq!(a.allocate(), None);
        let mut b = PrefixAllocator::new(1);
        let first = b.allocate().unwrap();
        b.release(&first);
        assert_ne!(b.allocate(), Some(first), "fresh prefixes before reuse");
    }
}
