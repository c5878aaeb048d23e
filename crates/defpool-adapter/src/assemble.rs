//! Found work → the full block the daemon's `submitblock` takes. Pure: no I/O.
//!
//! The block is the header, the coinbase in witness serialization (carrying the witness reserved
//! value when the template commits to witnesses), every template transaction in the template's
//! order exactly as the daemon gave it (Litecoin's HogEx last), and, when the template has one,
//! Litecoin's MWEB extension block after the transactions behind its optional-pointer marker
//! `0x01` — the framing [`defpool_core::block::Block::serialize`] writes and litecoind reads
//! (`CBlock` serialization with `mweb_block`).

use defpool_core::block::Block;
use defpool_core::hash::Hash32;
use defpool_core::header::Header;
use defpool_core::merkle::fold_branch;

use crate::coinbase::{merkle_branch, CoinbaseError, CoinbaseParts};
use crate::template::BlockTemplate;

/// The header fields the miner chose (version rolling, time, nonce).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeaderFields {
    pub version: u32,
    pub ntime: u32,
    pub nonce: u32,
}

/// A block ready for `submitblock`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AssembledBlock {
    pub header: Header,
    /// The block hash (sha256d of the header), internal byte order.
    pub hash: Hash32,
    /// The serialized block.
    pub bytes: Vec<u8>,
}

impl AssembledBlock {
    /// The block as `submitblock` takes it.
    pub fn hex(&self) -> String {
        hex::encode(&self.bytes)
    }
}

/// The header of the block `template` + `parts` + `extranonce` + `fields` would make: what a
/// miner hashes.
pub fn block_header(
    template: &BlockTemplate,
    parts: &CoinbaseParts,
    extranonce: &[u8],
    fields: HeaderFields,
) -> Result<Header, CoinbaseError> {
    let coinbase_txid = parts.txid(extranonce)?;
    Ok(Header {
        version: fields.version,
        prev_hash: template.previous_block_hash,
        merkle_root: fold_branch(coinbase_txid, &merkle_branch(template)),
        ntime: fields.ntime,
        nbits: template.bits,
        nonce: fields.nonce,
    })
}

/// Assemble the full block.
pub fn assemble_block(
    template: &BlockTemplate,
    parts: &CoinbaseParts,
    extranonce: &[u8],
    fields: HeaderFields,
) -> Result<AssembledBlock, CoinbaseError> {
    let coinbase = parts.transaction(extranonce)?;
    let header = block_header(template, parts, extranonce, fields)?;
    let mut txs = Vec::with_capacity(template.transactions.len() + 1);
    txs.push(coinbase);
    txs.extend(template.transactions.iter().map(|t| t.tx.clone()));
    let block = Block {
        header,
        txs,
        mweb: template.mweb.clone(),
    };
    debug_assert_eq!(block.merkle_root(), header.merkle_root);
    Ok(AssembledBlock {
        header,
        hash: header.block_hash(),
        bytes: block.serialize(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coinbase::DEFAULT_TAG;
    use crate::template::tests::ltc_432;
    use crate::template::{parse_witness_commitment, WITNESS_RESERVED_VALUE};
    use defpool_core::hash::merkle_parent;

    const PAYOUT: [u8; 22] = [
        0x00, 0x14, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20,
    ];

    fn fields(t: &BlockTemplate) -> HeaderFields {
        HeaderFields {
            version: t.version,
            ntime: t.cur_time,
            nonce: 0x1234_5678,
        }
    }

    #[test]
    fn mweb_block_from_a_real_template() {
        let t = ltc_432();
        let parts = CoinbaseParts::build(&t, &PAYOUT, DEFAULT_TAG, 8).unwrap();
        let extranonce = [0xab; 8];
        let block = assemble_block(&t, &parts, &extranonce, fields(&t)).unwrap();
        let parsed = Block::parse(&block.bytes).unwrap();
        assert_eq!(parsed.serialize(), block.bytes);
        assert_eq!(parsed.header, block.header);
        assert_eq!(parsed.hash(), block.hash);
        assert_eq!(parsed.merkle_root(), block.header.merkle_root);
        assert_eq!(block.header.prev_hash, t.previous_block_hash);
        assert_eq!(block.header.nbits, t.bits);
        assert_eq!(block.header.nonce, 0x1234_5678);

        // Coinbase first, then the template's transactions byte for byte, the HogEx last, then
        // the extension block behind its marker.
        assert_eq!(parsed.txs.len(), 1 + t.transactions.len());
        assert_eq!(parsed.txs[0], parts.transaction(&extranonce).unwrap());
        let mut at = 80 + 1 + parsed.txs[0].serialize().len();
        for tx in &t.transactions {
            assert_eq!(&block.bytes[at..at + tx.data.len()], &tx.data[..]);
            at += tx.data.len();
        }
        assert!(parsed.hogex().is_some());
        assert_eq!(block.bytes[at], 1);
        assert_eq!(&block.bytes[at + 1..], &t.mweb.clone().unwrap()[..]);
        assert_eq!(parsed.mweb, t.mweb);

        // The witness commitment in the coinbase commits to the block's witness root and the
        // reserved value the coinbase carries.
        let commitment = parse_witness_commitment(&parsed.txs[0].outputs[1].script_pubkey).unwrap();
        assert_eq!(
            parsed.txs[0].inputs[0].witness,
            vec![WITNESS_RESERVED_VALUE.to_vec()]
        );
        assert_eq!(
            commitment,
            merkle_parent(&parsed.witness_merkle_root(), &WITNESS_RESERVED_VALUE)
        );
        assert_eq!(block.hex(), hex::encode(&block.bytes));
    }

    #[test]
    fn plain_block_without_segwit_or_mweb() {
        let mut t = ltc_432();
        t.transactions.truncate(1);
        t.mweb = None;
        t.default_witness_commitment = None;
        let parts = CoinbaseParts::build(&t, &PAYOUT, DEFAULT_TAG, 4).unwrap();
        let block = assemble_block(&t, &parts, &[1, 2, 3, 4], fields(&t)).unwrap();
        let parsed = Block::parse(&block.bytes).unwrap();
        assert!(!parsed.txs[0].has_witness());
        assert!(parsed.mweb.is_none() && parsed.hogex().is_none());
        assert_eq!(parsed.txs.len(), 2);
        // The segwit payment keeps its witness.
        assert!(parsed.txs[1].has_witness());
        assert_eq!(
            assemble_block(&t, &parts, &[1, 2, 3], fields(&t)),
            Err(CoinbaseError::ExtranonceSize {
                expected: 4,
                got: 3
            })
        );
    }

    #[test]
    fn header_commits_to_the_extranonce() {
        let t = ltc_432();
        let parts = CoinbaseParts::build(&t, &PAYOUT, DEFAULT_TAG, 8).unwrap();
        let a = block_header(&t, &parts, &[0; 8], fields(&t)).unwrap();
        let b = block_header(&t, &parts, &[1; 8], fields(&t)).unwrap();
        assert_ne!(a.merkle_root, b.merkle_root);
        let block = assemble_block(&t, &parts, &[1; 8], fields(&t)).unwrap();
        assert_eq!(block.header, b);
    }
}
