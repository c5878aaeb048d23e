//! The owned SV2 message set DefPool speaks, converted to and from SRI's `parsers_sv2` /
//! `common_messages_sv2` / `mining_sv2` types, which do the actual (de)serialisation.
//!
//! # Byte orders
//!
//! Every `[u8; 32]` field is SRI's `U256`: 32 raw bytes exactly as on the wire, which the SV2
//! spec defines as **little-endian**:
//!
//! - targets (`max_target`, `target`, `maximum_target`) are 256-bit little-endian integers (byte
//!   0 least significant; SRI's channel code reads them with `Target::from_le_bytes`);
//! - `prev_hash`, `merkle_root` and every `merkle_path` entry are hashes in their internal byte
//!   order, the order they take in a serialised block header and in merkle hashing (the reverse
//!   of the hex block explorers print; SRI turns `prev_hash` into a `BlockHash` without reversing).
//!
//! Integers (`version`, `nbits`, `ntime`, `nonce`, ...) are plain numbers; the wire encodes them
//! little-endian. `nominal_hash_rate` is hashes per second as an `f32`.
//!
//! # Strings
//!
//! `STR0_255` fields (`user_identity`, `vendor`, error codes, ...) decode with
//! `String::from_utf8_lossy`: invalid UTF-8 is replaced, never a reason to drop a miner.
//! Encoding a string, extranonce or coinbase part longer than its wire type allows is an
//! [`Sv2Error::Encode`].
//!
//! # What is not carried
//!
//! Job declaration and template distribution messages, `SetCustomMiningJob*`, and extension
//! messages (a non-zero extension type, including extension negotiation) decode to
//! [`Sv2Error::UnsupportedMessage`] / [`Sv2Error::UnknownMessage`]: DefPool never negotiates those
//! protocols. Trailing bytes after a message's fields (extension TLVs) are ignored, as SRI does.

use stratum_core::{
    binary_sv2::{self, Seq0255, Seq064K, Str0255, Sv2Option, B032, B064K, U256},
    common_messages_sv2::{
        self as common, ChannelEndpointChanged, Reconnect, SetupConnection, SetupConnectionError,
        SetupConnectionSuccess,
    },
    framing_sv2::{
        framing::{EncodableFrame, MessageFrame},
        header::Header,
    },
    mining_sv2::{
        self as mining, CloseChannel, NewExtendedMiningJob, NewMiningJob,
        OpenExtendedMiningChannel, OpenExtendedMiningChannelSuccess, OpenMiningChannelError,
        OpenStandardMiningChannel, OpenStandardMiningChannelSuccess, SetExtranoncePrefix,
        SetGroupChannel, SetNewPrevHash, SetTarget, SubmitSharesError, SubmitSharesExtended,
        SubmitSharesStandard, SubmitSharesSuccess, UpdateChannel, UpdateChannelError,
    },
    parsers_sv2::{
        self, AnyMessage, CommonMessageTypes, CommonMessages, JobDeclarationTypes, Mining,
        MiningTypes, ParserError, TemplateDistributionTypes,
    },
};

use super::error::Sv2Error;

/// Bit 15 of a frame's extension type: the message is addressed to a channel.
pub const CHANNEL_MSG_BIT: u16 = 0x8000;

/// Size of a plaintext SV2 frame header: extension type (u16), message type (u8), payload
/// length (u24), all little-endian.
pub const FRAME_HEADER_SIZE: usize = stratum_core::framing_sv2::SV2_FRAME_HEADER_SIZE;

/// Which SV2 sub-protocol a `SetupConnection` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// The mining protocol (0): what miners, proxies and pools speak.
    Mining,
    /// Job declaration (1).
    JobDeclaration,
    /// Template distribution (2).
    TemplateDistribution,
}

impl Protocol {
    fn to_sri(self) -> common::Protocol {
        match self {
            Protocol::Mining => common::Protocol::MiningProtocol,
            Protocol::JobDeclaration => common::Protocol::JobDeclarationProtocol,
            Protocol::TemplateDistribution => common::Protocol::TemplateDistributionProtocol,
        }
    }

    fn from_sri(p: common::Protocol) -> Self {
        match p {
            common::Protocol::MiningProtocol => Protocol::Mining,
            common::Protocol::JobDeclarationProtocol => Protocol::JobDeclaration,
            common::Protocol::TemplateDistributionProtocol => Protocol::TemplateDistribution,
        }
    }
}

/// One SV2 message, owning its data. See the [module docs](self) for byte orders.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    // ---- common ----
    /// Client → server, the first message on every connection. `flags` are the sub-protocol's
    /// feature flags (see [`super::setup_flags`]).
    SetupConnection {
        protocol: Protocol,
        min_version: u16,
        max_version: u16,
        flags: u32,
        endpoint_host: String,
        endpoint_port: u16,
        vendor: String,
        hardware_version: String,
        firmware: String,
        device_id: String,
    },
    /// Server → client. `flags` are the server's flags (see [`super::setup_flags`]).
    SetupConnectionSuccess { used_version: u16, flags: u32 },
    /// Server → client. `flags` are the flags the server does not support (for
    /// `unsupported-feature-flags`).
    SetupConnectionError { flags: u32, error_code: String },
    /// Server → client: the channel's upstream endpoint changed, the client should forget any
    /// state (e.g. outstanding shares) for the channel.
    ChannelEndpointChanged { channel_id: u32 },
    /// Server → client: reconnect to another host (an empty host means the same host).
    Reconnect { new_host: String, new_port: u16 },

    // ---- mining: channels ----
    /// Client → server. `max_target` little-endian.
    OpenStandardMiningChannel {
        request_id: u32,
        user_identity: String,
        nominal_hash_rate: f32,
        max_target: [u8; 32],
    },
    /// Server → client. `target` little-endian; `extranonce_prefix` is the whole extranonce of a
    /// standard channel (at most 32 bytes).
    OpenStandardMiningChannelSuccess {
        request_id: u32,
        channel_id: u32,
        target: [u8; 32],
        extranonce_prefix: Vec<u8>,
        group_channel_id: u32,
    },
    /// Client → server. `max_target` little-endian.
    OpenExtendedMiningChannel {
        request_id: u32,
        user_identity: String,
        nominal_hash_rate: f32,
        max_target: [u8; 32],
        min_extranonce_size: u16,
    },
    /// Server → client. `target` little-endian; `extranonce_size` is the part the client rolls,
    /// after `extranonce_prefix` (at most 32 bytes).
    OpenExtendedMiningChannelSuccess {
        request_id: u32,
        channel_id: u32,
        target: [u8; 32],
        extranonce_size: u16,
        extranonce_prefix: Vec<u8>,
        group_channel_id: u32,
    },
    /// Server → client, answering either open request.
    OpenMiningChannelError { request_id: u32, error_code: String },
    /// Server → client: these channels belong to a group channel.
    SetGroupChannel {
        group_channel_id: u32,
        channel_ids: Vec<u32>,
    },
    /// Client → server. `maximum_target` little-endian.
    UpdateChannel {
        channel_id: u32,
        nominal_hash_rate: f32,
        maximum_target: [u8; 32],
    },
    /// Server → client.
    UpdateChannelError { channel_id: u32, error_code: String },
    /// Either direction.
    CloseChannel {
        channel_id: u32,
        reason_code: String,
    },
    /// Server → client: a new extranonce prefix for the channel's future jobs.
    SetExtranoncePrefix {
        channel_id: u32,
        extranonce_prefix: Vec<u8>,
    },
    /// Server → client: a new share target, little-endian.
    SetTarget {
        channel_id: u32,
        maximum_target: [u8; 32],
    },

    // ---- mining: jobs ----
    /// Server → client, standard channels (or a group channel). `min_ntime: None` is a future
    /// job, activated by a later [`Message::SetNewPrevHash`]. `merkle_root` in internal byte
    /// order.
    NewMiningJob {
        channel_id: u32,
        job_id: u32,
        min_ntime: Option<u32>,
        version: u32,
        merkle_root: [u8; 32],
    },
    /// Server → client, extended (or group) channels. `merkle_path` entries in internal byte
    /// order; the coinbase is `coinbase_tx_prefix ++ extranonce_prefix ++ extranonce ++
    /// coinbase_tx_suffix` (each part at most 65535 bytes, at most 255 path entries).
    NewExtendedMiningJob {
        channel_id: u32,
        job_id: u32,
        min_ntime: Option<u32>,
        version: u32,
        version_rolling_allowed: bool,
        merkle_path: Vec<[u8; 32]>,
        coinbase_tx_prefix: Vec<u8>,
        coinbase_tx_suffix: Vec<u8>,
    },
    /// Server → client. `prev_hash` in internal (header) byte order; `min_ntime` and `nbits` as
    /// header integers.
    SetNewPrevHash {
        channel_id: u32,
        job_id: u32,
        prev_hash: [u8; 32],
        min_ntime: u32,
        nbits: u32,
    },

    // ---- mining: shares ----
    /// Client → server.
    SubmitSharesStandard {
        channel_id: u32,
        sequence_number: u32,
        job_id: u32,
        nonce: u32,
        ntime: u32,
        version: u32,
    },
    /// Client → server. `extranonce` is the client-rolled part only (at most 32 bytes).
    SubmitSharesExtended {
        channel_id: u32,
        sequence_number: u32,
        job_id: u32,
        nonce: u32,
        ntime: u32,
        version: u32,
        extranonce: Vec<u8>,
    },
    /// Server → client, acknowledging a batch up to `last_sequence_number`.
    SubmitSharesSuccess {
        channel_id: u32,
        last_sequence_number: u32,
        new_submits_accepted_count: u32,
        new_shares_sum: u64,
    },
    /// Server → client.
    SubmitSharesError {
        channel_id: u32,
        sequence_number: u32,
        error_code: String,
    },
}

impl Message {
    /// The SV2 message type byte.
    pub fn msg_type(&self) -> u8 {
        use Message::*;
        match self {
            SetupConnection { .. } => common::MESSAGE_TYPE_SETUP_CONNECTION,
            SetupConnectionSuccess { .. } => common::MESSAGE_TYPE_SETUP_CONNECTION_SUCCESS,
            SetupConnectionError { .. } => common::MESSAGE_TYPE_SETUP_CONNECTION_ERROR,
            ChannelEndpointChanged { .. } => common::MESSAGE_TYPE_CHANNEL_ENDPOINT_CHANGED,
            Reconnect { .. } => common::MESSAGE_TYPE_RECONNECT,
            OpenStandardMiningChannel { .. } => mining::MESSAGE_TYPE_OPEN_STANDARD_MINING_CHANNEL,
            OpenStandardMiningChannelSuccess { .. } => {
                mining::MESSAGE_TYPE_OPEN_STANDARD_MINING_CHANNEL_SUCCESS
            }
            OpenExtendedMiningChannel { .. } => mining::MESSAGE_TYPE_OPEN_EXTENDED_MINING_CHANNEL,
            OpenExtendedMiningChannelSuccess { .. } => {
                mining::MESSAGE_TYPE_OPEN_EXTENDED_MINING_CHANNEL_SUCCESS
            }
            OpenMiningChannelError { .. } => mining::MESSAGE_TYPE_OPEN_MINING_CHANNEL_ERROR,
            SetGroupChannel { .. } => mining::MESSAGE_TYPE_SET_GROUP_CHANNEL,
            UpdateChannel { .. } => mining::MESSAGE_TYPE_UPDATE_CHANNEL,
            UpdateChannelError { .. } => mining::MESSAGE_TYPE_UPDATE_CHANNEL_ERROR,
            CloseChannel { .. } => mining::MESSAGE_TYPE_CLOSE_CHANNEL,
            SetExtranoncePrefix { .. } => mining::MESSAGE_TYPE_SET_EXTRANONCE_PREFIX,
            SetTarget { .. } => mining::MESSAGE_TYPE_SET_TARGET,
            NewMiningJob { .. } => mining::MESSAGE_TYPE_NEW_MINING_JOB,
            NewExtendedMiningJob { .. } => mining::MESSAGE_TYPE_NEW_EXTENDED_MINING_JOB,
            SetNewPrevHash { .. } => mining::MESSAGE_TYPE_MINING_SET_NEW_PREV_HASH,
            SubmitSharesStandard { .. } => mining::MESSAGE_TYPE_SUBMIT_SHARES_STANDARD,
            SubmitSharesExtended { .. } => mining::MESSAGE_TYPE_SUBMIT_SHARES_EXTENDED,
            SubmitSharesSuccess { .. } => mining::MESSAGE_TYPE_SUBMIT_SHARES_SUCCESS,
            SubmitSharesError { .. } => mining::MESSAGE_TYPE_SUBMIT_SHARES_ERROR,
        }
    }

    /// The message's name, for logs.
    pub fn name(&self) -> &'static str {
        message_name(self.msg_type())
    }

    /// The channel the message addresses, for channel messages (and the open-channel replies,
    /// which carry the new channel's id; `SetGroupChannel` gives the group channel's id).
    pub fn channel_id(&self) -> Option<u32> {
        use Message::*;
        match self {
            ChannelEndpointChanged { channel_id }
            | OpenStandardMiningChannelSuccess { channel_id, .. }
            | OpenExtendedMiningChannelSuccess { channel_id, .. }
            | UpdateChannel { channel_id, .. }
            | UpdateChannelError { channel_id, .. }
            | CloseChannel { channel_id, .. }
            | SetExtranoncePrefix { channel_id, .. }
            | SetTarget { channel_id, .. }
            | NewMiningJob { channel_id, .. }
            | NewExtendedMiningJob { channel_id, .. }
            | SetNewPrevHash { channel_id, .. }
            | SubmitSharesStandard { channel_id, .. }
            | SubmitSharesExtended { channel_id, .. }
            | SubmitSharesSuccess { channel_id, .. }
            | SubmitSharesError { channel_id, .. } => Some(*channel_id),
            SetGroupChannel {
                group_channel_id, ..
            } => Some(*group_channel_id),
            SetupConnection { .. }
            | SetupConnectionSuccess { .. }
            | SetupConnectionError { .. }
            | Reconnect { .. }
            | OpenStandardMiningChannel { .. }
            | OpenExtendedMiningChannel { .. }
            | OpenMiningChannelError { .. } => None,
        }
    }
}

/// SRI's name for a message type (`"Unknown Message"` for types SV2 does not define).
pub fn message_name(msg_type: u8) -> &'static str {
    parsers_sv2::message_type_to_name(msg_type)
}

// ------------------------------------------------------------------------------------------------
// Decoding
// ------------------------------------------------------------------------------------------------

/// Decodes one message from its frame header fields and plaintext payload. Pure and total: any
/// input yields a message or an error, never a panic (fuzzed by `fuzz/fuzz_targets/sv2_frame.rs`).
///
/// `extension` is the header's extension type; its channel-message bit (bit 15) is ignored.
pub fn decode_frame_payload(
    msg_type: u8,
    extension: u16,
    payload: &[u8],
) -> Result<Message, Sv2Error> {
    if extension & !CHANNEL_MSG_BIT != 0 {
        return Err(Sv2Error::UnknownMessage {
            msg_type,
            extension,
        });
    }
    // SRI decodes in place from a mutable buffer.
    let mut buf = payload.to_vec();
    let buf = &mut buf[..];
    let name = message_name(msg_type);
    let bad = |e: ParserError| parser_error(msg_type, extension, name, e);
    if CommonMessageTypes::try_from(msg_type).is_ok() {
        let m = CommonMessages::try_from((msg_type, buf)).map_err(bad)?;
        Ok(from_common(m))
    } else if MiningTypes::try_from(msg_type).is_ok() {
        let m = Mining::try_from((msg_type, buf)).map_err(bad)?;
        from_mining(m, msg_type)
    } else if JobDeclarationTypes::try_from(msg_type).is_ok()
        || TemplateDistributionTypes::try_from(msg_type).is_ok()
    {
        Err(Sv2Error::UnsupportedMessage { msg_type, name })
    } else {
        Err(Sv2Error::UnknownMessage {
            msg_type,
            extension,
        })
    }
}

/// Decodes a whole plaintext frame: the 6-byte header followed by exactly the payload it
/// declares.
pub fn decode_frame(frame: &[u8]) -> Result<Message, Sv2Error> {
    let header = Header::from_bytes(frame).map_err(|e| Sv2Error::BadPayload {
        name: "frame header",
        detail: format!("{e:?}"),
    })?;
    let payload = &frame[FRAME_HEADER_SIZE..];
    if payload.len() != header.payload_length() {
        return Err(Sv2Error::BadPayload {
            name: message_name(header.msg_type()),
            detail: format!(
                "header declares {} payload bytes, frame carries {}",
                header.payload_length(),
                payload.len()
            ),
        });
    }
    decode_frame_payload(header.msg_type(), header.ext_type(), payload)
}

fn parser_error(msg_type: u8, extension: u16, name: &'static str, e: ParserError) -> Sv2Error {
    match e {
        ParserError::UnexpectedMessage(_) => Sv2Error::UnknownMessage {
            msg_type,
            extension,
        },
        other => Sv2Error::BadPayload {
            name,
            detail: format!("{other}"),
        },
    }
}

fn string(s: &Str0255<'_>) -> String {
    String::from_utf8_lossy(s.as_bytes()).into_owned()
}

fn from_common(m: CommonMessages<'_>) -> Message {
    match m {
        CommonMessages::SetupConnection(m) => Message::SetupConnection {
            protocol: Protocol::from_sri(m.protocol),
            min_version: m.min_version,
            max_version: m.max_version,
            flags: m.flags,
            endpoint_host: string(&m.endpoint_host),
            endpoint_port: m.endpoint_port,
            vendor: string(&m.vendor),
            hardware_version: string(&m.hardware_version),
            firmware: string(&m.firmware),
            device_id: string(&m.device_id),
        },
        CommonMessages::SetupConnectionSuccess(m) => Message::SetupConnectionSuccess {
            used_version: m.used_version,
            flags: m.flags,
        },
        CommonMessages::SetupConnectionError(m) => Message::SetupConnectionError {
            flags: m.flags,
            error_code: string(&m.error_code),
        },
        CommonMessages::ChannelEndpointChanged(m) => Message::ChannelEndpointChanged {
            channel_id: m.channel_id,
        },
        CommonMessages::Reconnect(m) => Message::Reconnect {
            new_host: string(&m.new_host),
            new_port: m.new_port,
        },
    }
}

fn from_mining(m: Mining<'_>, msg_type: u8) -> Result<Message, Sv2Error> {
    Ok(match m {
        Mining::OpenStandardMiningChannel(m) => Message::OpenStandardMiningChannel {
            request_id: m.request_id,
            user_identity: string(&m.user_identity),
            nominal_hash_rate: m.nominal_hash_rate,
            max_target: m.max_target.to_array(),
        },
        Mining::OpenStandardMiningChannelSuccess(m) => Message::OpenStandardMiningChannelSuccess {
            request_id: m.request_id,
            channel_id: m.channel_id,
            target: m.target.to_array(),
            extranonce_prefix: m.extranonce_prefix.as_bytes().to_vec(),
            group_channel_id: m.group_channel_id,
        },
        Mining::OpenExtendedMiningChannel(m) => Message::OpenExtendedMiningChannel {
            request_id: m.request_id,
            user_identity: string(&m.user_identity),
            nominal_hash_rate: m.nominal_hash_rate,
            max_target: m.max_target.to_array(),
            min_extranonce_size: m.min_extranonce_size,
        },
        Mining::OpenExtendedMiningChannelSuccess(m) => Message::OpenExtendedMiningChannelSuccess {
            request_id: m.request_id,
            channel_id: m.channel_id,
            target: m.target.to_array(),
            extranonce_size: m.extranonce_size,
            extranonce_prefix: m.extranonce_prefix.as_bytes().to_vec(),
            group_channel_id: m.group_channel_id,
        },
        Mining::OpenMiningChannelError(m) => Message::OpenMiningChannelError {
            request_id: m.request_id,
            error_code: string(&m.error_code),
        },
        Mining::SetGroupChannel(m) => Message::SetGroupChannel {
            group_channel_id: m.group_channel_id,
            channel_ids: m.channel_ids.into_inner(),
        },
        Mining::UpdateChannel(m) => Message::UpdateChannel {
            channel_id: m.channel_id,
            nominal_hash_rate: m.nominal_hash_rate,
            maximum_target: m.maximum_target.to_array(),
        },
        Mining::UpdateChannelError(m) => Message::UpdateChannelError {
            channel_id: m.channel_id,
            error_code: string(&m.error_code),
        },
        Mining::CloseChannel(m) => Message::CloseChannel {
            channel_id: m.channel_id,
            reason_code: string(&m.reason_code),
        },
        Mining::SetExtranoncePrefix(m) => Message::SetExtranoncePrefix {
            channel_id: m.channel_id,
            extranonce_prefix: m.extranonce_prefix.as_bytes().to_vec(),
        },
        Mining::SetTarget(m) => Message::SetTarget {
            channel_id: m.channel_id,
            maximum_target: m.maximum_target.to_array(),
        },
        Mining::NewMiningJob(m) => Message::NewMiningJob {
            channel_id: m.channel_id,
            job_id: m.job_id,
            min_ntime: m.min_ntime.into_inner(),
            version: m.version,
            merkle_root: m.merkle_root.to_array(),
        },
        Mining::NewExtendedMiningJob(m) => Message::NewExtendedMiningJob {
            channel_id: m.channel_id,
            job_id: m.job_id,
            min_ntime: m.min_ntime.into_inner(),
            version: m.version,
            version_rolling_allowed: m.version_rolling_allowed,
            merkle_path: m.merkle_path.iter().map(|h| h.to_array()).collect(),
            coinbase_tx_prefix: m.coinbase_tx_prefix.as_bytes().to_vec(),
            coinbase_tx_suffix: m.coinbase_tx_suffix.as_bytes().to_vec(),
        },
        Mining::SetNewPrevHash(m) => Message::SetNewPrevHash {
            channel_id: m.channel_id,
            job_id: m.job_id,
            prev_hash: m.prev_hash.to_array(),
            min_ntime: m.min_ntime,
            nbits: m.nbits,
        },
        Mining::SubmitSharesStandard(m) => Message::SubmitSharesStandard {
            channel_id: m.channel_id,
            sequence_number: m.sequence_number,
            job_id: m.job_id,
            nonce: m.nonce,
            ntime: m.ntime,
            version: m.version,
        },
        Mining::SubmitSharesExtended(m) => Message::SubmitSharesExtended {
            channel_id: m.channel_id,
            sequence_number: m.sequence_number,
            job_id: m.job_id,
            nonce: m.nonce,
            ntime: m.ntime,
            version: m.version,
            extranonce: m.extranonce.as_bytes().to_vec(),
        },
        Mining::SubmitSharesSuccess(m) => Message::SubmitSharesSuccess {
            channel_id: m.channel_id,
            last_sequence_number: m.last_sequence_number,
            new_submits_accepted_count: m.new_submits_accepted_count,
            new_shares_sum: m.new_shares_sum,
        },
        Mining::SubmitSharesError(m) => Message::SubmitSharesError {
            channel_id: m.channel_id,
            sequence_number: m.sequence_number,
            error_code: string(&m.error_code),
        },
        Mining::SetCustomMiningJob(_)
        | Mining::SetCustomMiningJobSuccess(_)
        | Mining::SetCustomMiningJobError(_) => {
            return Err(Sv2Error::UnsupportedMessage {
                msg_type,
                name: message_name(msg_type),
            })
        }
    })
}

// ------------------------------------------------------------------------------------------------
// Encoding
// ------------------------------------------------------------------------------------------------

/// Encodes a message as a plaintext SV2 frame: the 6-byte header (extension type with the
/// channel-message bit SRI assigns to the type, message type, payload length) followed by the
/// payload. The transport encrypts this; it is public for tests, fuzzing and tools.
pub fn encode_frame(message: &Message) -> Result<Vec<u8>, Sv2Error> {
    let name = message.name();
    let err = |detail: String| Sv2Error::Encode { name, detail };
    let any = to_sri(message).map_err(|e| err(format!("{e:?}")))?;
    let frame = MessageFrame::<AnyMessage<'_>>::try_from(any).map_err(|e| err(format!("{e}")))?;
    let mut out = vec![0u8; frame.encoded_length()];
    frame
        .encode_into(&mut out)
        .map_err(|e| err(format!("{e}")))?;
    Ok(out)
}

/// Encodes a message's payload alone, with the header fields it needs:
/// `(msg_type, extension_type, payload)`, the inverse of [`decode_frame_payload`].
pub fn encode_frame_payload(message: &Message) -> Result<(u8, u16, Vec<u8>), Sv2Error> {
    let mut frame = encode_frame(message)?;
    let header = Header::from_bytes(&frame).map_err(|e| Sv2Error::Encode {
        name: message.name(),
        detail: format!("{e:?}"),
    })?;
    let payload = frame.split_off(FRAME_HEADER_SIZE);
    Ok((header.msg_type(), header.ext_type(), payload))
}

fn str0255(s: &str) -> Result<Str0255<'_>, binary_sv2::Error> {
    Str0255::try_from(s.as_bytes())
}

fn to_sri(m: &Message) -> Result<AnyMessage<'_>, binary_sv2::Error> {
    use Message as M;
    let any = match m {
        M::SetupConnection {
            protocol,
            min_version,
            max_version,
            flags,
            endpoint_host,
            endpoint_port,
            vendor,
            hardware_version,
            firmware,
            device_id,
        } => AnyMessage::Common(CommonMessages::SetupConnection(SetupConnection {
            protocol: protocol.to_sri(),
            min_version: *min_version,
            max_version: *max_version,
            flags: *flags,
            endpoint_host: str0255(endpoint_host)?,
            endpoint_port: *endpoint_port,
            vendor: str0255(vendor)?,
            hardware_version: str0255(hardware_version)?,
            firmware: str0255(firmware)?,
            device_id: str0255(device_id)?,
        })),
        M::SetupConnectionSuccess {
            used_version,
            flags,
        } => AnyMessage::Common(CommonMessages::SetupConnectionSuccess(
            SetupConnectionSuccess {
                used_version: *used_version,
                flags: *flags,
            },
        )),
        M::SetupConnectionError { flags, error_code } => {
            AnyMessage::Common(CommonMessages::SetupConnectionError(SetupConnectionError {
                flags: *flags,
                error_code: str0255(error_code)?,
            }))
        }
        M::ChannelEndpointChanged { channel_id } => AnyMessage::Common(
            CommonMessages::ChannelEndpointChanged(ChannelEndpointChanged {
                channel_id: *channel_id,
            }),
        ),
        M::Reconnect { new_host, new_port } => {
            AnyMessage::Common(CommonMessages::Reconnect(Reconnect {
                new_host: str0255(new_host)?,
                new_port: *new_port,
            }))
        }
        M::OpenStandardMiningChannel {
            request_id,
            user_identity,
            nominal_hash_rate,
            max_target,
        } => AnyMessage::Mining(Mining::OpenStandardMiningChannel(
            OpenStandardMiningChannel {
                request_id: *request_id,
                user_identity: str0255(user_identity)?,
                nominal_hash_rate: *nominal_hash_rate,
                max_target: U256::from(max_target),
            },
        )),
        M::OpenStandardMiningChannelSuccess {
            request_id,
            channel_id,
            target,
            extranonce_prefix,
            group_channel_id,
        } => AnyMessage::Mining(Mining::OpenStandardMiningChannelSuccess(
            OpenStandardMiningChannelSuccess {
                request_id: *request_id,
                channel_id: *channel_id,
                target: U256::from(target),
                extranonce_prefix: B032::try_from(&extranonce_prefix[..])?,
                group_channel_id: *group_channel_id,
            },
        )),
        M::OpenExtendedMiningChannel {
            request_id,
            user_identity,
            nominal_hash_rate,
            max_target,
            min_extranonce_size,
        } => AnyMessage::Mining(Mining::OpenExtendedMiningChannel(
            OpenExtendedMiningChannel {
                request_id: *request_id,
                user_identity: str0255(user_identity)?,
                nominal_hash_rate: *nominal_hash_rate,
                max_target: U256::from(max_target),
                min_extranonce_size: *min_extranonce_size,
            },
        )),
        M::OpenExtendedMiningChannelSuccess {
            request_id,
            channel_id,
            target,
            extranonce_size,
            extranonce_prefix,
            group_channel_id,
        } => AnyMessage::Mining(Mining::OpenExtendedMiningChannelSuccess(
            OpenExtendedMiningChannelSuccess {
                request_id: *request_id,
                channel_id: *channel_id,
                target: U256::from(target),
                extranonce_size: *extranonce_size,
                extranonce_prefix: B032::try_from(&extranonce_prefix[..])?,
                group_channel_id: *group_channel_id,
            },
        )),
        M::OpenMiningChannelError {
            request_id,
            error_code,
        } => AnyMessage::Mining(Mining::OpenMiningChannelError(OpenMiningChannelError {
            request_id: *request_id,
            error_code: str0255(error_code)?,
        })),
        M::SetGroupChannel {
            group_channel_id,
            channel_ids,
        } => AnyMessage::Mining(Mining::SetGroupChannel(SetGroupChannel {
            group_channel_id: *group_channel_id,
            channel_ids: Seq064K::new(channel_ids.clone())?,
        })),
        M::UpdateChannel {
            channel_id,
            nominal_hash_rate,
            maximum_target,
        } => AnyMessage::Mining(Mining::UpdateChannel(UpdateChannel {
            channel_id: *channel_id,
            nominal_hash_rate: *nominal_hash_rate,
            maximum_target: U256::from(maximum_target),
        })),
        M::UpdateChannelError {
            channel_id,
            error_code,
        } => AnyMessage::Mining(Mining::UpdateChannelError(UpdateChannelError {
            channel_id: *channel_id,
            error_code: str0255(error_code)?,
        })),
        M::CloseChannel {
            channel_id,
            reason_code,
        } => AnyMessage::Mining(Mining::CloseChannel(CloseChannel {
            channel_id: *channel_id,
            reason_code: str0255(reason_code)?,
        })),
        M::SetExtranoncePrefix {
            channel_id,
            extranonce_prefix,
        } => AnyMessage::Mining(Mining::SetExtranoncePrefix(SetExtranoncePrefix {
            channel_id: *channel_id,
            extranonce_prefix: B032::try_from(&extranonce_prefix[..])?,
        })),
        M::SetTarget {
            channel_id,
            maximum_target,
        } => AnyMessage::Mining(Mining::SetTarget(SetTarget {
            channel_id: *channel_id,
            maximum_target: U256::from(maximum_target),
        })),
        M::NewMiningJob {
            channel_id,
            job_id,
            min_ntime,
            version,
            merkle_root,
        } => AnyMessage::Mining(Mining::NewMiningJob(NewMiningJob {
            channel_id: *channel_id,
            job_id: *job_id,
            min_ntime: Sv2Option::new(*min_ntime),
            version: *version,
            merkle_root: U256::from(merkle_root),
        })),
        M::NewExtendedMiningJob {
            channel_id,
            job_id,
            min_ntime,
            version,
            version_rolling_allowed,
            merkle_path,
            coinbase_tx_prefix,
            coinbase_tx_suffix,
        } => AnyMessage::Mining(Mining::NewExtendedMiningJob(NewExtendedMiningJob {
            channel_id: *channel_id,
            job_id: *job_id,
            min_ntime: Sv2Option::new(*min_ntime),
            version: *version,
            version_rolling_allowed: *version_rolling_allowed,
            merkle_path: Seq0255::new(merkle_path.iter().map(U256::from).collect())?,
            coinbase_tx_prefix: B064K::try_from(&coinbase_tx_prefix[..])?,
            coinbase_tx_suffix: B064K::try_from(&coinbase_tx_suffix[..])?,
        })),
        M::SetNewPrevHash {
            channel_id,
            job_id,
            prev_hash,
            min_ntime,
            nbits,
        } => AnyMessage::Mining(Mining::SetNewPrevHash(SetNewPrevHash {
            channel_id: *channel_id,
            job_id: *job_id,
            prev_hash: U256::from(prev_hash),
            min_ntime: *min_ntime,
            nbits: *nbits,
        })),
        M::SubmitSharesStandard {
            channel_id,
            sequence_number,
            job_id,
            nonce,
            ntime,
            version,
        } => AnyMessage::Mining(Mining::SubmitSharesStandard(SubmitSharesStandard {
            channel_id: *channel_id,
            sequence_number: *sequence_number,
            job_id: *job_id,
            nonce: *nonce,
            ntime: *ntime,
            version: *version,
        })),
        M::SubmitSharesExtended {
            channel_id,
            sequence_number,
            job_id,
            nonce,
            ntime,
            version,
            extranonce,
        } => AnyMessage::Mining(Mining::SubmitSharesExtended(SubmitSharesExtended {
            channel_id: *channel_id,
            sequence_number: *sequence_number,
            job_id: *job_id,
            nonce: *nonce,
            ntime: *ntime,
            version: *version,
            extranonce: B032::try_from(&extranonce[..])?,
        })),
        M::SubmitSharesSuccess {
            channel_id,
            last_sequence_number,
            new_submits_accepted_count,
            new_shares_sum,
        } => AnyMessage::Mining(Mining::SubmitSharesSuccess(SubmitSharesSuccess {
            channel_id: *channel_id,
            last_sequence_number: *last_sequence_number,
            new_submits_accepted_count: *new_submits_accepted_count,
            new_shares_sum: *new_shares_sum,
        })),
        M::SubmitSharesError {
            channel_id,
            sequence_number,
            error_code,
        } => AnyMessage::Mining(Mining::SubmitSharesError(SubmitSharesError {
            channel_id: *channel_id,
            sequence_number: *sequence_number,
            error_code: str0255(error_code)?,
        })),
    };
    Ok(any)
}
