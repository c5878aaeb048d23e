//! Our Noise NX responder (the SV2 server side of `Noise_NX_Secp256k1+EllSwift_ChaChaPoly_SHA256`)
//! and the transport cipher states it hands over, wire-compatible with SRI's `noise_sv2` 2.0.0.
//!
//! Why not SRI's `Responder`: it generates a fresh ephemeral *and* static key per connection,
//! each through a new randomized secp256k1 context, and signs the certificate per handshake
//! (≈ 280 µs per handshake on the benchmark host). Here the static key, its ElligatorSwift
//! encoding, the secp256k1 context and the signed certificate are made once per authority key
//! pair; per connection only the ephemeral key, its encoding, the two ECDHs, the hashing and the
//! AEAD remain.
//!
//! The handshake, step by step as `noise_sv2` does it (which SRI's initiator checks, byte for
//! byte through the handshake hash and the MACs):
//!
//! - `ck = SHA256("Noise_NX_Secp256k1+EllSwift_ChaChaPoly_SHA256")`, `h = SHA256(ck)`;
//! - initiator → `re` (64-byte ElligatorSwift key): `h = H(h ‖ re)`, then `h = H(h ‖ "")`
//!   (its empty payload, no key yet);
//! - responder → `e ‖ enc(s) ‖ enc(cert)` (64 + 80 + 90 = 234 bytes): `h = H(h ‖ e)`;
//!   `ck, k = HKDF(ck, ECDH(e, re))`; `enc(s)` = ChaCha20-Poly1305 of our static key's
//!   ElligatorSwift encoding with `h` as associated data, nonce 0; `h = H(h ‖ enc(s))`;
//!   `ck, k = HKDF(ck, ECDH(s, re))`; `enc(cert)` likewise with nonce 0; `h = H(h ‖ enc(cert))`;
//! - split: `k1, k2 = HKDF(ck, "")`; the initiator sends with `k1`, the responder with `k2`.
//!
//! ECDH is libsecp256k1's `ellswift_xdh` with the BIP324 hash (party B for the responder); HKDF
//! is Noise's two-output HKDF over HMAC-SHA256; nonces are 12 bytes, four zero bytes then the
//! 64-bit counter little-endian (RFC 7539 layout), starting at 0 for every new key.
//!
//! The certificate ("signature noise message", 74 bytes): version `u16` LE (0), `valid_from`
//! and `not_valid_after` `u32` LE (unix seconds), and a BIP340 Schnorr signature by the authority
//! key over `SHA256(version ‖ valid_from ‖ not_valid_after ‖ x-only static key)`. SRI's
//! initiator accepts it within ±10 s of that window.

use std::{
    fmt,
    sync::{Mutex, OnceLock},
};

use chacha20poly1305::{aead::AeadInPlace, ChaCha20Poly1305, Key, KeyInit, Nonce, Tag};
use secp256k1::{
    ellswift::{ElligatorSwift, ElligatorSwiftParty},
    rand::thread_rng,
    All, Keypair, Message, Secp256k1, SecretKey,
};
use sha2::{Digest, Sha256};
use zeroize::Zeroize;

/// Size of the initiator's first message: its ephemeral key, ElligatorSwift-encoded.
pub const HELLO_SIZE: usize = 64;
/// Size of the responder's reply: `e ‖ enc(s) ‖ enc(cert)`.
pub const REPLY_SIZE: usize = HELLO_SIZE + (HELLO_SIZE + MAC_SIZE) + (CERT_SIZE + MAC_SIZE);
/// The AEAD tag appended to every encrypted message.
pub const MAC_SIZE: usize = 16;
/// Size of the plaintext certificate.
pub const CERT_SIZE: usize = 74;
/// The only certificate version defined.
pub const CERTIFICATE_VERSION: u16 = 0;

/// `SHA256("Noise_NX_Secp256k1+EllSwift_ChaChaPoly_SHA256")`: the initial chaining key.
const PROTOCOL_NAME_HASH: [u8; 32] = [
    46, 180, 120, 129, 32, 142, 158, 238, 31, 102, 159, 103, 198, 110, 231, 14, 169, 234, 136, 9,
    13, 80, 63, 232, 48, 220, 75, 200, 62, 41, 191, 16,
];

/// One context for every handshake of the process: creating and randomizing one costs about as
/// much as an ECDH. Randomized once, at creation (side-channel blinding for signing and key
/// generation).
fn secp() -> &'static Secp256k1<All> {
    static SECP: OnceLock<Secp256k1<All>> = OnceLock::new();
    SECP.get_or_init(Secp256k1::new)
}

/// A crypto operation that cannot fail on valid lengths did (an AEAD message over its size
/// limit, an exhausted nonce, a MAC that does not verify).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CryptoError(pub &'static str);

impl fmt::Display for CryptoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for CryptoError {}

/// A signed certificate as sent (see the module documentation for the layout).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Certificate {
    pub version: u16,
    pub valid_from: u32,
    pub not_valid_after: u32,
    pub signature: [u8; 64],
}

impl Certificate {
    /// The 74 bytes of the signature noise message.
    pub fn to_bytes(&self) -> [u8; CERT_SIZE] {
        let mut out = [0u8; CERT_SIZE];
        out[..10].copy_from_slice(&Self::signed_fields(
            self.version,
            self.valid_from,
            self.not_valid_after,
        ));
        out[10..].copy_from_slice(&self.signature);
        out
    }

    fn signed_fields(version: u16, valid_from: u32, not_valid_after: u32) -> [u8; 10] {
        let mut out = [0u8; 10];
        out[..2].copy_from_slice(&version.to_le_bytes());
        out[2..6].copy_from_slice(&valid_from.to_le_bytes());
        out[6..].copy_from_slice(&not_valid_after.to_le_bytes());
        out
    }
}

/// The certificate in use and the validity it was asked for.
#[derive(Clone, Copy)]
struct CachedCertificate {
    validity: u32,
    cert: Certificate,
}

impl CachedCertificate {
    /// Served until half its validity has passed, so every initiator gets at least half the
    /// validity SRI would give (tolerating that much clock skew), for one signature per half
    /// period instead of one per handshake. Re-signed at once if our clock went back before
    /// `valid_from`.
    fn serves(&self, validity: u32, now: u32) -> bool {
        self.validity == validity
            && now >= self.cert.valid_from
            && now - self.cert.valid_from < (validity / 2).max(1)
    }
}

/// The responder state shared by every handshake of one authority key pair: the static key,
/// its encoding and the current certificate.
pub struct NoiseResponder {
    authority: Keypair,
    static_secret: SecretKey,
    static_ellswift: [u8; 64],
    static_x_only: [u8; 32],
    cert: Mutex<Option<CachedCertificate>>,
}

impl fmt::Debug for NoiseResponder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NoiseResponder")
            .field("static_key", &hex::encode(self.static_x_only))
            .finish_non_exhaustive()
    }
}

impl NoiseResponder {
    /// A fresh static key for certificates signed by `authority`.
    pub fn new(authority: Keypair) -> Self {
        let secp = secp();
        let static_secret = SecretKey::new(&mut thread_rng());
        let static_ellswift = ElligatorSwift::from_seckey(secp, static_secret, None).to_array();
        let static_x_only = static_secret.x_only_public_key(secp).0.serialize();
        Self {
            authority,
            static_secret,
            static_ellswift,
            static_x_only,
            cert: Mutex::new(None),
        }
    }

    /// The certificate sent at `now` (unix seconds) for `validity` seconds: the cached one, or a
    /// new one valid from `now` to `now + validity` (SRI's window).
    pub fn certificate(&self, validity: u32, now: u32) -> Certificate {
        let mut cached = self.cert.lock().unwrap_or_else(|e| e.into_inner());
        match *cached {
            Some(c) if c.serves(validity, now) => c.cert,
            _ => {
                let cert = self.sign(validity, now);
                *cached = Some(CachedCertificate { validity, cert });
                cert
            }
        }
    }

    fn sign(&self, validity: u32, now: u32) -> Certificate {
        let not_valid_after = now.saturating_add(validity);
        let mut hasher = Sha256::new();
        hasher.update(Certificate::signed_fields(
            CERTIFICATE_VERSION,
            now,
            not_valid_after,
        ));
        hasher.update(self.static_x_only);
        let digest: [u8; 32] = hasher.finalize().into();
        let signature = secp().sign_schnorr(&Message::from_digest(digest), &self.authority);
        Certificate {
            version: CERTIFICATE_VERSION,
            valid_from: now,
            not_valid_after,
            signature: *signature.as_ref(),
        }
    }

    /// The responder's step: from the initiator's ephemeral key `hello`, the 234-byte reply and
    /// the transport ciphers. Any 64 bytes are a valid ElligatorSwift encoding, so a malformed
    /// hello is only detected by the first transport message's MAC (the initiator's keys differ).
    pub fn respond(
        &self,
        hello: &[u8; HELLO_SIZE],
        cert_validity: u32,
        now: u32,
    ) -> Result<([u8; REPLY_SIZE], TransportCiphers), CryptoError> {
        let secp = secp();
        let mut state = SymmetricState::new();
        state.mix_hash(hello);
        // The initiator's (empty) payload: no key yet, so only hashed.
        state.mix_hash(&[]);

        let mut reply = [0u8; REPLY_SIZE];
        // Ephemeral key. SRI also negates it to even Y; irrelevant here: the ECDH is x-only and
        // the encoding carries the full point.
        let mut e = SecretKey::new(&mut thread_rng());
        let e_ellswift = ElligatorSwift::from_seckey(secp, e, None);
        reply[..HELLO_SIZE].copy_from_slice(&e_ellswift.to_array());
        state.mix_hash(&reply[..HELLO_SIZE]);

        let theirs = ElligatorSwift::from_array(*hello);
        let mut ee =
            ElligatorSwift::shared_secret(theirs, e_ellswift, e, ElligatorSwiftParty::B, None)
                .to_secret_bytes();
        e.non_secure_erase();
        state.mix_key(&ee);
        ee.zeroize();

        let (_, rest) = reply.split_at_mut(HELLO_SIZE);
        let (enc_static, enc_cert) = rest.split_at_mut(HELLO_SIZE + MAC_SIZE);
        enc_static[..HELLO_SIZE].copy_from_slice(&self.static_ellswift);
        state.encrypt_and_hash(enc_static)?;

        let mut es = ElligatorSwift::shared_secret(
            theirs,
            ElligatorSwift::from_array(self.static_ellswift),
            self.static_secret,
            ElligatorSwiftParty::B,
            None,
        )
        .to_secret_bytes();
        state.mix_key(&es);
        es.zeroize();

        enc_cert[..CERT_SIZE].copy_from_slice(&self.certificate(cert_validity, now).to_bytes());
        state.encrypt_and_hash(enc_cert)?;

        let (mut k1, mut k2) = hkdf2(&state.ck, &[]);
        let ciphers = TransportCiphers {
            encryptor: CipherState::new(&k2),
            decryptor: CipherState::new(&k1),
        };
        k1.zeroize();
        k2.zeroize();
        Ok((reply, ciphers))
    }
}

impl Drop for NoiseResponder {
    fn drop(&mut self) {
        self.static_secret.non_secure_erase();
    }
}

/// The two directions of an established session, from the responder's side.
pub struct TransportCiphers {
    /// What we send with (the initiator decrypts with the same key).
    pub encryptor: CipherState,
    /// What we receive with.
    pub decryptor: CipherState,
}

impl fmt::Debug for TransportCiphers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransportCiphers").finish_non_exhaustive()
    }
}

/// One direction's ChaCha20-Poly1305 key and nonce counter. A failed decryption does not use
/// up a nonce (as in `noise_sv2`); the counter's last value is never used, as in Noise.
pub struct CipherState {
    aead: ChaCha20Poly1305,
    n: u64,
}

impl fmt::Debug for CipherState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CipherState").field("n", &self.n).finish()
    }
}

impl CipherState {
    fn new(key: &[u8; 32]) -> Self {
        Self {
            aead: ChaCha20Poly1305::new(Key::from_slice(key)),
            n: 0,
        }
    }

    fn next_nonce(&self) -> Result<Nonce, CryptoError> {
        if self.n == u64::MAX {
            return Err(CryptoError("nonce exhausted"));
        }
        let mut nonce = Nonce::default();
        nonce[4..].copy_from_slice(&self.n.to_le_bytes());
        Ok(nonce)
    }

    /// Encrypts `buf` in place with associated data `ad` and appends the 16-byte tag.
    pub fn encrypt_with_ad(&mut self, ad: &[u8], buf: &mut Vec<u8>) -> Result<(), CryptoError> {
        let nonce = self.next_nonce()?;
        let tag = self
            .aead
            .encrypt_in_place_detached(&nonce, ad, buf)
            .map_err(|_| CryptoError("encryption failed"))?;
        buf.extend_from_slice(&tag);
        self.n += 1;
        Ok(())
    }

    /// Encrypts `buf` in place (no associated data) and appends the tag: a transport message.
    pub fn encrypt(&mut self, buf: &mut Vec<u8>) -> Result<(), CryptoError> {
        self.encrypt_with_ad(&[], buf)
    }

    /// Checks and strips the tag at the end of `buf` and decrypts the rest in place.
    pub fn decrypt(&mut self, buf: &mut Vec<u8>) -> Result<(), CryptoError> {
        let body = buf
            .len()
            .checked_sub(MAC_SIZE)
            .ok_or(CryptoError("message shorter than its MAC"))?;
        let nonce = self.next_nonce()?;
        let (data, tag) = buf.split_at_mut(body);
        self.aead
            .decrypt_in_place_detached(&nonce, &[], data, Tag::from_slice(tag))
            .map_err(|_| CryptoError("bad MAC"))?;
        buf.truncate(body);
        self.n += 1;
        Ok(())
    }

    /// Encrypts a fixed-size handshake field in place; its last `MAC_SIZE` bytes receive the tag.
    fn encrypt_field(&mut self, ad: &[u8], field: &mut [u8]) -> Result<(), CryptoError> {
        let nonce = self.next_nonce()?;
        let body = field.len() - MAC_SIZE;
        let (data, tag_out) = field.split_at_mut(body);
        let tag = self
            .aead
            .encrypt_in_place_detached(&nonce, ad, data)
            .map_err(|_| CryptoError("encryption failed"))?;
        tag_out.copy_from_slice(&tag);
        self.n += 1;
        Ok(())
    }
}

/// The handshake's chaining key, hash and current key.
struct SymmetricState {
    ck: [u8; 32],
    h: [u8; 32],
    k: Option<CipherState>,
}

impl SymmetricState {
    fn new() -> Self {
        /// `SHA256(PROTOCOL_NAME_HASH)`, computed once.
        static H0: OnceLock<[u8; 32]> = OnceLock::new();
        Self {
            ck: PROTOCOL_NAME_HASH,
            h: *H0.get_or_init(|| Sha256::digest(PROTOCOL_NAME_HASH).into()),
            k: None,
        }
    }

    fn mix_hash(&mut self, data: &[u8]) {
        let mut hasher = Sha256::new();
        hasher.update(self.h);
        hasher.update(data);
        self.h = hasher.finalize().into();
    }

    fn mix_key(&mut self, input_key_material: &[u8]) {
        let (ck, mut k) = hkdf2(&self.ck, input_key_material);
        self.ck = ck;
        self.k = Some(CipherState::new(&k));
        k.zeroize();
    }

    /// Encrypts `field` (plaintext then room for the tag) with `h` as associated data, then
    /// hashes the ciphertext.
    fn encrypt_and_hash(&mut self, field: &mut [u8]) -> Result<(), CryptoError> {
        let h = self.h;
        self.k
            .as_mut()
            .ok_or(CryptoError("no handshake key"))?
            .encrypt_field(&h, field)?;
        self.mix_hash(field);
        Ok(())
    }
}

impl Drop for SymmetricState {
    fn drop(&mut self) {
        self.ck.zeroize();
        self.h.zeroize();
    }
}

fn hmac_sha256(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    let mut pad = [0x36u8; 64];
    for (p, k) in pad.iter_mut().zip(key) {
        *p ^= k;
    }
    let mut inner = Sha256::new();
    inner.update(pad);
    for part in parts {
        inner.update(part);
    }
    let mut inner: [u8; 32] = inner.finalize().into();
    for p in pad.iter_mut() {
        // 0x36 ^ 0x5c: turn the inner pad into the outer one.
        *p ^= 0x36 ^ 0x5c;
    }
    let mut outer = Sha256::new();
    outer.update(pad);
    outer.update(inner);
    pad.zeroize();
    inner.zeroize();
    outer.finalize().into()
}

/// Noise's HKDF with two outputs.
fn hkdf2(chaining_key: &[u8; 32], input_key_material: &[u8]) -> ([u8; 32], [u8; 32]) {
    let mut temp = hmac_sha256(chaining_key, &[input_key_material]);
    let out1 = hmac_sha256(&temp, &[&[1]]);
    let out2 = hmac_sha256(&temp, &[&out1, &[2]]);
    temp.zeroize();
    (out1, out2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_name_hash_is_the_spec_name() {
        let hashed: [u8; 32] =
            Sha256::digest(b"Noise_NX_Secp256k1+EllSwift_ChaChaPoly_SHA256").into();
        assert_eq!(hashed, PROTOCOL_NAME_HASH);
        assert_eq!(
            PROTOCOL_NAME_HASH,
            stratum_core::noise_sv2::NOISE_HASHED_PROTOCOL_NAME_CHACHA
        );
        assert_eq!(
            REPLY_SIZE,
            stratum_core::noise_sv2::INITIATOR_EXPECTED_HANDSHAKE_MESSAGE_SIZE
        );
    }

    #[test]
    fn hmac_matches_rfc_4231_case_2_shape() {
        // RFC 4231 test case 2 uses a 4-byte key; HMAC pads keys with zeros, so the same key
        // zero-extended to 32 bytes gives the same MAC.
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(b"Jefe");
        let mac = hmac_sha256(&key, &[b"what do ya want ", b"for nothing?"]);
        assert_eq!(
            hex::encode(mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn nonce_layout_and_exhaustion() {
        let mut a = CipherState::new(&[7; 32]);
        let mut b = CipherState::new(&[7; 32]);
        a.n = 0x0102_0304_0506_0708;
        b.n = a.n;
        assert_eq!(
            a.next_nonce().unwrap().as_slice(),
            &[0, 0, 0, 0, 8, 7, 6, 5, 4, 3, 2, 1]
        );
        let mut msg = b"abc".to_vec();
        a.encrypt(&mut msg).unwrap();
        assert_eq!(msg.len(), 3 + MAC_SIZE);
        let mut tampered = msg.clone();
        tampered[0] ^= 1;
        assert!(b.decrypt(&mut tampered).is_err());
        // The failed attempt used no nonce.
        b.decrypt(&mut msg).unwrap();
        assert_eq!(msg, b"abc");
        a.n = u64::MAX;
        assert!(a.encrypt(&mut msg).is_err());
    }
}
