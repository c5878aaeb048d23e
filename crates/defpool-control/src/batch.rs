//! Batches: what proxies report to the server, keyed by `(proxy_id, sequence)`, and the rule that
//! applies each one exactly once.

use std::collections::BTreeMap;
use std::fmt;

use defpool_core::{Algorithm, Ticker};
use serde::{Deserialize, Serialize};

/// A proxy's stable identity, as configured.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ProxyId(pub String);

impl fmt::Display for ProxyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Work is a `u128` of expected hashes; JSON numbers lose precision past 2^53 in many readers,
/// so work travels as a decimal string.
mod work_string {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u128, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u128, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Work one worker did on one coin in one epoch, over a period.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkRecord {
    /// The stratum username's user part: a payout address or an account name.
    pub user: String,
    pub worker: String,
    pub coin: Ticker,
    /// Assignment epoch the shares were mined under.
    pub epoch: u64,
    /// Upstream the work went to.
    pub upstream: String,
    /// Sum of the work of accepted shares (expected hashes, see `defpool_core::work`).
    #[serde(with = "work_string")]
    pub accepted_work: u128,
    pub accepted_shares: u64,
    /// Work of shares for retired jobs accepted within the switch grace window.
    #[serde(with = "work_string")]
    pub late_work: u128,
    pub late_shares: u64,
    /// Rejected shares by reason code (`stale-share`, `duplicate-share`, …).
    #[serde(default)]
    pub rejected: BTreeMap<String, u64>,
    /// Period covered (Unix milliseconds, inclusive start, exclusive end).
    pub from_ms: u64,
    pub to_ms: u64,
}

/// A user first seen by a proxy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    pub user: String,
    /// The payout address as validated by the proxy (for account names, none).
    pub payout_address: Option<String>,
    pub first_seen_ms: u64,
}

/// Health of an upstream as a proxy sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthState {
    Up,
    Degraded,
    Down,
}

/// Where a found block stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlockState {
    Immature,
    Matured,
    Orphaned,
}

/// Things that happen on a proxy that the server must know about.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A share met the network target and was passed upstream as a block.
    BlockCandidate {
        coin: Ticker,
        epoch: u64,
        upstream: String,
        user: String,
        worker: String,
        /// Block hash in display order.
        block_hash: String,
        height: Option<u64>,
        at_ms: u64,
    },
    /// The coin adapter submitted a block and the node accepted it.
    BlockFound {
        coin: Ticker,
        /// The adapter (its name) that built and submitted it.
        adapter: String,
        height: u64,
        /// Block hash in display order.
        block_hash: String,
        /// The coinbase value, in the coin's smallest unit.
        reward: u64,
        /// The channel user (the proxy's identity at the adapter) whose share it was.
        found_by: String,
        at_ms: u64,
    },
    /// The node refused a block the adapter submitted.
    BlockRejected {
        coin: Ticker,
        adapter: String,
        height: u64,
        block_hash: String,
        reason: String,
        at_ms: u64,
    },
    /// A found block's standing changed: immature, matured (spendable, creditable) or orphaned.
    BlockStatus {
        coin: Ticker,
        adapter: String,
        height: u64,
        block_hash: String,
        state: BlockState,
        confirmations: i64,
        at_ms: u64,
    },
    UpstreamHealth {
        upstream: String,
        coin: Ticker,
        state: HealthState,
        reason: String,
        at_ms: u64,
    },
    /// How a switch went: command to each miner's first job on the new coin.
    SwitchTiming {
        algorithm: Algorithm,
        from_epoch: u64,
        to_epoch: u64,
        from_coin: Option<Ticker>,
        to_coin: Ticker,
        miners: u64,
        first_job_p50_ms: u64,
        first_job_p99_ms: u64,
        first_job_max_ms: u64,
        /// Miners that needed set_extranonce / SetExtranoncePrefix.
        extranonce_resets: u64,
        /// Miners that had to reconnect (the last resort).
        reconnects: u64,
        at_ms: u64,
    },
}

/// One entry of a batch.
///
/// On the wire an object tagged by `kind`. Read by hand (see [`RecordVisitor`]): serde's derived
/// reading of a tagged enum first copies every record into a generic buffer, which was most of
/// the cost of reading a batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    Work(WorkRecord),
    User(UserRecord),
    Event(Event),
}

/// The derived reading of [`Record`], for records whose `kind` is not their first field.
#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum TaggedRecord {
    Work(WorkRecord),
    User(UserRecord),
    Event(Event),
}

impl From<TaggedRecord> for Record {
    fn from(r: TaggedRecord) -> Self {
        match r {
            TaggedRecord::Work(w) => Record::Work(w),
            TaggedRecord::User(u) => Record::User(u),
            TaggedRecord::Event(e) => Record::Event(e),
        }
    }
}

impl<'de> Deserialize<'de> for Record {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(RecordVisitor)
    }
}

const RECORD_KINDS: &[&str] = &["work", "user", "event"];

/// Reads a record whose first field is `kind` (as every encoder here writes it) straight into
/// its variant; any other order goes through [`TaggedRecord`] via a JSON value, with the same
/// result.
struct RecordVisitor;

impl<'de> serde::de::Visitor<'de> for RecordVisitor {
    type Value = Record;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a batch record (an object with `kind`)")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Record, A::Error> {
        use serde::de::value::MapAccessDeserializer;
        use serde::de::Error;
        let Some(first) = map.next_key::<String>()? else {
            return Err(A::Error::missing_field("kind"));
        };
        if first == "kind" {
            let kind: String = map.next_value()?;
            let rest = MapAccessDeserializer::new(map);
            return match kind.as_str() {
                "work" => WorkRecord::deserialize(rest).map(Record::Work),
                "user" => UserRecord::deserialize(rest).map(Record::User),
                "event" => Event::deserialize(rest).map(Record::Event),
                other => Err(A::Error::unknown_variant(other, RECORD_KINDS)),
            };
        }
        let mut object = serde_json::Map::new();
        object.insert(first, map.next_value()?);
        while let Some((k, v)) = map.next_entry::<String, serde_json::Value>()? {
            object.insert(k, v);
        }
        TaggedRecord::deserialize(serde_json::Value::Object(object))
            .map(Record::from)
            .map_err(A::Error::custom)
    }
}

/// What a proxy sends: records in the order they happened, under a sequence number one above
/// the previous batch's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    pub proxy_id: ProxyId,
    pub sequence: u64,
    pub created_at_ms: u64,
    pub records: Vec<Record>,
}

impl Batch {
    /// Total accepted work in the batch (for tests and accounting checks).
    pub fn accepted_work(&self) -> u128 {
        self.records
            .iter()
            .map(|r| match r {
                Record::Work(w) => w.accepted_work + w.late_work,
                _ => 0,
            })
            .sum()
    }
}

/// What to do with an arriving batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SequenceCheck {
    /// The next batch: apply it, then record its sequence in the same transaction.
    Apply,
    /// Already applied (a retransmission after a lost acknowledgement): acknowledge again,
    /// apply nothing.
    Duplicate,
    /// A batch is missing before this one: refuse it; the proxy resends from `expected`.
    Gap { expected: u64 },
}

/// The exactly-once rule: per proxy, the highest sequence applied. Sequences start at 1 and a
/// proxy sends them in order from its outbox, so one number per proxy is the whole state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SequenceLedger {
    applied: BTreeMap<ProxyId, u64>,
}

impl SequenceLedger {
    pub fn check(&self, proxy: &ProxyId, sequence: u64) -> SequenceCheck {
        let last = self.last_applied(proxy);
        if sequence <= last {
            SequenceCheck::Duplicate
        } else if sequence == last + 1 {
            SequenceCheck::Apply
        } else {
            SequenceCheck::Gap { expected: last + 1 }
        }
    }

    /// Record that `sequence` was applied (after [`SequenceCheck::Apply`]).
    pub fn mark_applied(&mut self, proxy: &ProxyId, sequence: u64) {
        let last = self.applied.entry(proxy.clone()).or_insert(0);
        *last = (*last).max(sequence);
    }

    pub fn last_applied(&self, proxy: &ProxyId) -> u64 {
        self.applied.get(proxy).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sequence_rules() {
        let mut l = SequenceLedger::default();
        let p = ProxyId("p1".into());
        assert_eq!(l.check(&p, 1), SequenceCheck::Apply);
        assert_eq!(l.check(&p, 3), SequenceCheck::Gap { expected: 1 });
        l.mark_applied(&p, 1);
        assert_eq!(l.check(&p, 1), SequenceCheck::Duplicate);
        assert_eq!(l.check(&p, 2), SequenceCheck::Apply);
        assert_eq!(l.check(&ProxyId("p2".into()), 1), SequenceCheck::Apply);
    }

    proptest! {
        /// Whatever a proxy retransmits, reorders or duplicates, each sequence is applied once and
        /// in order.
        #[test]
        fn each_batch_applies_exactly_once(deliveries in prop::collection::vec(1u64..20, 0..200)) {
            let mut l = SequenceLedger::default();
            let p = ProxyId("p".into());
            let mut applied = Vec::new();
            for s in deliveries {
                if l.check(&p, s) == SequenceCheck::Apply {
                    applied.push(s);
                    l.mark_applied(&p, s);
                }
            }
            let expected: Vec<u64> = (1..=applied.len() as u64).collect();
            prop_assert_eq!(applied, expected);
        }
    }
}
