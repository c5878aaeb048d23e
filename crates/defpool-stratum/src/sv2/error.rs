//! Errors of the SV2 transport, codec and key handling.

use std::time::Duration;

use super::keys::AuthorityPublicKey;

/// Why an SV2 connection or message failed.
///
/// Every variant ends the connection it came from; [`Sv2Error::is_protocol_violation`] tells the
/// caller whether the peer misbehaved (log loudly, count it against the peer) or whether it was
/// the network or our own side (log quietly, maybe retry).
#[derive(Debug, thiserror::Error)]
pub enum Sv2Error {
    /// The socket failed, or closed in the middle of a frame.
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
    /// The peer closed the connection cleanly between two frames.
    #[error("connection closed by the peer")]
    Closed,
    /// The Noise handshake (and, on the responder side, the initiator's first message) did not
    /// complete in time.
    #[error("handshake not completed within {0:?}")]
    HandshakeTimeout(Duration),
    /// The Noise handshake failed: a malformed handshake message, a bad MAC, or a certificate
    /// with an unknown version.
    #[error("noise handshake failed: {0}")]
    Handshake(String),
    /// The server's certificate is not signed by the authority key we expected: another pool (or
    /// a man in the middle) answered. Never retried blindly: this is a configuration or security
    /// problem.
    #[error("the server's certificate is not signed by the expected authority key {expected}")]
    AuthorityMismatch { expected: AuthorityPublicKey },
    /// The server's certificate is outside its validity window (with SRI's 10 s leeway): its
    /// clock or ours is wrong.
    #[error(
        "the server's certificate is valid from {valid_from} to {not_valid_after}, now is {now} \
         (unix seconds)"
    )]
    CertificateExpired {
        valid_from: u32,
        not_valid_after: u32,
        now: u32,
    },
    /// A transport frame failed authentication (bad MAC): corrupted, replayed or forged.
    #[error("frame decryption failed (bad MAC)")]
    Decrypt,
    /// A frame header declares a payload above the configured [`super::FrameLimits`]; nothing of
    /// the payload was read.
    #[error("frame declares a {declared}-byte payload, the limit is {limit}")]
    FrameTooLarge { declared: usize, limit: usize },
    /// The message type (or extension type) is not one SV2 defines.
    #[error("unknown message type {msg_type:#04x} (extension {extension:#06x})")]
    UnknownMessage { msg_type: u8, extension: u16 },
    /// A message SV2 defines but this codec does not carry (job declaration, template
    /// distribution, custom mining jobs): the peer uses a protocol we did not negotiate.
    #[error("unsupported message {name} ({msg_type:#04x})")]
    UnsupportedMessage { msg_type: u8, name: &'static str },
    /// The payload does not decode as the message its type announces.
    #[error("malformed {name} payload: {detail}")]
    BadPayload { name: &'static str, detail: String },
    /// We were asked to send a message the wire format cannot carry (a string over 255 bytes, an
    /// extranonce over 32 bytes, ...). Our bug or our caller's, not the peer's.
    #[error("cannot encode {name}: {detail}")]
    Encode { name: &'static str, detail: String },
}

impl Sv2Error {
    /// True when the peer broke the protocol: malformed or timed-out handshake, bad MAC,
    /// certificate problems, oversized frames, unknown or unsupported message types and bad
    /// payloads. False for I/O errors, a clean close, and our own encoding errors.
    ///
    /// A handshake timeout counts as a violation: the peer connected and did not speak SV2 in
    /// time (typically an SV1 miner on an SV2 port).
    pub fn is_protocol_violation(&self) -> bool {
        match self {
            Sv2Error::Io(_) | Sv2Error::Closed | Sv2Error::Encode { .. } => false,
            Sv2Error::HandshakeTimeout(_)
            | Sv2Error::Handshake(_)
            | Sv2Error::AuthorityMismatch { .. }
            | Sv2Error::CertificateExpired { .. }
            | Sv2Error::Decrypt
            | Sv2Error::FrameTooLarge { .. }
            | Sv2Error::UnknownMessage { .. }
            | Sv2Error::UnsupportedMessage { .. }
            | Sv2Error::BadPayload { .. } => true,
        }
    }
}

/// Why an authority key could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not base58, or the 4-byte checksum does not match.
    #[error("not a base58check string")]
    Base58,
    /// Decoded to the wrong number of bytes.
    #[error("decodes to {actual} bytes, expected {expected}")]
    Length { expected: usize, actual: usize },
    /// A public key whose 2-byte version prefix is not `[0x01, 0x00]`.
    #[error("unknown key version prefix {0:02x?}, expected [01, 00]")]
    Version([u8; 2]),
    /// 32 bytes that are not the x coordinate of a secp256k1 point.
    #[error("not a valid x-only secp256k1 public key")]
    InvalidPublicKey,
    /// 32 bytes that are not a valid secp256k1 secret key (zero or not below the group order).
    #[error("not a valid secp256k1 secret key")]
    InvalidSecretKey,
    /// The secret key's public key is not the configured public key.
    #[error("the secret key belongs to public key {derived}, not to the configured {configured}")]
    Mismatch {
        configured: AuthorityPublicKey,
        derived: AuthorityPublicKey,
    },
}
