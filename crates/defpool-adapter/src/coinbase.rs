//! The coinbase transaction of a template, split around the extranonce as Stratum V2 sends it
//! (`coinbase_tx_prefix` / `coinbase_tx_suffix`), and the merkle branch a miner folds it in with.
//! Pure: no I/O.
//!
//! Layout, non-witness serialization (what miners hash for the txid):
//!
//! ```text
//! prefix: version=1 | 1 input | null outpoint (32 zero bytes, 0xffffffff) | scriptSig length |
//!         <height> (BIP34) | <tag> | extranonce push opcode
//! ------- extranonce (extranonce_size bytes) -------
//! suffix: sequence 0xffffffff | outputs: payout (coinbasevalue), [witness commitment (0)] |
//!         lock time 0
//! ```
//!
//! The scriptSig is three pushes: the height as Bitcoin Core's `CScript() << height` writes it
//! (the form BIP34 consensus compares against), the tag (`/DefPool/`), and the extranonce. Its
//! length must stay within the consensus bounds 2..=100 bytes. In a block, a segwit coinbase
//! additionally carries the 32-byte witness reserved value as its input's witness
//! ([`CoinbaseParts::transaction`]); the prefix and suffix never do.

use defpool_core::block::{write_compact_size, BlockError, Transaction};
use defpool_core::hash::{sha256d, Hash32};
use defpool_core::merkle::coinbase_branch;

use crate::template::{BlockTemplate, WITNESS_RESERVED_VALUE};

/// The tag DefPool writes into its coinbases unless configured otherwise.
pub const DEFAULT_TAG: &str = "/DefPool/";

/// Consensus bounds of a coinbase scriptSig (`bad-cb-length` outside them).
pub const SCRIPT_SIG_MIN: usize = 2;
pub const SCRIPT_SIG_MAX: usize = 100;

/// The version DefPool's coinbases have.
pub const COINBASE_VERSION: i32 = 1;

/// Why a coinbase could not be built or completed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CoinbaseError {
    #[error(
        "the coinbase scriptSig would be {len} bytes (height {height_len}, tag {tag_len}, \
         extranonce {extranonce_size}); consensus allows {SCRIPT_SIG_MIN} to {SCRIPT_SIG_MAX}"
    )]
    ScriptSigLength {
        len: usize,
        height_len: usize,
        tag_len: usize,
        extranonce_size: usize,
    },
    #[error("the payout script is empty")]
    EmptyPayoutScript,
    #[error("the extranonce is {got} bytes; this job's coinbase takes {expected}")]
    ExtranonceSize { expected: usize, got: usize },
    #[error("the completed coinbase does not decode: {0}")]
    Decode(#[from] BlockError),
}

/// A template's coinbase, split around the extranonce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoinbaseParts {
    /// Non-witness serialization up to the extranonce.
    pub prefix: Vec<u8>,
    /// Non-witness serialization after the extranonce.
    pub suffix: Vec<u8>,
    /// How many bytes of extranonce go between prefix and suffix.
    pub extranonce_size: usize,
    /// Whether the coinbase has the witness commitment output (then, in a block, it carries the
    /// witness reserved value).
    pub witness_commitment: bool,
}

/// The script push of `n` as Bitcoin Core's `CScript() << n` writes it: `OP_0`, `OP_1`..`OP_16`,
/// or a push of its minimal `CScriptNum` encoding (little endian, a sign byte added when the top
/// bit is taken).
pub fn script_push_int(n: i64) -> Vec<u8> {
    match n {
        0 => vec![0x00],
        -1 | 1..=16 => vec![(0x50 + n) as u8],
        _ => {
            let num = script_num(n);
            let mut out = Vec::with_capacity(num.len() + 1);
            push_data(&mut out, &num);
            out
        }
    }
}

/// `CScriptNum::serialize`.
fn script_num(n: i64) -> Vec<u8> {
    if n == 0 {
        return Vec::new();
    }
    let negative = n < 0;
    let mut abs = n.unsigned_abs();
    let mut out = Vec::new();
    while abs > 0 {
        out.push((abs & 0xff) as u8);
        abs >>= 8;
    }
    let last = out.len() - 1;
    if out[last] & 0x80 != 0 {
        out.push(if negative { 0x80 } else { 0x00 });
    } else if negative {
        out[last] |= 0x80;
    }
    out
}

/// The push opcode for `len` bytes (direct push up to 75, then `OP_PUSHDATA1`/`2`).
fn push_opcode(out: &mut Vec<u8>, len: usize) {
    match len {
        0..=75 => out.push(len as u8),
        76..=0xff => out.extend_from_slice(&[0x4c, len as u8]),
        _ => {
            out.push(0x4d);
            out.extend_from_slice(&(len as u16).to_le_bytes());
        }
    }
}

fn push_data(out: &mut Vec<u8>, data: &[u8]) {
    push_opcode(out, data.len());
    out.extend_from_slice(data);
}

fn write_output(out: &mut Vec<u8>, value: u64, script: &[u8]) {
    out.extend_from_slice(&value.to_le_bytes());
    write_compact_size(out, script.len() as u64);
    out.extend_from_slice(script);
}

impl CoinbaseParts {
    /// The coinbase of `template` paying its whole `coinbase_value` to `payout_script`, tagged
    /// with `tag` (none when empty), with room for `extranonce_size` bytes of extranonce.
    pub fn build(
        template: &BlockTemplate,
        payout_script: &[u8],
        tag: &str,
        extranonce_size: usize,
    ) -> Result<CoinbaseParts, CoinbaseError> {
        if payout_script.is_empty() {
            return Err(CoinbaseError::EmptyPayoutScript);
        }
        let height = script_push_int(i64::from(template.height));
        let mut script_head = height.clone();
        if !tag.is_empty() {
            push_data(&mut script_head, tag.as_bytes());
        }
        let tag_len = script_head.len() - height.len();
        if extranonce_size > 0 {
            push_opcode(&mut script_head, extranonce_size);
        }
        let script_len = script_head.len() + extranonce_size;
        if !(SCRIPT_SIG_MIN..=SCRIPT_SIG_MAX).contains(&script_len) {
            return Err(CoinbaseError::ScriptSigLength {
                len: script_len,
                height_len: height.len(),
                tag_len,
                extranonce_size,
            });
        }

        let mut prefix = Vec::with_capacity(42 + script_head.len());
        prefix.extend_from_slice(&COINBASE_VERSION.to_le_bytes());
        prefix.push(1); // one input
        prefix.extend_from_slice(&[0; 32]);
        prefix.extend_from_slice(&u32::MAX.to_le_bytes());
        write_compact_size(&mut prefix, script_len as u64);
        prefix.extend_from_slice(&script_head);

        let commitment = template.default_witness_commitment.as_deref();
        let mut suffix = Vec::with_capacity(64 + payout_script.len());
        suffix.extend_from_slice(&u32::MAX.to_le_bytes()); // sequence
        write_compact_size(&mut suffix, 1 + u64::from(commitment.is_some()));
        write_output(&mut suffix, template.coinbase_value, payout_script);
        if let Some(script) = commitment {
            write_output(&mut suffix, 0, script);
        }
        suffix.extend_from_slice(&0u32.to_le_bytes()); // lock time

        Ok(CoinbaseParts {
            prefix,
            suffix,
            extranonce_size,
            witness_commitment: commitment.is_some(),
        })
    }

    /// The coinbase's non-witness serialization with `extranonce` filled in.
    pub fn serialize_stripped(&self, extranonce: &[u8]) -> Result<Vec<u8>, CoinbaseError> {
        if extranonce.len() != self.extranonce_size {
            return Err(CoinbaseError::ExtranonceSize {
                expected: self.extranonce_size,
                got: extranonce.len(),
            });
        }
        let mut out = Vec::with_capacity(self.prefix.len() + extranonce.len() + self.suffix.len());
        out.extend_from_slice(&self.prefix);
        out.extend_from_slice(extranonce);
        out.extend_from_slice(&self.suffix);
        Ok(out)
    }

    /// The coinbase txid with `extranonce` filled in, internal byte order.
    pub fn txid(&self, extranonce: &[u8]) -> Result<Hash32, CoinbaseError> {
        Ok(sha256d(&self.serialize_stripped(extranonce)?))
    }

    /// The coinbase as it goes into a block: with the witness reserved value as its witness when
    /// the block commits to witnesses.
    pub fn transaction(&self, extranonce: &[u8]) -> Result<Transaction, CoinbaseError> {
        let mut tx = Transaction::parse(&self.serialize_stripped(extranonce)?)?;
        if self.witness_commitment {
            tx.inputs[0].witness = vec![WITNESS_RESERVED_VALUE.to_vec()];
        }
        Ok(tx)
    }
}

/// The merkle branch of the coinbase over the template's transactions (the coinbase first, then
/// the template's txids in order, the HogEx included): the siblings a miner folds its coinbase
/// txid with, bottom up.
pub fn merkle_branch(template: &BlockTemplate) -> Vec<Hash32> {
    let txids: Vec<Hash32> = std::iter::once([0u8; 32])
        .chain(template.transactions.iter().map(|t| t.txid))
        .collect();
    coinbase_branch(&txids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::tests::ltc_432;
    use defpool_core::merkle::{fold_branch, merkle_root};
    use proptest::prelude::*;

    /// P2WPKH to a regtest wallet key.
    const PAYOUT: [u8; 22] = [
        0x00, 0x14, 0x7e, 0xb7, 0xc6, 0xb8, 0xd8, 0x17, 0x97, 0x7a, 0xf5, 0x91, 0xf2, 0x68, 0x37,
        0xd7, 0x8d, 0x2c, 0x76, 0xe8, 0x53, 0xde,
    ];

    #[test]
    fn bip34_heights_as_bitcoin_core_pushes_them() {
        for (height, expected) in [
            (1, "51"),
            (16, "60"),
            (17, "0111"),
            (127, "017f"),
            (128, "028000"),
            (255, "02ff00"),
            (256, "020001"),
            (32767, "02ff7f"),
            (32768, "03008000"),
            (65535, "03ffff00"),
            (432, "02b001"),
            (500_000, "0320a107"),
            (8_388_607, "03ffff7f"),
            (8_388_608, "0400008000"),
        ] {
            assert_eq!(hex::encode(script_push_int(height)), expected, "{height}");
        }
        assert_eq!(script_push_int(0), [0x00]);
        assert_eq!(script_push_int(-1), [0x4f]);
        assert_eq!(hex::encode(script_push_int(-128)), "028080");
        assert_eq!(hex::encode(script_push_int(-255)), "02ff80");
    }

    fn script_sig(parts: &CoinbaseParts, extranonce: &[u8]) -> Vec<u8> {
        let tx = Transaction::parse(&parts.serialize_stripped(extranonce).unwrap()).unwrap();
        tx.inputs[0].script_sig.clone()
    }

    #[test]
    fn script_sig_layout_and_bounds() {
        let mut t = ltc_432();
        let parts = CoinbaseParts::build(&t, &PAYOUT, DEFAULT_TAG, 8).unwrap();
        let sig = script_sig(&parts, &[0xee; 8]);
        let mut expected = hex::decode("02b001").unwrap();
        expected.push(9);
        expected.extend_from_slice(b"/DefPool/");
        expected.push(8);
        expected.extend_from_slice(&[0xee; 8]);
        assert_eq!(sig, expected);
        // The prefix ends exactly where the extranonce starts.
        assert_eq!(
            &parts.prefix[parts.prefix.len() - 10..parts.prefix.len() - 1],
            b"/DefPool/"
        );

        // Height 1 alone would be a 1-byte scriptSig: below the minimum.
        t.height = 1;
        assert_eq!(
            CoinbaseParts::build(&t, &PAYOUT, "", 0),
            Err(CoinbaseError::ScriptSigLength {
                len: 1,
                height_len: 1,
                tag_len: 0,
                extranonce_size: 0
            })
        );
        // Two bytes is enough: height 17 is a 2-byte push.
        t.height = 17;
        let parts = CoinbaseParts::build(&t, &PAYOUT, "", 0).unwrap();
        assert_eq!(script_sig(&parts, &[]), [0x01, 0x11]);
        t.height = 1;
        let parts = CoinbaseParts::build(&t, &PAYOUT, "", 1).unwrap();
        assert_eq!(script_sig(&parts, &[7]), [0x51, 0x01, 0x07]);

        // Exactly 100 bytes passes, 101 does not: height 432 (3) + tag push (10) + the
        // extranonce's OP_PUSHDATA1 (2, above 75 bytes).
        t.height = 432;
        let fits = 100 - 3 - 10 - 2;
        let parts = CoinbaseParts::build(&t, &PAYOUT, DEFAULT_TAG, fits).unwrap();
        assert_eq!(script_sig(&parts, &vec![0; fits]).len(), 100);
        assert!(matches!(
            CoinbaseParts::build(&t, &PAYOUT, DEFAULT_TAG, fits + 1),
            Err(CoinbaseError::ScriptSigLength { len: 101, .. })
        ));
        // A long tag counts too.
        assert!(matches!(
            CoinbaseParts::build(&t, &PAYOUT, &"x".repeat(97), 0),
            Err(CoinbaseError::ScriptSigLength { .. })
        ));
        assert_eq!(
            CoinbaseParts::build(&t, &[], DEFAULT_TAG, 8),
            Err(CoinbaseError::EmptyPayoutScript)
        );
    }

    #[test]
    fn outputs_pay_exactly_the_coinbase_value() {
        let t = ltc_432();
        let parts = CoinbaseParts::build(&t, &PAYOUT, DEFAULT_TAG, 16).unwrap();
        assert!(parts.witness_commitment);
        let tx = parts.transaction(&[1; 16]).unwrap();
        assert!(tx.is_coinbase());
        assert_eq!(tx.version, COINBASE_VERSION);
        assert_eq!(tx.lock_time, 0);
        assert_eq!(tx.inputs[0].sequence, u32::MAX);
        assert_eq!(tx.inputs[0].witness, vec![vec![0u8; 32]]);
        assert_eq!(tx.outputs.len(), 2);
        assert_eq!(tx.outputs[0].script_pubkey, PAYOUT);
        assert_eq!(
            tx.outputs.iter().map(|o| o.value).sum::<u64>(),
            t.coinbase_value
        );
        assert_eq!(
            Some(&tx.outputs[1].script_pubkey),
            t.default_witness_commitment.as_ref()
        );
        assert_eq!(tx.outputs[1].value, 0);
        // The txid hashes the non-witness form, prefix + extranonce + suffix.
        assert_eq!(tx.txid(), parts.txid(&[1; 16]).unwrap());
        assert_eq!(
            tx.serialize_stripped(),
            parts.serialize_stripped(&[1; 16]).unwrap()
        );
        assert_ne!(tx.serialize(), tx.serialize_stripped());

        // Without a witness commitment: one output, no witness.
        let mut plain = t.clone();
        plain.default_witness_commitment = None;
        let parts = CoinbaseParts::build(&plain, &PAYOUT, DEFAULT_TAG, 4).unwrap();
        let tx = parts.transaction(&[0; 4]).unwrap();
        assert!(!parts.witness_commitment && !tx.has_witness());
        assert_eq!(tx.outputs.len(), 1);
        assert_eq!(tx.outputs[0].value, plain.coinbase_value);
        assert_eq!(
            parts.transaction(&[0; 3]),
            Err(CoinbaseError::ExtranonceSize {
                expected: 4,
                got: 3
            })
        );
    }

    #[test]
    fn branch_folds_to_the_root_of_all_txids() {
        let t = ltc_432();
        let parts = CoinbaseParts::build(&t, &PAYOUT, DEFAULT_TAG, 8).unwrap();
        let branch = merkle_branch(&t);
        assert_eq!(branch.len(), 2); // four transactions
        for extranonce in [[0u8; 8], [0xff; 8], *b"defpool!"] {
            let cb = parts.txid(&extranonce).unwrap();
            let mut all = vec![cb];
            all.extend(t.txids());
            assert_eq!(fold_branch(cb, &branch), merkle_root(&all));
        }
        let mut empty = t.clone();
        empty.transactions.clear();
        assert!(merkle_branch(&empty).is_empty());
    }

    proptest! {
        #[test]
        fn heights_round_trip_as_script_numbers(height in 17u32..=u32::MAX) {
            let push = script_push_int(i64::from(height));
            let len = usize::from(push[0]);
            prop_assert_eq!(push.len(), len + 1);
            // Minimal: the top byte is needed (nonzero, or a sign byte after a set top bit).
            let num = &push[1..];
            prop_assert!(num[len - 1] != 0 || (len > 1 && num[len - 2] & 0x80 != 0));
            let mut value = 0u64;
            for (i, b) in num.iter().enumerate() {
                value |= u64::from(*b) << (8 * i);
            }
            prop_assert_eq!(value, u64::from(height));
        }

        #[test]
        fn branch_fold_equals_root(n in 0usize..40, seed: u64) {
            let mut t = ltc_432();
            // Synthetic txids: only their order and values matter to the tree.
            let proto = t.transactions[0].clone();
            t.transactions = (0..n)
                .map(|i| {
                    let mut tx = proto.clone();
                    tx.txid = sha256d(&(seed ^ i as u64).to_le_bytes());
                    tx
                })
                .collect();
            let cb = sha256d(&seed.to_be_bytes());
            let mut all = vec![cb];
            all.extend(t.txids());
            prop_assert_eq!(fold_branch(cb, &merkle_branch(&t)), merkle_root(&all));
        }
    }
}
