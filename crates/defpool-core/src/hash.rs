//! The proof-of-work hash functions and double SHA-256 for txids and merkle nodes.

use sha2::{Digest, Sha256};

use crate::coin::Algorithm;

/// A 32-byte hash in the byte order the hash function produces (the order used inside headers
/// and merkle trees; block explorers show it reversed).
pub type Hash32 = [u8; 32];

/// SHA-256 applied twice.
pub fn sha256d(data: &[u8]) -> Hash32 {
    let first = Sha256::digest(data);
    Sha256::digest(first).into()
}

/// The merkle parent of two nodes: `sha256d(left || right)`.
pub fn merkle_parent(left: &Hash32, right: &Hash32) -> Hash32 {
    let mut buf = [0u8; 64];
    buf[..32].copy_from_slice(left);
    buf[32..].copy_from_slice(right);
    sha256d(&buf)
}

/// scrypt with Litecoin's parameters (N=1024, r=1, p=1), the header as password and salt.
pub fn scrypt_pow(header: &[u8; 80]) -> Hash32 {
    // log2(N)=10, r=1, p=1, 32 output bytes; constant and valid, so the unwraps cannot fail.
    let params = scrypt::Params::new(10, 1, 1).expect("valid scrypt parameters");
    let mut out = [0u8; 32];
    scrypt::scrypt(header, header, &params, &mut out).expect("32 bytes is a valid output length");
    out
}

/// The proof-of-work hash of an 80-byte header under `algorithm`.
pub fn pow_hash(algorithm: Algorithm, header: &[u8; 80]) -> Hash32 {
    match algorithm {
        Algorithm::Sha256d => sha256d(header),
        Algorithm::Scrypt => scrypt_pow(header),
    }
}

/// A hash as block explorers and RPCs print it: bytes reversed, hex.
pub fn to_display_hex(hash: &Hash32) -> String {
    let mut rev = *hash;
    rev.reverse();
    hex::encode(rev)
}

/// Parse a hash printed in display order (as RPCs return block hashes and txids).
pub fn from_display_hex(s: &str) -> Option<Hash32> {
    let mut bytes: Hash32 = hex::decode(s).ok()?.try_into().ok()?;
    bytes.reverse();
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256d_of_empty_input() {
        assert_eq!(
            hex::encode(sha256d(b"")),
            "5df6e0e2761359d30a8275058e299fcc0381534545f55cf43e41983f5d4c9456"
        );
    }

    #[test]
    fn display_hex_round_trips() {
        let h = sha256d(b"defpool");
        assert_eq!(from_display_hex(&to_display_hex(&h)), Some(h));
        assert_eq!(from_display_hex("zz"), None);
    }
}
