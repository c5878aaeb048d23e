//! Stratum V2: the Noise-encrypted transport and an owned message codec, built on the Stratum
//! Reference Implementation crates (`stratum-core` 0.6.0: `noise_sv2` 2.0.0 for the initiator's
//! handshake and ciphers, while the responder is ours in [`noise`], wire-compatible with it;
//! `framing_sv2` 8.0.0 for frame headers, `codec_sv2` 7.0.0 for the chunk layout,
//! `parsers_sv2` 0.6.0 / `mining_sv2` 12.0.0 / `common_messages_sv2` 9.0.0 / `binary_sv2` 7.0.0
//! for the messages).
//!
//! - [`accept`] (server, Noise responder) and [`connect`] (client, Noise initiator) turn a
//!   `TcpStream` into an [`Sv2Connection`], which splits into an [`Sv2Reader`] and an
//!   [`Sv2Writer`] for separate tasks.
//! - [`Message`] is the owned message set (no SRI lifetimes leak out). [`decode_frame_payload`]
//!   and [`encode_frame`] are pure, for tests and fuzzing.
//! - [`AuthorityKeypair`] / [`AuthorityPublicKey`] parse the configuration's base58 keys.
//! - Every failure is an [`Sv2Error`]; [`Sv2Error::is_protocol_violation`] separates a
//!   misbehaving peer from I/O trouble.
//!
//! Byte orders are documented on [`message`]: every 32-byte field (targets, hashes) is SRI's
//! little-endian `U256`.

mod error;
mod keys;
pub mod message;
pub mod noise;
mod transport;

pub use error::{KeyError, Sv2Error};
pub use keys::{AuthorityKeypair, AuthorityPublicKey};
pub use message::{
    decode_frame, decode_frame_payload, encode_frame, encode_frame_payload, message_name, Message,
    Protocol, CHANNEL_MSG_BIT, FRAME_HEADER_SIZE,
};
pub use transport::{
    accept, accept_with_timeout, connect, connect_with_timeout, EncodedFrame, FrameLimits,
    Sv2Connection, Sv2Reader, Sv2Writer, DEFAULT_HANDSHAKE_TIMEOUT,
};

/// The SV2 protocol version this codec speaks (the only one defined).
pub const PROTOCOL_VERSION: u16 = 2;

/// `SetupConnection.flags` / `SetupConnectionSuccess.flags` for the mining protocol.
pub mod setup_flags {
    /// Client: the device only understands standard (header-only) jobs.
    pub const REQUIRES_STANDARD_JOBS: u32 = 1 << 0;
    /// Client: the device wants to select its own work (job declaration).
    pub const REQUIRES_WORK_SELECTION: u32 = 1 << 1;
    /// Client: the device needs version rolling (BIP320 bits).
    pub const REQUIRES_VERSION_ROLLING: u32 = 1 << 2;

    /// Server (in `SetupConnectionSuccess`): the version field must not be rolled.
    pub const SERVER_REQUIRES_FIXED_VERSION: u32 = 1 << 0;
    /// Server (in `SetupConnectionSuccess`): only extended channels are offered.
    pub const SERVER_REQUIRES_EXTENDED_CHANNELS: u32 = 1 << 1;
}

/// Spec error codes (the `error_code` / `reason_code` strings), taken from SRI's constants.
pub mod error_code {
    use stratum_core::{common_messages_sv2 as common, mining_sv2 as mining};

    // SetupConnection.Error
    pub const UNSUPPORTED_FEATURE_FLAGS: &str =
        common::ERROR_CODE_SETUP_CONNECTION_UNSUPPORTED_FEATURE_FLAGS;
    pub const UNSUPPORTED_PROTOCOL: &str = common::ERROR_CODE_SETUP_CONNECTION_UNSUPPORTED_PROTOCOL;
    pub const PROTOCOL_VERSION_MISMATCH: &str =
        common::ERROR_CODE_SETUP_CONNECTION_PROTOCOL_VERSION_MISMATCH;

    // OpenMiningChannel.Error
    pub const UNKNOWN_USER: &str = mining::ERROR_CODE_OPEN_MINING_CHANNEL_UNKNOWN_USER;
    pub const INVALID_USER_IDENTITY: &str =
        mining::ERROR_CODE_OPEN_MINING_CHANNEL_INVALID_USER_IDENTITY;
    pub const MAX_TARGET_OUT_OF_RANGE: &str =
        mining::ERROR_CODE_OPEN_MINING_CHANNEL_MAX_TARGET_OUT_OF_RANGE;
    pub const INVALID_NOMINAL_HASHRATE: &str =
        mining::ERROR_CODE_OPEN_MINING_CHANNEL_INVALID_NOMINAL_HASHRATE;
    pub const MIN_EXTRANONCE_SIZE_TOO_LARGE: &str =
        mining::ERROR_CODE_OPEN_MINING_CHANNEL_MIN_EXTRANONCE_SIZE_TOO_LARGE;
    pub const UNSUPPORTED_MIN_EXTRANONCE_SIZE: &str =
        mining::ERROR_CODE_OPEN_MINING_CHANNEL_UNSUPPORTED_MIN_EXTRANONCE_SIZE;
    pub const CHANNEL_CAPACITY_EXHAUSTED: &str =
        mining::ERROR_CODE_OPEN_MINING_CHANNEL_CHANNEL_CAPACITY_EXHAUSTED;
    pub const STANDARD_CHANNELS_NOT_SUPPORTED_FOR_CUSTOM_WORK: &str =
        mining::ERROR_CODE_OPEN_MINING_CHANNEL_STANDARD_CHANNELS_NOT_SUPPORTED_FOR_CUSTOM_WORK;
    pub const EXTENDED_CHANNELS_NOT_SUPPORTED_FOR_STANDARD_JOBS: &str =
        mining::ERROR_CODE_OPEN_MINING_CHANNEL_EXTENDED_CHANNELS_NOT_SUPPORTED_FOR_STANDARD_JOBS;

    // UpdateChannel.Error, SubmitShares.Error (and CloseChannel reasons)
    pub const INVALID_CHANNEL_ID: &str = mining::ERROR_CODE_SUBMIT_SHARES_INVALID_CHANNEL_ID;
    pub const STALE_SHARE: &str = mining::ERROR_CODE_SUBMIT_SHARES_STALE_SHARE;
    pub const DIFFICULTY_TOO_LOW: &str = mining::ERROR_CODE_SUBMIT_SHARES_DIFFICULTY_TOO_LOW;
    pub const INVALID_JOB_ID: &str = mining::ERROR_CODE_SUBMIT_SHARES_INVALID_JOB_ID;
    pub const INVALID_SHARE: &str = mining::ERROR_CODE_SUBMIT_SHARES_INVALID_SHARE;
    pub const DUPLICATE_SHARE: &str = mining::ERROR_CODE_SUBMIT_SHARES_DUPLICATE_SHARE;
    pub const BAD_EXTRANONCE_SIZE: &str = mining::ERROR_CODE_SUBMIT_SHARES_BAD_EXTRANONCE_SIZE;
    pub const VERSION_ROLLING_NOT_ALLOWED: &str = mining::ERROR_CODE_VERSION_ROLLING_NOT_ALLOWED;
    pub const INVALID_NON_ROLLABLE_VERSION_BIT: &str =
        mining::ERROR_CODE_SUBMIT_SHARES_INVALID_NON_ROLLABLE_VERSION_BIT;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_are_the_spec_strings() {
        use error_code::*;
        assert_eq!(INVALID_CHANNEL_ID, "invalid-channel-id");
        assert_eq!(STALE_SHARE, "stale-share");
        assert_eq!(DIFFICULTY_TOO_LOW, "difficulty-too-low");
        assert_eq!(INVALID_JOB_ID, "invalid-job-id");
        assert_eq!(UNKNOWN_USER, "unknown-user");
        assert_eq!(MAX_TARGET_OUT_OF_RANGE, "max-target-out-of-range");
        assert_eq!(UNSUPPORTED_FEATURE_FLAGS, "unsupported-feature-flags");
        assert_eq!(UNSUPPORTED_PROTOCOL, "unsupported-protocol");
        assert_eq!(PROTOCOL_VERSION_MISMATCH, "protocol-version-mismatch");
        assert_eq!(DUPLICATE_SHARE, "duplicate-share");
    }

    #[test]
    fn setup_flags_match_sri_bit_readers() {
        use setup_flags::*;
        use stratum_core::common_messages_sv2::{
            has_requires_std_job, has_version_rolling, has_work_selection,
        };
        assert!(has_requires_std_job(REQUIRES_STANDARD_JOBS));
        assert!(!has_requires_std_job(REQUIRES_VERSION_ROLLING));
        assert!(has_work_selection(REQUIRES_WORK_SELECTION));
        assert!(has_version_rolling(REQUIRES_VERSION_ROLLING));
        assert!(!has_version_rolling(
            REQUIRES_STANDARD_JOBS | REQUIRES_WORK_SELECTION
        ));
    }
}
