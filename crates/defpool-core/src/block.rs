//! Block and transaction encoding: a byte-exact codec for blocks of the Bitcoin family (BTC, BCH,
//! LTC, DOGE without AuxPoW), including Litecoin's MWEB framing. Pure: no I/O, and malformed input
//! gives a [`BlockError`], never a panic.
//!
//! # Layout
//!
//! A block is the 80-byte [`Header`], a compact-size count of transactions, the transactions, and,
//! for Litecoin after MWEB activation, the MWEB extension block.
//!
//! A transaction is `version: i32`, then either the legacy form `vin vout lock_time` or the
//! extended form `0x00 flags vin vout [witnesses] [mweb_tx] lock_time`. A reader that finds an
//! empty `vin` reads the next byte as `flags`; a zero `flags` byte was the (empty) `vout` count.
//! Flag bits:
//!
//! * `0x01` (BIP144): one witness stack per input follows `vout`; at least one stack must be
//!   non-empty.
//! * `0x08` (Litecoin MWEB): an *optional pointer* to an MWEB transaction follows the witnesses:
//!   one byte, `1` then the MWEB transaction, or `0` for none. A transaction with the flag and no
//!   MWEB transaction is the block's **HogEx** (integrating transaction), which must have outputs.
//!   Blocks never carry MWEB transaction data inside their transactions (consensus rejects it as
//!   `unexpected-mweb-data`; the MWEB parts live in the extension block), so this codec refuses
//!   a present pointer with [`BlockError::MwebTxData`] instead of decoding MWEB transactions.
//!
//! When a block has at least two transactions and the last one is a HogEx, the MWEB extension
//! block follows the transactions, as another optional pointer: `0` for none, or `1` then the
//! serialized MWEB block, which runs to the end of the block and is kept here as opaque bytes.
//!
//! The txid is sha256d of the *stripped* serialization (legacy form: no witnesses, no MWEB flag
//! or data); the wtxid is sha256d of the serialization with witnesses but without MWEB, or the
//! txid for a transaction without witnesses. Both in internal byte order. The merkle root is
//! computed over the txids of every transaction, the HogEx included.
//!
//! Sources: Litecoin Core `src/primitives/transaction.h` (`SerializeTransaction`,
//! `UnserializeTransaction`), `src/primitives/transaction.cpp` (`ComputeHash`,
//! `ComputeWitnessHash`), `src/primitives/block.h` (`CBlock` serialization),
//! `src/mweb/mweb_models.h` (`MWEB::Block`, `MWEB::Tx` as `WrapOptionalPtr`), `src/serialize.h`
//! (`OptionalPtr`, compact sizes) and `src/mweb/mweb_node.cpp` (no MWEB data inside `vtx`).

use crate::hash::{sha256d, Hash32};
use crate::header::Header;
use crate::merkle::merkle_root;

/// Largest compact size accepted for a length or count (Bitcoin Core's `MAX_SIZE`, 32 MiB).
pub const MAX_SIZE: u64 = 0x0200_0000;

/// Transaction flag bit: witness data follows the outputs.
pub const FLAG_WITNESS: u8 = 0x01;
/// Transaction flag bit (Litecoin): an optional MWEB transaction follows the witnesses.
pub const FLAG_MWEB: u8 = 0x08;

/// Why bytes are not a well-formed block or transaction. Offsets are from the start of the input.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    #[error("input ends early: {needed} more bytes needed at offset {offset}")]
    Truncated { offset: usize, needed: usize },
    #[error("non-canonical compact size at offset {offset}")]
    NonCanonicalCompactSize { offset: usize },
    #[error("compact size {value} at offset {offset} exceeds {MAX_SIZE}")]
    OversizedCompactSize { offset: usize, value: u64 },
    #[error("transaction at offset {offset} sets the witness flag but has no witness data")]
    SuperfluousWitness { offset: usize },
    #[error("transaction at offset {offset} has unknown flags {flags:#04x}")]
    UnknownTxFlags { offset: usize, flags: u8 },
    #[error("transaction at offset {offset} carries MWEB transaction data, which blocks never do")]
    MwebTxData { offset: usize },
    #[error("HogEx transaction at offset {offset} has no outputs")]
    HogExWithoutOutputs { offset: usize },
    #[error("optional-pointer marker {value:#04x} at offset {offset} is neither 0 nor 1")]
    BadOptionalMarker { offset: usize, value: u8 },
    #[error("{count} trailing bytes at offset {offset}")]
    TrailingBytes { offset: usize, count: usize },
}

/// A transaction input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxIn {
    /// Txid of the spent output's transaction, internal byte order (zeros for a coinbase).
    pub prev_txid: Hash32,
    /// Index of the spent output (`0xffffffff` for a coinbase).
    pub prev_vout: u32,
    pub script_sig: Vec<u8>,
    pub sequence: u32,
    /// The input's witness stack (empty without segwit).
    pub witness: Vec<Vec<u8>>,
}

/// A transaction output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxOut {
    /// Amount in the coin's smallest unit.
    pub value: u64,
    pub script_pubkey: Vec<u8>,
}

/// A transaction of a Bitcoin-family coin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transaction {
    pub version: i32,
    pub inputs: Vec<TxIn>,
    pub outputs: Vec<TxOut>,
    /// Litecoin's HogEx marker: the MWEB flag with no MWEB transaction attached.
    pub hogex: bool,
    pub lock_time: u32,
}

/// A block: header, transactions and, for Litecoin with MWEB, the extension block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block {
    pub header: Header,
    pub txs: Vec<Transaction>,
    /// The serialized MWEB extension block (without its optional-pointer marker). Only encoded
    /// when [`Block::has_mweb_field`] holds: then `None` is written as the marker `0`, `Some` as
    /// `1` followed by the bytes. Otherwise the field is absent from the encoding and ignored.
    pub mweb: Option<Vec<u8>>,
}

/// Append the compact-size encoding of `n`.
pub fn write_compact_size(out: &mut Vec<u8>, n: u64) {
    match n {
        0..=0xfc => out.push(n as u8),
        0xfd..=0xffff => {
            out.push(0xfd);
            out.extend_from_slice(&(n as u16).to_le_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(0xfe);
            out.extend_from_slice(&(n as u32).to_le_bytes());
        }
        _ => {
            out.push(0xff);
            out.extend_from_slice(&n.to_le_bytes());
        }
    }
}

/// Read a canonical compact size from the start of `bytes`: the value and the bytes it took.
/// Values above [`MAX_SIZE`] are accepted here (they are only refused as lengths and counts).
pub fn read_compact_size(bytes: &[u8]) -> Result<(u64, usize), BlockError> {
    let mut r = Reader::new(bytes);
    let n = r.compact_size_unchecked()?;
    Ok((n, r.pos))
}

fn write_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    write_compact_size(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// A cursor over the input that fails instead of panicking.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], BlockError> {
        if n > self.remaining() {
            return Err(BlockError::Truncated {
                offset: self.pos,
                needed: n - self.remaining(),
            });
        }
        let slice = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], BlockError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, BlockError> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, BlockError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn compact_size_unchecked(&mut self) -> Result<u64, BlockError> {
        let offset = self.pos;
        let (n, min) = match self.u8()? {
            0xfd => (u64::from(u16::from_le_bytes(self.array()?)), 0xfd),
            0xfe => (u64::from(u32::from_le_bytes(self.array()?)), 0x1_0000),
            0xff => (u64::from_le_bytes(self.array()?), 0x1_0000_0000),
            small => return Ok(u64::from(small)),
        };
        if n < min {
            return Err(BlockError::NonCanonicalCompactSize { offset });
        }
        Ok(n)
    }

    /// A length or count: canonical, at most [`MAX_SIZE`], and no more than the bytes left (every
    /// counted item takes at least one byte), so no allocation outgrows the input.
    fn count(&mut self) -> Result<usize, BlockError> {
        let offset = self.pos;
        let n = self.compact_size_unchecked()?;
        if n > MAX_SIZE {
            return Err(BlockError::OversizedCompactSize { offset, value: n });
        }
        let n = n as usize;
        if n > self.remaining() {
            return Err(BlockError::Truncated {
                offset: self.pos,
                needed: n - self.remaining(),
            });
        }
        Ok(n)
    }

    fn var_bytes(&mut self) -> Result<Vec<u8>, BlockError> {
        let n = self.count()?;
        Ok(self.take(n)?.to_vec())
    }

    /// Bitcoin Core's optional pointer: one byte, `1` when an object follows, `0` when none does.
    fn optional_marker(&mut self) -> Result<bool, BlockError> {
        let offset = self.pos;
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(BlockError::BadOptionalMarker { offset, value }),
        }
    }

    fn finish(&self) -> Result<(), BlockError> {
        if self.remaining() > 0 {
            return Err(BlockError::TrailingBytes {
                offset: self.pos,
                count: self.remaining(),
            });
        }
        Ok(())
    }
}

impl TxIn {
    fn decode(r: &mut Reader<'_>) -> Result<TxIn, BlockError> {
        Ok(TxIn {
            prev_txid: r.array()?,
            prev_vout: r.u32()?,
            script_sig: r.var_bytes()?,
            sequence: r.u32()?,
            witness: Vec::new(),
        })
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.prev_txid);
        out.extend_from_slice(&self.prev_vout.to_le_bytes());
        write_bytes(out, &self.script_sig);
        out.extend_from_slice(&self.sequence.to_le_bytes());
    }
}

impl TxOut {
    fn decode(r: &mut Reader<'_>) -> Result<TxOut, BlockError> {
        Ok(TxOut {
            value: u64::from_le_bytes(r.array()?),
            script_pubkey: r.var_bytes()?,
        })
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.value.to_le_bytes());
        write_bytes(out, &self.script_pubkey);
    }
}

fn decode_vec<'a, T>(
    r: &mut Reader<'a>,
    mut item: impl FnMut(&mut Reader<'a>) -> Result<T, BlockError>,
) -> Result<Vec<T>, BlockError> {
    let n = r.count()?;
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(item(r)?);
    }
    Ok(v)
}

impl Transaction {
    /// Parse one transaction that fills `bytes` exactly.
    pub fn parse(bytes: &[u8]) -> Result<Transaction, BlockError> {
        let mut r = Reader::new(bytes);
        let tx = Transaction::decode(&mut r)?;
        r.finish()?;
        Ok(tx)
    }

    fn decode(r: &mut Reader<'_>) -> Result<Transaction, BlockError> {
        let start = r.pos;
        let version = i32::from_le_bytes(r.array()?);
        let mut inputs = decode_vec(r, TxIn::decode)?;
        let mut flags = 0u8;
        let outputs;
        if inputs.is_empty() {
            // Either the extended form's dummy, or a genuinely empty vin followed by an empty
            // vout (flags == 0 is then that vout's count).
            flags = r.u8()?;
            if flags != 0 {
                inputs = decode_vec(r, TxIn::decode)?;
                outputs = decode_vec(r, TxOut::decode)?;
            } else {
                outputs = Vec::new();
            }
        } else {
            outputs = decode_vec(r, TxOut::decode)?;
        }
        if flags & FLAG_WITNESS != 0 {
            flags ^= FLAG_WITNESS;
            for input in &mut inputs {
                input.witness = decode_vec(r, Reader::var_bytes)?;
            }
            if inputs.iter().all(|i| i.witness.is_empty()) {
                return Err(BlockError::SuperfluousWitness { offset: start });
            }
        }
        let mut hogex = false;
        if flags & FLAG_MWEB != 0 {
            flags ^= FLAG_MWEB;
            let marker_at = r.pos;
            if r.optional_marker()? {
                return Err(BlockError::MwebTxData { offset: marker_at });
            }
            if outputs.is_empty() {
                return Err(BlockError::HogExWithoutOutputs { offset: start });
            }
            hogex = true;
        }
        if flags != 0 {
            return Err(BlockError::UnknownTxFlags {
                offset: start,
                flags,
            });
        }
        let lock_time = r.u32()?;
        Ok(Transaction {
            version,
            inputs,
            outputs,
            hogex,
            lock_time,
        })
    }

    /// Whether any input has witness data (and so the witness flag is serialized).
    pub fn has_witness(&self) -> bool {
        self.inputs.iter().any(|i| !i.witness.is_empty())
    }

    /// Whether this is a coinbase: one input spending the null outpoint.
    pub fn is_coinbase(&self) -> bool {
        self.inputs.len() == 1
            && self.inputs[0].prev_txid == [0; 32]
            && self.inputs[0].prev_vout == u32::MAX
    }

    fn encode(&self, out: &mut Vec<u8>, witness: bool, mweb: bool) {
        out.extend_from_slice(&self.version.to_le_bytes());
        let mut flags = 0u8;
        if witness && self.has_witness() {
            flags |= FLAG_WITNESS;
        }
        if mweb && self.hogex {
            flags |= FLAG_MWEB;
        }
        if flags != 0 {
            out.push(0); // empty dummy vin
            out.push(flags);
        }
        write_compact_size(out, self.inputs.len() as u64);
        for input in &self.inputs {
            input.encode(out);
        }
        write_compact_size(out, self.outputs.len() as u64);
        for output in &self.outputs {
            output.encode(out);
        }
        if flags & FLAG_WITNESS != 0 {
            for input in &self.inputs {
                write_compact_size(out, input.witness.len() as u64);
                for item in &input.witness {
                    write_bytes(out, item);
                }
            }
        }
        if flags & FLAG_MWEB != 0 {
            out.push(0); // no MWEB transaction: the HogEx
        }
        out.extend_from_slice(&self.lock_time.to_le_bytes());
    }

    /// The full serialization, as in blocks: witnesses and the HogEx marker included.
    pub fn serialize(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out, true, true);
        out
    }

    /// The stripped (legacy) serialization the txid hashes: no witnesses, no MWEB flag. This is
    /// also the coinbase form a share's merkle root is built from.
    pub fn serialize_stripped(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out, false, false);
        out
    }

    /// The transaction id, internal byte order.
    pub fn txid(&self) -> Hash32 {
        sha256d(&self.serialize_stripped())
    }

    /// The witness transaction id, internal byte order: the txid when there are no witnesses.
    /// (A block's witness commitment uses zeros for the coinbase instead.)
    pub fn wtxid(&self) -> Hash32 {
        if !self.has_witness() {
            return self.txid();
        }
        let mut out = Vec::new();
        self.encode(&mut out, true, false);
        sha256d(&out)
    }
}

impl Block {
    /// Parse a block that fills `bytes` exactly.
    pub fn parse(bytes: &[u8]) -> Result<Block, BlockError> {
        let mut r = Reader::new(bytes);
        let header = Header::deserialize(&r.array::<{ Header::SIZE }>()?);
        let txs = decode_vec(&mut r, Transaction::decode)?;
        let mut block = Block {
            header,
            txs,
            mweb: None,
        };
        if block.has_mweb_field() && r.optional_marker()? {
            // The extension block is the rest of the input; it cannot be empty.
            if r.remaining() == 0 {
                return Err(BlockError::Truncated {
                    offset: r.pos,
                    needed: 1,
                });
            }
            block.mweb = Some(r.take(r.remaining())?.to_vec());
        }
        r.finish()?;
        Ok(block)
    }

    /// Whether the encoding carries the MWEB extension field: at least two transactions and the
    /// last one a HogEx.
    pub fn has_mweb_field(&self) -> bool {
        self.txs.len() >= 2 && self.txs.last().is_some_and(|tx| tx.hogex)
    }

    /// The HogEx transaction, if the block has one in its place (last, after the coinbase).
    pub fn hogex(&self) -> Option<&Transaction> {
        if self.has_mweb_field() {
            self.txs.last()
        } else {
            None
        }
    }

    /// The coinbase transaction, if the block has one first.
    pub fn coinbase(&self) -> Option<&Transaction> {
        self.txs.first().filter(|tx| tx.is_coinbase())
    }

    /// The block's bytes, exactly as parsed.
    pub fn serialize(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Header::SIZE + 1 + 250 * self.txs.len());
        out.extend_from_slice(&self.header.serialize());
        write_compact_size(&mut out, self.txs.len() as u64);
        for tx in &self.txs {
            tx.encode(&mut out, true, true);
        }
        if self.has_mweb_field() {
            match &self.mweb {
                Some(bytes) => {
                    out.push(1);
                    out.extend_from_slice(bytes);
                }
                None => out.push(0),
            }
        }
        out
    }

    /// The block hash (sha256d of the header), internal byte order.
    pub fn hash(&self) -> Hash32 {
        self.header.block_hash()
    }

    /// Every transaction's txid, in block order.
    pub fn txids(&self) -> Vec<Hash32> {
        self.txs.iter().map(Transaction::txid).collect()
    }

    /// The merkle root over the txids (the HogEx included), as the header should carry it.
    pub fn merkle_root(&self) -> Hash32 {
        merkle_root(&self.txids())
    }

    /// The BIP141 witness merkle root: over the wtxids, with zeros for the coinbase's.
    pub fn witness_merkle_root(&self) -> Hash32 {
        let wtxids: Vec<Hash32> = self
            .txs
            .iter()
            .enumerate()
            .map(|(i, tx)| if i == 0 { [0; 32] } else { tx.wtxid() })
            .collect();
        merkle_root(&wtxids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Litecoin's mainnet genesis coinbase (stripped = full: no witness).
    const LTC_GENESIS_COINBASE: &str = "01000000010000000000000000000000000000000000000000000000000000000000000000ffffffff4804ffff001d0104404e592054696d65732030352f4f63742f32303131205374657665204a6f62732c204170706c65e280997320566973696f6e6172792c2044696573206174203536ffffffff0100f2052a010000004341040184710fa689ad5023690c80f3a49c8f13f8d45b8c857fbcbc8bc4a8e4d3eb4b10f4d4604fa08dce601aaf0f470216fe1b51850b4acf21b179c45070ac7b03a9ac00000000";

    fn tx_in(seed: u8, witness: Vec<Vec<u8>>) -> TxIn {
        TxIn {
            prev_txid: [seed; 32],
            prev_vout: u32::from(seed),
            script_sig: vec![seed; usize::from(seed % 5)],
            sequence: 0xffff_fffe,
            witness,
        }
    }

    fn tx_out(value: u64) -> TxOut {
        TxOut {
            value,
            script_pubkey: vec![0x51],
        }
    }

    fn tx(inputs: Vec<TxIn>, outputs: Vec<TxOut>, hogex: bool) -> Transaction {
        Transaction {
            version: 2,
            inputs,
            outputs,
            hogex,
            lock_time: 7,
        }
    }

    fn header() -> Header {
        Header {
            version: 0x2000_0000,
            prev_hash: [3; 32],
            merkle_root: [4; 32],
            ntime: 1_700_000_000,
            nbits: 0x207f_ffff,
            nonce: 9,
        }
    }

    #[test]
    fn compact_sizes_are_canonical_and_bounded() {
        for (n, len) in [
            (0u64, 1),
            (0xfc, 1),
            (0xfd, 3),
            (0xffff, 3),
            (0x1_0000, 5),
            (0xffff_ffff, 5),
            (0x1_0000_0000, 9),
            (u64::MAX, 9),
        ] {
            let mut out = Vec::new();
            write_compact_size(&mut out, n);
            assert_eq!(out.len(), len, "{n:#x}");
            assert_eq!(read_compact_size(&out), Ok((n, len)));
        }
        assert_eq!(
            read_compact_size(&[0xfd, 0xfc, 0x00]),
            Err(BlockError::NonCanonicalCompactSize { offset: 0 })
        );
        assert_eq!(
            read_compact_size(&[0xfe, 0xff, 0xff, 0, 0]),
            Err(BlockError::NonCanonicalCompactSize { offset: 0 })
        );
        assert_eq!(
            read_compact_size(&[0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]),
            Err(BlockError::NonCanonicalCompactSize { offset: 0 })
        );
        assert_eq!(
            read_compact_size(&[0xfe, 0]),
            Err(BlockError::Truncated {
                offset: 1,
                needed: 3
            })
        );
        // As a length, 32 MiB + 1 is refused before anything is allocated.
        let mut bytes = 1i32.to_le_bytes().to_vec();
        write_compact_size(&mut bytes, MAX_SIZE + 1);
        assert_eq!(
            Transaction::parse(&bytes),
            Err(BlockError::OversizedCompactSize {
                offset: 4,
                value: MAX_SIZE + 1
            })
        );
        // A count larger than the bytes left is truncation, not a huge allocation.
        let mut bytes = 1i32.to_le_bytes().to_vec();
        write_compact_size(&mut bytes, 1_000_000);
        assert!(matches!(
            Transaction::parse(&bytes),
            Err(BlockError::Truncated { .. })
        ));
    }

    #[test]
    fn litecoin_genesis_coinbase() {
        let bytes = hex::decode(LTC_GENESIS_COINBASE).unwrap();
        let tx = Transaction::parse(&bytes).unwrap();
        assert!(tx.is_coinbase() && !tx.has_witness() && !tx.hogex);
        assert_eq!(tx.outputs[0].value, 50 * 100_000_000);
        assert_eq!(tx.serialize(), bytes);
        assert_eq!(tx.serialize_stripped(), bytes);
        // The genesis merkle root, as explorers print it.
        assert_eq!(
            crate::hash::to_display_hex(&tx.txid()),
            "97ddfbbae6be97fd6cdf3e7ca13232a3afff2353e29badfab7f73011edd4ced9"
        );
        assert_eq!(tx.wtxid(), tx.txid());
    }

    #[test]
    fn segwit_and_hogex_flags() {
        let segwit = tx(
            vec![tx_in(1, vec![vec![0xaa; 3], vec![]])],
            vec![tx_out(5)],
            false,
        );
        let bytes = segwit.serialize();
        assert_eq!(&bytes[4..6], &[0x00, FLAG_WITNESS]);
        assert_eq!(Transaction::parse(&bytes), Ok(segwit.clone()));
        assert_ne!(segwit.wtxid(), segwit.txid());
        assert_eq!(segwit.txid(), sha256d(&segwit.serialize_stripped()));

        let hogex = tx(vec![tx_in(2, vec![])], vec![tx_out(6)], true);
        let bytes = hogex.serialize();
        assert_eq!(&bytes[4..6], &[0x00, FLAG_MWEB]);
        assert_eq!(
            bytes[bytes.len() - 5],
            0,
            "null MWEB tx before the lock time"
        );
        assert_eq!(Transaction::parse(&bytes), Ok(hogex.clone()));
        // Neither id commits to the HogEx marker.
        let plain = Transaction {
            hogex: false,
            ..hogex.clone()
        };
        assert_eq!(hogex.txid(), plain.txid());
        assert_eq!(hogex.wtxid(), plain.txid());

        let both = tx(vec![tx_in(3, vec![vec![1]])], vec![tx_out(7)], true);
        let bytes = both.serialize();
        assert_eq!(bytes[5], FLAG_WITNESS | FLAG_MWEB);
        assert_eq!(Transaction::parse(&bytes), Ok(both.clone()));
        let witness_only = Transaction {
            hogex: false,
            ..both.clone()
        };
        assert_eq!(both.wtxid(), witness_only.wtxid());
    }

    #[test]
    fn empty_transactions_round_trip() {
        // vin and vout both empty: the "flags" byte is the empty vout's count.
        let empty = tx(vec![], vec![], false);
        let bytes = empty.serialize();
        assert_eq!(bytes.len(), 4 + 1 + 1 + 4);
        assert_eq!(Transaction::parse(&bytes), Ok(empty));
        // A HogEx without inputs (the MWEB flag keeps the extended form unambiguous).
        let hogex = tx(vec![], vec![tx_out(1)], true);
        assert_eq!(Transaction::parse(&hogex.serialize()), Ok(hogex));
    }

    #[test]
    fn malformed_transactions_are_typed_errors() {
        let base = tx(vec![tx_in(1, vec![])], vec![tx_out(5)], false).serialize();
        let extended = |flags: u8, tail: &[u8]| {
            let mut b = base[..4].to_vec();
            b.extend_from_slice(&[0, flags]);
            b.extend_from_slice(&base[4..base.len() - 4]);
            b.extend_from_slice(tail);
            b.extend_from_slice(&base[base.len() - 4..]);
            b
        };
        // Witness flag with only empty stacks.
        assert_eq!(
            Transaction::parse(&extended(FLAG_WITNESS, &[0])),
            Err(BlockError::SuperfluousWitness { offset: 0 })
        );
        // Unknown flag bits.
        assert_eq!(
            Transaction::parse(&extended(0x02, &[])),
            Err(BlockError::UnknownTxFlags {
                offset: 0,
                flags: 0x02
            })
        );
        // A present MWEB transaction (Litecoin relays such transactions, blocks never hold them).
        let pos = base.len() - 4 + 2;
        assert_eq!(
            Transaction::parse(&extended(FLAG_MWEB, &[1, 0xaa])),
            Err(BlockError::MwebTxData { offset: pos })
        );
        assert_eq!(
            Transaction::parse(&extended(FLAG_MWEB, &[2])),
            Err(BlockError::BadOptionalMarker {
                offset: pos,
                value: 2
            })
        );
        // The start of a real MWEB-only transaction from a Litecoin regtest mempool:
        // version 2, dummy, flags 0x08, empty vin and vout, then a present MWEB transaction.
        let mweb_only = hex::decode("020000000008000001a50fc8002f8a23b2").unwrap();
        assert_eq!(
            Transaction::parse(&mweb_only),
            Err(BlockError::MwebTxData { offset: 8 })
        );
        // A HogEx must have outputs.
        let mut no_outputs = 2i32.to_le_bytes().to_vec();
        no_outputs.extend_from_slice(&[0, FLAG_MWEB, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            Transaction::parse(&no_outputs),
            Err(BlockError::HogExWithoutOutputs { offset: 0 })
        );
        // Truncation and trailing bytes.
        assert!(matches!(
            Transaction::parse(&base[..base.len() - 1]),
            Err(BlockError::Truncated { .. })
        ));
        let mut long = base.clone();
        long.push(0);
        assert_eq!(
            Transaction::parse(&long),
            Err(BlockError::TrailingBytes {
                offset: base.len(),
                count: 1
            })
        );
    }

    #[test]
    fn mweb_extension_framing() {
        let coinbase = tx(vec![tx_in(0, vec![])], vec![tx_out(1)], false);
        let hogex = tx(vec![tx_in(1, vec![])], vec![tx_out(2)], true);
        let mut block = Block {
            header: header(),
            txs: vec![coinbase.clone(), hogex.clone()],
            mweb: Some(vec![0xde, 0xad, 0xbe, 0xef]),
        };
        let bytes = block.serialize();
        assert_eq!(&bytes[bytes.len() - 5..], &[1, 0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(Block::parse(&bytes), Ok(block.clone()));
        assert!(block.hogex().is_some());

        // A null extension block is the single marker byte 0; anything after it is trailing.
        block.mweb = None;
        let bytes = block.serialize();
        assert_eq!(bytes.last(), Some(&0));
        assert_eq!(Block::parse(&bytes), Ok(block.clone()));
        let mut long = bytes.clone();
        long.push(7);
        assert_eq!(
            Block::parse(&long),
            Err(BlockError::TrailingBytes {
                offset: bytes.len(),
                count: 1
            })
        );
        // The marker must be there, be 0 or 1, and a present block must have bytes.
        let cut = &bytes[..bytes.len() - 1];
        assert!(matches!(
            Block::parse(cut),
            Err(BlockError::Truncated { .. })
        ));
        let mut bad = cut.to_vec();
        bad.push(5);
        assert_eq!(
            Block::parse(&bad),
            Err(BlockError::BadOptionalMarker {
                offset: cut.len(),
                value: 5
            })
        );
        let mut empty = cut.to_vec();
        empty.push(1);
        assert!(matches!(
            Block::parse(&empty),
            Err(BlockError::Truncated { .. })
        ));

        // Without a HogEx last (or with a lone HogEx) there is no extension field at all.
        let plain = Block {
            header: header(),
            txs: vec![coinbase.clone()],
            mweb: None,
        };
        let bytes = plain.serialize();
        assert_eq!(bytes.len(), 80 + 1 + coinbase.serialize().len());
        assert_eq!(Block::parse(&bytes), Ok(plain));
        let lone = Block {
            header: header(),
            txs: vec![hogex],
            mweb: None,
        };
        assert!(!lone.has_mweb_field());
        assert_eq!(Block::parse(&lone.serialize()), Ok(lone));
    }

    #[test]
    fn merkle_roots_cover_every_transaction() {
        let coinbase = tx(vec![tx_in(0, vec![vec![0; 32]])], vec![tx_out(1)], false);
        let spend = tx(vec![tx_in(4, vec![vec![1, 2]])], vec![tx_out(2)], false);
        let hogex = tx(vec![tx_in(5, vec![])], vec![tx_out(3)], true);
        let block = Block {
            header: header(),
            txs: vec![coinbase.clone(), spend.clone(), hogex.clone()],
            mweb: Some(vec![0]),
        };
        assert_eq!(
            block.merkle_root(),
            merkle_root(&[coinbase.txid(), spend.txid(), hogex.txid()])
        );
        assert_eq!(
            block.witness_merkle_root(),
            merkle_root(&[[0; 32], spend.wtxid(), hogex.wtxid()])
        );
        assert_eq!(block.hash(), header().block_hash());
    }

    #[test]
    fn empty_block_and_short_header() {
        let block = Block {
            header: header(),
            txs: vec![],
            mweb: None,
        };
        assert_eq!(Block::parse(&block.serialize()), Ok(block.clone()));
        assert_eq!(block.merkle_root(), [0; 32]);
        assert_eq!(
            Block::parse(&[0; 79]),
            Err(BlockError::Truncated {
                offset: 0,
                needed: 1
            })
        );
        assert!(matches!(
            Block::parse(&[]),
            Err(BlockError::Truncated { .. })
        ));
    }

    fn any_tx_in(witness: bool) -> impl Strategy<Value = TxIn> {
        let stack = if witness {
            prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..4).boxed()
        } else {
            Just(Vec::new()).boxed()
        };
        (
            prop::array::uniform32(any::<u8>()),
            any::<u32>(),
            prop::collection::vec(any::<u8>(), 0..300),
            any::<u32>(),
            stack,
        )
            .prop_map(
                |(prev_txid, prev_vout, script_sig, sequence, witness)| TxIn {
                    prev_txid,
                    prev_vout,
                    script_sig,
                    sequence,
                    witness,
                },
            )
    }

    fn any_tx_out() -> impl Strategy<Value = TxOut> {
        (any::<u64>(), prop::collection::vec(any::<u8>(), 0..80)).prop_map(
            |(value, script_pubkey)| TxOut {
                value,
                script_pubkey,
            },
        )
    }

    /// Transactions the format can encode unambiguously: a legacy transaction needs an input
    /// (an empty vin starts the extended form), and a HogEx needs an output.
    fn any_tx(hogex: bool) -> impl Strategy<Value = Transaction> {
        (
            any::<i32>(),
            any::<bool>(),
            any::<u32>(),
            prop::collection::vec(any_tx_out(), usize::from(hogex)..4),
        )
            .prop_flat_map(move |(version, witness, lock_time, outputs)| {
                // Witness stacks may all come out empty, making the transaction legacy: so only
                // a HogEx goes without inputs.
                let min_inputs = usize::from(!hogex);
                prop::collection::vec(any_tx_in(witness), min_inputs..4).prop_map(move |inputs| {
                    Transaction {
                        version,
                        inputs,
                        outputs: outputs.clone(),
                        hogex,
                        lock_time,
                    }
                })
            })
    }

    fn any_block() -> impl Strategy<Value = Block> {
        (
            any::<(u32, u32, u32, u32)>(),
            prop::collection::vec(any_tx(false), 0..5),
            prop::option::of(any_tx(true)),
            prop::option::of(prop::collection::vec(any::<u8>(), 1..200)),
        )
            .prop_map(|((version, ntime, nbits, nonce), mut txs, hogex, mweb)| {
                let with_hogex = hogex.is_some();
                txs.extend(hogex);
                let mut block = Block {
                    header: Header {
                        version,
                        prev_hash: [1; 32],
                        merkle_root: [0; 32],
                        ntime,
                        nbits,
                        nonce,
                    },
                    txs,
                    mweb: None,
                };
                if with_hogex && block.has_mweb_field() {
                    block.mweb = mweb;
                }
                block.header.merkle_root = block.merkle_root();
                block
            })
    }

    proptest! {
        #[test]
        fn synthetic_blocks_round_trip(block in any_block()) {
            let bytes = block.serialize();
            let parsed = Block::parse(&bytes).unwrap();
            prop_assert_eq!(&parsed, &block);
            prop_assert_eq!(parsed.serialize(), bytes);
            prop_assert_eq!(parsed.merkle_root(), parsed.header.merkle_root);
            for tx in &parsed.txs {
                prop_assert_eq!(Transaction::parse(&tx.serialize()).unwrap(), tx.clone());
            }
        }

        #[test]
        fn cut_blocks_fail_cleanly(block in any_block(), cut in any::<prop::sample::Index>()) {
            let bytes = block.serialize();
            let len = cut.index(bytes.len());
            let result = Block::parse(&bytes[..len]);
            // Only a cut inside the opaque extension block can still parse.
            let mweb_start = bytes.len() - block.mweb.as_ref().map_or(0, Vec::len);
            if block.mweb.is_none() || len <= mweb_start {
                prop_assert!(result.is_err());
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
            let _ = Block::parse(&bytes);
            if let Ok(tx) = Transaction::parse(&bytes) {
                prop_assert_eq!(tx.serialize(), bytes);
            }
        }

        #[test]
        fn mutated_blocks_never_panic(block in any_block(), at in any::<prop::sample::Index>(), byte: u8) {
            let mut bytes = block.serialize();
            let i = at.index(bytes.len());
            bytes[i] = byte;
            if let Ok(parsed) = Block::parse(&bytes) {
                prop_assert_eq!(parsed.serialize(), bytes);
            }
        }
    }
}
