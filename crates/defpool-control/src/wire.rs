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

/// A `Batch` message of this protocol version whose first fields are `v` and `type` (the order
/// `encode` writes): read field by field, without the generic buffering that serde's derived
/// reading of a flattened, tagged enum does (which copied a whole batch before reading it).
/// Fails on anything else, for the general path to read.
struct FastBatch(Batch);

impl<'de> Deserialize<'de> for FastBatch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(FastBatchVisitor)
    }
}

struct FastBatchVisitor;

impl<'de> serde::de::Visitor<'de> for FastBatchVisitor {
    type Value = FastBatch;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a batch message")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<FastBatch, A::Error> {
        use serde::de::Error;
        let not_fast = || A::Error::custom("not a batch in encode's field order");
        if map.next_key::<String>()?.as_deref() != Some("v")
            || map.next_value::<u16>()? != PROTOCOL_VERSION
            || map.next_key::<String>()?.as_deref() != Some("type")
            || map.next_value::<String>()? != "batch"
        {
            return Err(not_fast());
        }
        Batch::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(FastBatch)
    }
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
    // The hot message, as `encode` writes it, read in one pass; anything else (and any error,
    // reported by the general path) below.
    if let Ok(FastBatch(batch)) = serde_json::from_slice::<FastBatch>(bytes) {
        return Ok(Message::Batch(batch));
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

    /// Every object's keys in alphabetical order (`kind` and `type` no longer first): what
    /// another encoder may send.
    fn sorted_keys(v: serde_json::Value) -> String {
        match v {
            serde_json::Value::Object(m) => {
                let fields: Vec<String> = m
                    .into_iter()
                    .map(|(k, v)| format!("{}:{}", serde_json::Value::String(k), sorted_keys(v)))
                    .collect();
                format!("{{{}}}", fields.join(","))
            }
            serde_json::Value::Array(a) => {
                let items: Vec<String> = a.into_iter().map(sorted_keys).collect();
                format!("[{}]", items.join(","))
            }
            other => other.to_string(),
        }
    }

    #[test]
    fn a_batch_reads_the_same_whatever_the_field_order() {
        let m = Message::Batch(batch(12_345));
        let wire = encode(&m);
        assert!(wire.starts_with(br#"{"v":1,"type":"batch","#));
        let value: serde_json::Value = serde_json::from_slice(&wire).unwrap();
        let other_order = sorted_keys(value);
        assert!(
            other_order.starts_with(r#"{"created_at_ms":"#),
            "{other_order}"
        );
        assert!(
            other_order.contains(r#"{"accepted_shares":10"#),
            "{other_order}"
        );
        assert_eq!(decode(other_order.as_bytes()).unwrap(), m);
    }

    #[test]
    fn bad_records_are_refused_in_either_order() {
        let good = String::from_utf8(encode(&Message::Batch(batch(1)))).unwrap();
        for (from, to) in [
            // An unknown kind, first or last in its record.
            (r#"{"kind":"user","#, r#"{"kind":"share","#),
            (r#""kind":"work","#, r#""kind":"share","#),
            // No kind.
            (r#"{"kind":"user","#, r#"{"#),
            // A field of the wrong type after the kind.
            (r#""accepted_shares":10"#, r#""accepted_shares":"ten""#),
        ] {
            let mut bad = if from.contains("work") {
                sorted_keys(serde_json::from_str(&good).unwrap())
            } else {
                good.clone()
            };
            assert!(bad.contains(from), "{from} in {bad}");
            bad = bad.replacen(from, to, 1);
            assert!(
                matches!(decode(bad.as_bytes()), Err(WireError::Malformed(_))),
                "{bad}"
            );
        }
        // A batch of another version is still a version error.
        let v2 = good.replacen(r#"{"v":1,"#, r#"{"v":2,"#, 1);
        assert!(matches!(decode(v2.as_bytes()), Err(WireError::Version(2))));
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
