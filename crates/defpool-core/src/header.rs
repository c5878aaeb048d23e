//! The 80-byte block header shared by every built-in coin.

use crate::hash::Hash32;

/// A block header's fields, in the byte orders they are serialized with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub version: u32,
    /// Previous block hash, internal byte order.
    pub prev_hash: Hash32,
    /// Merkle root, internal byte order.
    pub merkle_root: Hash32,
    pub ntime: u32,
    pub nbits: u32,
    pub nonce: u32,
}

impl Header {
    pub const SIZE: usize = 80;

    pub fn serialize(&self) -> [u8; 80] {
        let mut out = [0u8; 80];
        out[0..4].copy_from_slice(&self.version.to_le_bytes());
        out[4..36].copy_from_slice(&self.prev_hash);
        out[36..68].copy_from_slice(&self.merkle_root);
        out[68..72].copy_from_slice(&self.ntime.to_le_bytes());
        out[72..76].copy_from_slice(&self.nbits.to_le_bytes());
        out[76..80].copy_from_slice(&self.nonce.to_le_bytes());
        out
    }

    pub fn deserialize(bytes: &[u8; 80]) -> Header {
        let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
        Header {
            version: u32_at(0),
            prev_hash: bytes[4..36].try_into().expect("32 bytes"),
            merkle_root: bytes[36..68].try_into().expect("32 bytes"),
            ntime: u32_at(68),
            nbits: u32_at(72),
            nonce: u32_at(76),
        }
    }

    /// The block's identifying hash: sha256d of the header, for every coin (scrypt coins too;
    /// scrypt is only their proof of work).
    pub fn block_hash(&self) -> Hash32 {
        crate::hash::sha256d(&self.serialize())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn serialization_round_trips(bytes in prop::array::uniform32(any::<u8>()), v: u32, t: u32, b: u32, n: u32) {
            let h = Header { version: v, prev_hash: bytes, merkle_root: [7; 32], ntime: t, nbits: b, nonce: n };
            prop_assert_eq!(Header::deserialize(&h.serialize()), h);
        }
    }
}
