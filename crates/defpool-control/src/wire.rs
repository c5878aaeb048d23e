//! Versioned encoding of control messages: one JSON object per message, carrying the protocol
//! version, so a server can refuse a proxy it does not understand with a clear reason.

use defpool_core::secret::{exposed, Secret};
use defpool_core::Algorithm;
use serde::{Deserialize, Serialize};

use crate::assignment::Assignment;
use crate::batch::{Batch, ProxyId};

/// The control protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 1;

/// Largest encoded message accepted (a batch of many thousand work records fits).
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Every control message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// Proxy → server, first message: who it is and what it mines.
    Hello {
        proxy_id: ProxyId,
        #[serde(with = "exposed")]
        token: Secret,
        group: String,
        algorithms: Vec<Algorithm>,
        /// The last sequence the proxy knows was acknowledged.
        last_acked_sequence: u64,
    },
    /// Server → proxy, answer to Hello: the current assignments and where the server's
    /// sequence ledger stands for this proxy.
    Welcome {
        assignments: Vec<Assignment>,
        last_applied_sequence: u64,
    },
    /// Server → proxy: a new assignment.
    Assign(Assignment),
    /// Proxy → server.
    Batch(Batch),
    /// Server → proxy: the batch is applied (or was already); drop it from the outbox.
    Ack { sequence: u64 },
    /// Either way: a refusal with a stable code (`bad-token`, `gap`, `version`, …).
    Error { code: String, message: String },
}

/// A message with the protocol version it was written in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub v: u16,
    #[serde(flatten)]
    pub message: Message,
}

/// Why bytes could not be read as a control message.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("control message of {0} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit")]
    TooLarge(usize),
    #[error(
        "control protocol version {0} is not supported (this build speaks {PROTOCOL_VERSION})"
    )]
    Version(u16),
    #[error("malformed control message: {0}")]
    Malformed(String),
}

/// Encode a message in the current protocol version.
pub fn encode(message: &Message) -> Vec<u8> {
    #[derive(Serialize)]
    struct Borrowed<'a> {
        v: u16,
        #[serde(flatten)]
        message: &'a Message,
    }
    serde_json::to_vec(&Borrowed {
        v: PROTOCOL_VERSION,
        message,
    })
    .expect("control messages always serialize")
}

/// Decode a message, refusing other protocol versions with a typed error.
pub fn decode(bytes: &[u8]) -> Result<Message, WireError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(WireError::TooLarge(bytes.len()));
    }
    #[derive(Deserialize)]
    struct VersionOnly {
        v: u16,
    }
    let version: VersionOnly =
        serde_json::from_slice(bytes).map_err(|e| WireError::Malformed(e.to_string()))?;
    if version.v != PROTOCOL_VERSION {
        return Err(WireError::Version(version.v));
    }
    let envelope: Envelope =
        serde_json::from_slice(bytes).map_err(|e| WireError::Malformed(e.to_string()))?;
    Ok(envelope.message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assignment::tests::assignment;
    use crate::batch::{Event, HealthState, Record, UserRecord, WorkRecord};
    use proptest::prelude::*;

    fn batch(work: u128) -> Batch {
        Batch {
            proxy_id: ProxyId("p1".into()),
            sequence: 7,
            created_at_ms: 5,
            records: vec![
                Record::User(UserRecord {
                    user: "ltc1qexample".into(),
                    payout_address: Some("ltc1qexample".into()),
                    first_seen_ms: 1,
                }),
                Record::Work(WorkRecord {
                    user: "ltc1qexample".into(),
                    worker: "rig1".into(),
                    coin: "LTC".parse().unwrap(),
                    epoch: 3,
                    upstream: "ltc-solo".into(),
                    accepted_work: work,
                    accepted_shares: 10,
                    late_work: 1,
                    late_shares: 1,
                    rejected: [("duplicate-share".to_string(), 2)].into(),
                    from_ms: 0,
                    to_ms: 1000,
                }),
                Record::Event(Event::UpstreamHealth {
                    upstream: "ltc-solo".into(),
                    coin: "LTC".parse().unwrap(),
                    state: HealthState::Down,
                    reason: "connection refused".into(),
                    at_ms: 9,
                }),
            ],
        }
    }

    #[test]
    fn every_message_round_trips() {
        let messages = vec![
            Message::Hello {
                proxy_id: ProxyId("p1".into()),
                token: Secret::new("t0ken"),
                group: "default".into(),
                algorithms: vec![Algorithm::Scrypt],
                last_acked_sequence: 4,
            },
            Message::Welcome {
                assignments: vec![assignment(3, "LTC")],
                last_applied_sequence: 4,
            },
            Message::Assign(assignment(4, "DOGE")),
            Message::Batch(batch(u128::MAX)),
            Message::Ack { sequence: 7 },
            Message::Error {
                code: "gap".into(),
                message: "expected 5".into(),
            },
        ];
        for m in messages {
            assert_eq!(decode(&encode(&m)).unwrap(), m);
        }
    }

    #[test]
    fn the_control_channel_carries_credentials_but_debug_output_does_not() {
        let m = Message::Assign(assignment(4, "LTC"));
        let wire = String::from_utf8(encode(&m)).unwrap();
        assert!(wire.contains("\"password\":\"pw\""), "{wire}");
        assert!(!format!("{m:?}").contains("\"pw\""));
    }

    #[test]
    fn other_versions_and_garbage_are_typed_errors() {
        let mut v: serde_json::Value =
            serde_json::from_slice(&encode(&Message::Ack { sequence: 1 })).unwrap();
        v["v"] = 2.into();
        assert!(matches!(
            decode(&serde_json::to_vec(&v).unwrap()),
            Err(WireError::Version(2))
        ));
        assert!(matches!(decode(b"{"), Err(WireError::Malformed(_))));
        assert!(matches!(
            decode(br#"{"v":1,"type":"nope"}"#),
            Err(WireError::Malformed(_))
        ));
        assert!(matches!(
            decode(&vec![b' '; MAX_MESSAGE_BYTES + 1]),
            Err(WireError::TooLarge(_))
        ));
    }

    proptest! {
        #[test]
        fn work_survives_the_wire_exactly(work: u128) {
            let m = Message::Batch(batch(work));
            prop_assert_eq!(decode(&encode(&m)).unwrap(), m);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&bytes);
        }
    }
}
