//! Authority keys: the long-term secp256k1 key a pool (or our proxy, or a coin adapter) signs its
//! Noise certificates with, in the base58check forms SRI's configuration files use.
//!
//! - Public key: base58check of 34 bytes, the 2-byte version prefix `[0x01, 0x00]` followed by
//!   the 32-byte x-only (BIP340) key.
//! - Secret key: base58check of the 32 raw secret bytes.

use std::{
    fmt,
    sync::{Arc, OnceLock},
};

use secp256k1::{Keypair, Secp256k1, SecretKey, XOnlyPublicKey};

use super::{error::KeyError, noise::NoiseResponder};

/// The version prefix SRI puts in front of x-only public keys (`1u16`, little-endian).
const PUBLIC_KEY_VERSION: [u8; 2] = [0x01, 0x00];

/// An authority public key: 32-byte x-only secp256k1 key. Connecting to an SV2 server with one
/// checks that the server's Noise certificate is signed by it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct AuthorityPublicKey([u8; 32]);

impl AuthorityPublicKey {
    /// Parses the base58check form (`[0x01, 0x00] ++ x-only key`).
    pub fn from_base58(s: &str) -> Result<Self, KeyError> {
        let bytes = bs58::decode(s.trim())
            .with_check(None)
            .into_vec()
            .map_err(|_| KeyError::Base58)?;
        if bytes.len() != 34 {
            return Err(KeyError::Length {
                expected: 34,
                actual: bytes.len(),
            });
        }
        if bytes[..2] != PUBLIC_KEY_VERSION {
            return Err(KeyError::Version([bytes[0], bytes[1]]));
        }
        let mut key = [0u8; 32];
        key.copy_from_slice(&bytes[2..]);
        Self::from_bytes(key)
    }

    /// The base58check form, as configuration files hold it.
    pub fn to_base58(&self) -> String {
        let mut bytes = Vec::with_capacity(34);
        bytes.extend_from_slice(&PUBLIC_KEY_VERSION);
        bytes.extend_from_slice(&self.0);
        bs58::encode(bytes).with_check().into_string()
    }

    /// From the 32 x-only key bytes; fails if they are not a curve point.
    pub fn from_bytes(bytes: [u8; 32]) -> Result<Self, KeyError> {
        XOnlyPublicKey::from_slice(&bytes).map_err(|_| KeyError::InvalidPublicKey)?;
        Ok(Self(bytes))
    }

    /// The 32 x-only key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub(crate) fn x_only(&self) -> XOnlyPublicKey {
        XOnlyPublicKey::from_slice(&self.0).expect("validated when constructed")
    }
}

impl fmt::Display for AuthorityPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base58())
    }
}

impl fmt::Debug for AuthorityPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AuthorityPublicKey({})", self.to_base58())
    }
}

impl std::str::FromStr for AuthorityPublicKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        Self::from_base58(s)
    }
}

/// An authority key pair: what an SV2 server (our proxy's downstream ports, a coin adapter)
/// signs its per-connection Noise certificates with. `Debug` never prints the secret.
///
/// Clones share one [`NoiseResponder`] (static key and signed certificate), made on the first
/// handshake: a listener holds one pair for all its connections.
#[derive(Clone)]
pub struct AuthorityKeypair {
    keypair: Keypair,
    public: AuthorityPublicKey,
    noise: Arc<OnceLock<NoiseResponder>>,
}

impl AuthorityKeypair {
    /// Parses the configured pair and checks that the secret belongs to the public key, so a
    /// copy-paste mistake fails at startup rather than as `AuthorityMismatch` on every miner.
    pub fn from_base58(public: &str, secret: &str) -> Result<Self, KeyError> {
        let configured = AuthorityPublicKey::from_base58(public)?;
        let mut bytes = bs58::decode(secret.trim())
            .with_check(None)
            .into_vec()
            .map_err(|_| KeyError::Base58)?;
        let result = if bytes.len() == 32 {
            Self::from_secret_bytes(&bytes)
        } else {
            Err(KeyError::Length {
                expected: 32,
                actual: bytes.len(),
            })
        };
        bytes.iter_mut().for_each(|b| *b = 0);
        let pair = result?;
        if pair.public != configured {
            return Err(KeyError::Mismatch {
                configured,
                derived: pair.public,
            });
        }
        Ok(pair)
    }

    /// A fresh random key pair (tests, load generator).
    pub fn generate() -> Self {
        let secp = Secp256k1::new();
        let keypair = Keypair::new(&secp, &mut secp256k1::rand::thread_rng());
        Self::from_keypair(keypair)
    }

    fn from_secret_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        let secret = SecretKey::from_slice(bytes).map_err(|_| KeyError::InvalidSecretKey)?;
        let secp = Secp256k1::new();
        Ok(Self::from_keypair(Keypair::from_secret_key(&secp, &secret)))
    }

    fn from_keypair(keypair: Keypair) -> Self {
        let (x_only, _parity) = keypair.x_only_public_key();
        Self {
            keypair,
            public: AuthorityPublicKey(x_only.serialize()),
            noise: Arc::default(),
        }
    }

    /// The Noise responder state for this pair (created on first use, shared by clones).
    pub fn noise_responder(&self) -> &NoiseResponder {
        self.noise.get_or_init(|| NoiseResponder::new(self.keypair))
    }

    /// The public half, to hand to clients.
    pub fn public_key(&self) -> AuthorityPublicKey {
        self.public
    }

    /// The secret key in base58check form (to write a generated pair into a config).
    pub fn secret_to_base58(&self) -> String {
        bs58::encode(self.keypair.secret_bytes())
            .with_check()
            .into_string()
    }
}

impl fmt::Debug for AuthorityKeypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthorityKeypair")
            .field("public", &self.public)
            .field("secret", &"<redacted>")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PUB: &str = "9aubsUESvSxGovf93cGCKXsAQwoPGz8JAqLVH36e9wcGa1rPWQB";
    const SEC: &str = "2Xifp7Jz6CPcphddKSKA9Pqga5mfk82powffv1mRkX1ijdETes";

    #[test]
    fn public_key_round_trips_through_base58() {
        let key = AuthorityPublicKey::from_base58(PUB).unwrap();
        assert_eq!(key.to_base58(), PUB);
        assert_eq!(key.to_string().parse::<AuthorityPublicKey>().unwrap(), key);
    }

    #[test]
    fn generated_pairs_round_trip() {
        let pair = AuthorityKeypair::generate();
        let public = pair.public_key().to_base58();
        let secret = pair.secret_to_base58();
        let again = AuthorityKeypair::from_base58(&public, &secret).unwrap();
        assert_eq!(again.public_key(), pair.public_key());
        assert!(!format!("{pair:?}").contains(&secret));
    }

    #[test]
    fn malformed_keys_are_typed_errors() {
        assert_eq!(
            AuthorityPublicKey::from_base58("not base58 0OIl"),
            Err(KeyError::Base58)
        );
        // A valid base58check secret is 32 bytes, not 34.
        assert!(matches!(
            AuthorityPublicKey::from_base58(SEC),
            Err(KeyError::Length {
                expected: 34,
                actual: 32
            })
        ));
        let mut wrong_version = vec![0x02, 0x00];
        wrong_version.extend_from_slice(AuthorityPublicKey::from_base58(PUB).unwrap().as_bytes());
        let s = bs58::encode(wrong_version).with_check().into_string();
        assert_eq!(
            AuthorityPublicKey::from_base58(&s),
            Err(KeyError::Version([0x02, 0x00]))
        );
        let zero_secret = bs58::encode([0u8; 32]).with_check().into_string();
        assert!(matches!(
            AuthorityKeypair::from_base58(PUB, &zero_secret),
            Err(KeyError::InvalidSecretKey)
        ));
    }
}
