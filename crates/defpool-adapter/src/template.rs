//! A block template: the daemon's `getblocktemplate` answer (BIP22/BIP23, with BIP145's segwit
//! fields and Litecoin's `mweb`) parsed into typed fields and checked. Pure: no I/O.
//!
//! What is checked, so that a garbled answer is refused here and not as an invalid block later:
//! every required field is present and well-formed; every transaction's `data` decodes
//! ([`defpool_core::block::Transaction::parse`]) and hashes to its `txid` (and to its `hash`, the
//! wtxid, when given); a HogEx (Litecoin's integrating transaction) appears only last, and only
//! together with the `mweb` extension block; and `default_witness_commitment`, when given, is a
//! BIP141 commitment to exactly these transactions.
//!
//! Byte orders: `previousblockhash`, `txid` and `hash` are printed reversed by the daemon and kept
//! here in internal byte order; `bits` is the compact target as a big-endian hex `u32`.

use defpool_core::block::{BlockError, Transaction};
use defpool_core::hash::{from_display_hex, merkle_parent, Hash32};
use defpool_core::merkle::merkle_root;
use serde_json::Value;

/// BIP141: the witness commitment output script starts with `OP_RETURN`, a 36-byte push and this
/// header; the 32-byte commitment follows.
pub const WITNESS_COMMITMENT_HEADER: [u8; 6] = [0x6a, 0x24, 0xaa, 0x21, 0xa9, 0xed];

/// The witness reserved value DefPool's coinbases carry (BIP141 allows any 32 bytes; the
/// daemon's `default_witness_commitment` is computed with zeros).
pub const WITNESS_RESERVED_VALUE: [u8; 32] = [0; 32];

/// One transaction of a template, in block order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TemplateTx {
    /// The transaction as it goes into the block (witnesses and the HogEx marker included).
    pub data: Vec<u8>,
    /// The decoded transaction.
    pub tx: Transaction,
    /// Txid, internal byte order.
    pub txid: Hash32,
    /// Wtxid, internal byte order (the daemon's `hash`; the txid when it has no witness).
    pub hash: Hash32,
    /// Fee in the coin's smallest unit, when the daemon gives it.
    pub fee: Option<i64>,
    /// 1-based indexes of the template transactions this one spends from.
    pub depends: Vec<u32>,
    pub sigops: Option<i64>,
    pub weight: Option<u64>,
}

impl TemplateTx {
    /// Whether this is Litecoin's HogEx (it must stay the block's last transaction).
    pub fn is_hogex(&self) -> bool {
        self.tx.hogex
    }
}

/// A parsed, checked `getblocktemplate` answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockTemplate {
    /// Height of the block to build.
    pub height: u32,
    /// Block version to use (BIP9 bits as the daemon set them).
    pub version: u32,
    /// The tip the block builds on, internal byte order.
    pub previous_block_hash: Hash32,
    /// Compact network target (`nBits`).
    pub bits: u32,
    pub cur_time: u32,
    pub min_time: u32,
    /// Subsidy plus fees: what the coinbase outputs must add up to, in smallest units.
    pub coinbase_value: u64,
    /// The transactions to include after the coinbase, in order (a HogEx last).
    pub transactions: Vec<TemplateTx>,
    /// The witness commitment output script, when segwit is active.
    pub default_witness_commitment: Option<Vec<u8>>,
    /// Litecoin's serialized MWEB extension block, which the block must carry.
    pub mweb: Option<Vec<u8>>,
    /// The id to long-poll for the next template with.
    pub longpoll_id: Option<String>,
    /// The rules the daemon enforces (`csv`, `!segwit`, `mweb`, …).
    pub rules: Vec<String>,
}

/// Why a `getblocktemplate` answer was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("the template is not a JSON object")]
    NotAnObject,
    #[error("the template has no `{0}`")]
    Missing(&'static str),
    #[error("the template's `{field}` is invalid: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("template transaction {index}: `{field}` is invalid: {reason}")]
    InvalidTx {
        index: usize,
        field: &'static str,
        reason: String,
    },
    #[error("template transaction {index} does not decode: {source}")]
    TxDecode {
        index: usize,
        #[source]
        source: BlockError,
    },
    #[error(
        "template transaction {index}: its data hashes to {computed}, not to its {field} {given}"
    )]
    HashMismatch {
        index: usize,
        field: &'static str,
        given: String,
        computed: String,
    },
    #[error("template transaction {index} is a coinbase; templates hold only the others")]
    CoinbaseInTemplate { index: usize },
    #[error("template transaction {index} is a HogEx but not the last transaction")]
    HogExNotLast { index: usize },
    #[error("the template has an MWEB extension block but no HogEx as its last transaction")]
    MwebWithoutHogEx,
    #[error("the template's last transaction is a HogEx but it has no MWEB extension block")]
    HogExWithoutMweb,
    #[error("default_witness_commitment does not commit to the template's transactions")]
    WitnessCommitmentMismatch,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> TemplateError {
    TemplateError::Invalid {
        field,
        reason: reason.into(),
    }
}

fn required<'a>(
    obj: &'a serde_json::Map<String, Value>,
    field: &'static str,
) -> Result<&'a Value, TemplateError> {
    match obj.get(field) {
        None | Some(Value::Null) => Err(TemplateError::Missing(field)),
        Some(v) => Ok(v),
    }
}

fn optional<'a>(obj: &'a serde_json::Map<String, Value>, field: &str) -> Option<&'a Value> {
    obj.get(field).filter(|v| !v.is_null())
}

fn as_u32(v: &Value, field: &'static str) -> Result<u32, TemplateError> {
    let n = v
        .as_u64()
        .ok_or_else(|| invalid(field, format!("{v} is not a non-negative integer")))?;
    u32::try_from(n).map_err(|_| invalid(field, format!("{n} does not fit 32 bits")))
}

fn as_str<'a>(v: &'a Value, field: &'static str) -> Result<&'a str, TemplateError> {
    v.as_str()
        .ok_or_else(|| invalid(field, format!("{} is not a string", kind(v))))
}

fn as_hex(v: &Value, field: &'static str) -> Result<Vec<u8>, TemplateError> {
    hex::decode(as_str(v, field)?).map_err(|e| invalid(field, format!("not hex: {e}")))
}

fn as_hash(v: &Value, field: &'static str) -> Result<Hash32, TemplateError> {
    from_display_hex(as_str(v, field)?).ok_or_else(|| invalid(field, "not a 64-digit hex hash"))
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl BlockTemplate {
    /// Parse and check a `getblocktemplate` result (the `result` member of the JSON-RPC answer).
    pub fn from_json(value: &Value) -> Result<BlockTemplate, TemplateError> {
        let obj = value.as_object().ok_or(TemplateError::NotAnObject)?;

        let height = as_u32(required(obj, "height")?, "height")?;
        // The version is a signed 32-bit integer in Bitcoin Core; keep its bits.
        let version_value = required(obj, "version")?;
        let version = version_value
            .as_i64()
            .and_then(|v| i32::try_from(v).map(|v| v as u32).ok())
            .or_else(|| version_value.as_u64().and_then(|v| u32::try_from(v).ok()))
            .ok_or_else(|| {
                invalid(
                    "version",
                    format!("{version_value} is not a 32-bit integer"),
                )
            })?;
        let previous_block_hash =
            as_hash(required(obj, "previousblockhash")?, "previousblockhash")?;
        let bits_text = as_str(required(obj, "bits")?, "bits")?;
        if bits_text.len() != 8 {
            return Err(invalid(
                "bits",
                format!("{bits_text:?} is not 8 hex digits"),
            ));
        }
        let bits = u32::from_str_radix(bits_text, 16)
            .map_err(|_| invalid("bits", format!("{bits_text:?} is not 8 hex digits")))?;
        let cur_time = as_u32(required(obj, "curtime")?, "curtime")?;
        let min_time = match optional(obj, "mintime") {
            Some(v) => as_u32(v, "mintime")?,
            None => 0,
        };
        let coinbase_value = required(obj, "coinbasevalue")?
            .as_u64()
            .ok_or_else(|| invalid("coinbasevalue", "not a non-negative integer"))?;

        let txs = required(obj, "transactions")?
            .as_array()
            .ok_or_else(|| invalid("transactions", "not an array"))?;
        let transactions = txs
            .iter()
            .enumerate()
            .map(|(index, v)| parse_tx(index, v))
            .collect::<Result<Vec<_>, _>>()?;

        let default_witness_commitment = optional(obj, "default_witness_commitment")
            .map(|v| as_hex(v, "default_witness_commitment"))
            .transpose()?;
        let mweb = optional(obj, "mweb")
            .map(|v| as_hex(v, "mweb"))
            .transpose()?
            .filter(|bytes| !bytes.is_empty());
        let longpoll_id = optional(obj, "longpollid")
            .map(|v| as_str(v, "longpollid").map(str::to_string))
            .transpose()?;
        let rules = match optional(obj, "rules") {
            None => Vec::new(),
            Some(v) => v
                .as_array()
                .ok_or_else(|| invalid("rules", "not an array"))?
                .iter()
                .map(|r| as_str(r, "rules").map(str::to_string))
                .collect::<Result<_, _>>()?,
        };

        let template = BlockTemplate {
            height,
            version,
            previous_block_hash,
            bits,
            cur_time,
            min_time,
            coinbase_value,
            transactions,
            default_witness_commitment,
            mweb,
            longpoll_id,
            rules,
        };
        template.check()?;
        Ok(template)
    }

    /// Parse a `getblocktemplate` result from JSON text.
    pub fn from_json_str(text: &str) -> Result<BlockTemplate, TemplateError> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| invalid("(document)", format!("not JSON: {e}")))?;
        BlockTemplate::from_json(&value)
    }

    /// The structural checks across fields.
    fn check(&self) -> Result<(), TemplateError> {
        let last = self.transactions.len().checked_sub(1);
        for (index, tx) in self.transactions.iter().enumerate() {
            if tx.is_hogex() && Some(index) != last {
                return Err(TemplateError::HogExNotLast { index });
            }
        }
        let ends_with_hogex = self.transactions.last().is_some_and(TemplateTx::is_hogex);
        match (&self.mweb, ends_with_hogex) {
            (Some(_), false) => return Err(TemplateError::MwebWithoutHogEx),
            (None, true) => return Err(TemplateError::HogExWithoutMweb),
            _ => {}
        }
        if let Some(script) = &self.default_witness_commitment {
            let commitment = parse_witness_commitment(script).ok_or_else(|| {
                invalid(
                    "default_witness_commitment",
                    "not an OP_RETURN aa21a9ed commitment script",
                )
            })?;
            if commitment != self.witness_commitment() {
                return Err(TemplateError::WitnessCommitmentMismatch);
            }
        }
        Ok(())
    }

    /// The txids in block order with the coinbase's place left out.
    pub fn txids(&self) -> Vec<Hash32> {
        self.transactions.iter().map(|t| t.txid).collect()
    }

    /// The BIP141 commitment to these transactions, with [`WITNESS_RESERVED_VALUE`]:
    /// `sha256d(witness merkle root || reserved value)`, the coinbase's wtxid counted as zeros.
    pub fn witness_commitment(&self) -> Hash32 {
        let wtxids: Vec<Hash32> = std::iter::once([0u8; 32])
            .chain(self.transactions.iter().map(|t| t.hash))
            .collect();
        merkle_parent(&merkle_root(&wtxids), &WITNESS_RESERVED_VALUE)
    }

    /// Whether the template has a HogEx (Litecoin after MWEB activation).
    pub fn has_hogex(&self) -> bool {
        self.transactions.last().is_some_and(TemplateTx::is_hogex)
    }

    /// Sum of the fees the daemon reported.
    pub fn total_fees(&self) -> i64 {
        self.transactions.iter().filter_map(|t| t.fee).sum()
    }
}

/// The 32-byte commitment inside a BIP141 witness commitment script (which may carry more bytes
/// after it).
pub fn parse_witness_commitment(script: &[u8]) -> Option<Hash32> {
    if script.len() < 38 || script[..6] != WITNESS_COMMITMENT_HEADER {
        return None;
    }
    script[6..38].try_into().ok()
}

fn parse_tx(index: usize, v: &Value) -> Result<TemplateTx, TemplateError> {
    let bad = |field: &'static str, reason: String| TemplateError::InvalidTx {
        index,
        field,
        reason,
    };
    let obj = v
        .as_object()
        .ok_or_else(|| bad("(entry)", format!("{} is not an object", kind(v))))?;
    let hex_field = |field: &'static str| -> Result<&str, TemplateError> {
        match obj.get(field) {
            Some(Value::String(s)) => Ok(s),
            Some(other) => Err(bad(field, format!("{} is not a string", kind(other)))),
            None => Err(bad(field, "missing".into())),
        }
    };
    let data = hex::decode(hex_field("data")?).map_err(|e| bad("data", format!("not hex: {e}")))?;
    let tx =
        Transaction::parse(&data).map_err(|source| TemplateError::TxDecode { index, source })?;
    if tx.is_coinbase() {
        return Err(TemplateError::CoinbaseInTemplate { index });
    }
    let txid = tx.txid();
    let wtxid = tx.wtxid();
    let given_txid =
        from_display_hex(hex_field("txid")?).ok_or_else(|| bad("txid", "not a hash".into()))?;
    if given_txid != txid {
        return Err(mismatch(index, "txid", &given_txid, &txid));
    }
    let hash = match obj.get("hash") {
        None | Some(Value::Null) => wtxid,
        Some(_) => {
            let given = from_display_hex(hex_field("hash")?)
                .ok_or_else(|| bad("hash", "not a hash".into()))?;
            if given != wtxid {
                return Err(mismatch(index, "hash", &given, &wtxid));
            }
            given
        }
    };
    let fee = match obj.get("fee") {
        None | Some(Value::Null) => None,
        Some(f) => Some(
            f.as_i64()
                .ok_or_else(|| bad("fee", format!("{f} is not an integer")))?,
        ),
    };
    let depends = match obj.get("depends") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|d| {
                d.as_u64()
                    .and_then(|d| u32::try_from(d).ok())
                    .ok_or_else(|| bad("depends", format!("{d} is not an index")))
            })
            .collect::<Result<_, _>>()?,
        Some(other) => return Err(bad("depends", format!("{} is not an array", kind(other)))),
    };
    let sigops = obj.get("sigops").and_then(Value::as_i64);
    let weight = obj.get("weight").and_then(Value::as_u64);
    Ok(TemplateTx {
        data,
        tx,
        txid,
        hash,
        fee,
        depends,
        sigops,
        weight,
    })
}

fn mismatch(index: usize, field: &'static str, given: &Hash32, computed: &Hash32) -> TemplateError {
    TemplateError::HashMismatch {
        index,
        field,
        given: defpool_core::hash::to_display_hex(given),
        computed: defpool_core::hash::to_display_hex(computed),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    /// A real `getblocktemplate` answer from litecoind 0.21 regtest at height 432 (MWEB
    /// activation), with a segwit payment, an MWEB peg-in and the HogEx.
    pub(crate) const LTC_GBT_432: &str = include_str!("../tests/fixtures/ltc-regtest-gbt-432.json");

    pub(crate) fn ltc_432() -> BlockTemplate {
        BlockTemplate::from_json_str(LTC_GBT_432).unwrap()
    }

    fn json_432() -> Value {
        serde_json::from_str(LTC_GBT_432).unwrap()
    }

    #[test]
    fn real_litecoin_template_at_mweb_activation() {
        let t = ltc_432();
        assert_eq!(t.height, 432);
        assert_eq!(t.version, 0x2000_0000);
        assert_eq!(t.bits, 0x207f_ffff);
        assert_eq!(t.cur_time, t.min_time);
        assert_eq!(t.coinbase_value, 1_250_006_940);
        // 12.5 LTC subsidy (two regtest halvings) plus the fees.
        assert_eq!(t.coinbase_value, 1_250_000_000 + t.total_fees() as u64);
        assert_eq!(t.transactions.len(), 3);
        assert!(t.has_hogex() && t.transactions[2].is_hogex());
        // The HogEx spends the peg-in (1-based index 1).
        assert_eq!(t.transactions[2].depends, vec![1]);
        assert!(t.transactions[..2].iter().all(|tx| tx.hash != tx.txid));
        assert_eq!(t.transactions[2].hash, t.transactions[2].txid);
        assert!(t.mweb.as_ref().is_some_and(|m| m.len() > 1000));
        assert!(t.rules.iter().any(|r| r == "mweb"));
        assert!(t
            .longpoll_id
            .as_deref()
            .is_some_and(|id| id.ends_with("436")));
        let commitment = t.default_witness_commitment.as_ref().unwrap();
        assert_eq!(
            parse_witness_commitment(commitment),
            Some(t.witness_commitment())
        );
        assert_eq!(
            defpool_core::hash::to_display_hex(&t.previous_block_hash),
            json_432()["previousblockhash"].as_str().unwrap()
        );
    }

    #[test]
    fn missing_and_garbled_fields_are_named() {
        for field in [
            "height",
            "version",
            "previousblockhash",
            "bits",
            "curtime",
            "coinbasevalue",
            "transactions",
        ] {
            let mut v = json_432();
            v.as_object_mut().unwrap().remove(field);
            assert_eq!(
                BlockTemplate::from_json(&v),
                Err(TemplateError::Missing(field)),
                "{field}"
            );
        }
        for (field, value) in [
            ("height", json!(-1)),
            ("height", json!("432")),
            ("bits", json!("207fff")),
            ("bits", json!("zz7fffff")),
            ("previousblockhash", json!("00")),
            ("coinbasevalue", json!(1.5)),
            ("curtime", json!(1u64 << 33)),
            ("transactions", json!({})),
            ("mweb", json!("xyz")),
            ("default_witness_commitment", json!("6a")),
            ("rules", json!("segwit")),
        ] {
            let mut v = json_432();
            v[field] = value;
            assert!(
                matches!(BlockTemplate::from_json(&v), Err(TemplateError::Invalid { field: f, .. }) if f == field),
                "{field}: {:?}",
                BlockTemplate::from_json(&v)
            );
        }
        assert_eq!(
            BlockTemplate::from_json(&json!([])),
            Err(TemplateError::NotAnObject)
        );
    }

    #[test]
    fn garbled_transactions_are_refused() {
        let mut v = json_432();
        v["transactions"][0]["txid"] = json!("00".repeat(32));
        assert!(matches!(
            BlockTemplate::from_json(&v),
            Err(TemplateError::HashMismatch {
                index: 0,
                field: "txid",
                ..
            })
        ));
        let mut v = json_432();
        v["transactions"][1]["hash"] = json!("11".repeat(32));
        assert!(matches!(
            BlockTemplate::from_json(&v),
            Err(TemplateError::HashMismatch {
                index: 1,
                field: "hash",
                ..
            })
        ));
        let mut v = json_432();
        let data = v["transactions"][0]["data"].as_str().unwrap().to_string();
        v["transactions"][0]["data"] = json!(data[..data.len() - 2]);
        assert!(matches!(
            BlockTemplate::from_json(&v),
            Err(TemplateError::TxDecode { index: 0, .. })
        ));
        let mut v = json_432();
        v["transactions"][0].as_object_mut().unwrap().remove("data");
        assert!(matches!(
            BlockTemplate::from_json(&v),
            Err(TemplateError::InvalidTx {
                index: 0,
                field: "data",
                ..
            })
        ));
    }

    #[test]
    fn hogex_and_mweb_go_together_and_the_hogex_stays_last() {
        let mut v = json_432();
        v.as_object_mut().unwrap().remove("mweb");
        assert_eq!(
            BlockTemplate::from_json(&v),
            Err(TemplateError::HogExWithoutMweb)
        );
        let mut v = json_432();
        let txs = v["transactions"].as_array_mut().unwrap();
        txs.swap(1, 2);
        assert_eq!(
            BlockTemplate::from_json(&v),
            Err(TemplateError::HogExNotLast { index: 1 })
        );
        let mut v = json_432();
        v["transactions"].as_array_mut().unwrap().pop();
        assert_eq!(
            BlockTemplate::from_json(&v),
            Err(TemplateError::MwebWithoutHogEx)
        );
    }

    #[test]
    fn the_witness_commitment_must_match_the_transactions() {
        let mut v = json_432();
        v["transactions"].as_array_mut().unwrap().remove(0);
        // (the peg-in's `depends` index is stale now, which the parser does not judge)
        assert_eq!(
            BlockTemplate::from_json(&v),
            Err(TemplateError::WitnessCommitmentMismatch)
        );
        // Without a commitment (pre-segwit coins) nothing is checked.
        v.as_object_mut()
            .unwrap()
            .remove("default_witness_commitment");
        let t = BlockTemplate::from_json(&v).unwrap();
        assert_eq!(t.default_witness_commitment, None);
    }

    #[test]
    fn an_empty_pre_mweb_template() {
        let v = json!({
            "version": 536870912,
            "rules": ["csv", "!segwit", "taproot"],
            "previousblockhash": "1dd69265b64d1d457d7e94ada48aeaea1b69689fc76aaa71db94e5ca6891dc31",
            "transactions": [],
            "coinbasevalue": 5000000000u64,
            "longpollid": "1dd69265b64d1d457d7e94ada48aeaea1b69689fc76aaa71db94e5ca6891dc31104",
            "mintime": 1795616174,
            "curtime": 1795616174,
            "bits": "207fffff",
            "height": 102,
            "default_witness_commitment": "6a24aa21a9ede2f61c3f71d1defd3fa999dfa36953755c690689799962b48bebd836974e8cf9"
        });
        let t = BlockTemplate::from_json(&v).unwrap();
        assert!(t.transactions.is_empty() && t.mweb.is_none() && !t.has_hogex());
        // An empty template's commitment: sha256d(sha256d-less root of [zeros] || zeros).
        assert_eq!(
            parse_witness_commitment(t.default_witness_commitment.as_ref().unwrap()),
            Some(merkle_parent(&[0; 32], &[0; 32]))
        );
        // A negative version (top bit set) keeps its bits.
        let mut v = v;
        v["version"] = json!(-1);
        assert_eq!(BlockTemplate::from_json(&v).unwrap().version, u32::MAX);
    }
}
