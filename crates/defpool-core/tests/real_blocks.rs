//! The block codec and share validation on real blocks:
//!
//! * Litecoin mainnet genesis and a Litecoin regtest block with segwit, an MWEB peg-in, the HogEx
//!   and the MWEB extension block, captured from litecoind by `scripts/capture-ltc-fixtures.sh`
//!   (see `tests/fixtures/README.md`);
//! * Bitcoin mainnet block 702,861 from the `bitcoin-test-data` crate;
//! * a SYNTHETIC Bitcoin Cash block built and mined here (no BCH source is available offline).
//!
//! Every block is parsed, re-serialized byte for byte, its merkle root recomputed, and its proof
//! of work checked through `share::Job::validate`, the path miners' shares take.

use defpool_core::block::{Block, Transaction, TxIn, TxOut};
use defpool_core::hash::{sha256d, to_display_hex, Hash32};
use defpool_core::header::Header;
use defpool_core::merkle::coinbase_branch;
use defpool_core::share::{Job, ShareClass, Submission, SubmittedVersion};
use defpool_core::{Algorithm, CompactTarget};

fn fixture(name: &str) -> String {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading fixture {name}: {e}"))
}

fn fixture_block(name: &str) -> Vec<u8> {
    hex::decode(fixture(name).trim()).expect("fixture is hex")
}

/// A job whose coinbase is the block's own coinbase, split around `extranonce_len` bytes of its
/// scriptSig starting `extranonce_at` bytes into it, so that the miner's extranonce is those
/// bytes. Both targets are the header's nBits target.
fn job_for(
    block: &Block,
    algorithm: Algorithm,
    extranonce_at: usize,
    extranonce_len: usize,
) -> (Job, Vec<u8>) {
    let coinbase = block.coinbase().expect("the block starts with a coinbase");
    let stripped = coinbase.serialize_stripped();
    let script = &coinbase.inputs[0].script_sig;
    assert!(
        extranonce_at + extranonce_len <= script.len(),
        "extranonce inside the scriptSig"
    );
    let script_at = stripped
        .windows(script.len())
        .position(|w| w == script.as_slice())
        .expect("scriptSig inside the coinbase");
    let start = script_at + extranonce_at;
    let end = start + extranonce_len;
    let target = CompactTarget(block.header.nbits)
        .to_target()
        .expect("valid nBits");
    let job = Job {
        id: 1,
        algorithm,
        version: block.header.version,
        version_mask: 0,
        prev_hash: block.header.prev_hash,
        coinbase_prefix: stripped[..start].to_vec(),
        coinbase_suffix: stripped[end..].to_vec(),
        extranonce_size: extranonce_len,
        merkle_branch: coinbase_branch(&block.txids()),
        nbits: block.header.nbits,
        ntime: block.header.ntime,
        share_target: target,
        block_target: target,
    };
    (job, stripped[start..end].to_vec())
}

fn submit(job: &Job, extranonce: &[u8], header: &Header, nonce: u32) -> ShareClass {
    let sub = Submission {
        extranonce,
        ntime: header.ntime,
        nonce,
        version: SubmittedVersion::Unrolled,
    };
    job.validate(&sub, header.ntime)
        .expect("cheap checks pass")
        .class
}

/// The block's own nonce and extranonce make a block candidate, and the job rebuilds exactly the
/// block's header.
fn assert_block_candidate(job: &Job, extranonce: &[u8], header: &Header) {
    let sub = Submission {
        extranonce,
        ntime: header.ntime,
        nonce: header.nonce,
        version: SubmittedVersion::Unrolled,
    };
    let checked = job.validate(&sub, header.ntime).expect("cheap checks pass");
    assert_eq!(checked.header, *header);
    assert_eq!(checked.class, ShareClass::BlockCandidate);
}

/// The BIP141 commitment in the coinbase (the last output starting with it), if any.
fn witness_commitment(coinbase: &Transaction) -> Option<Hash32> {
    coinbase
        .outputs
        .iter()
        .rev()
        .find(|o| {
            o.script_pubkey.len() >= 38
                && o.script_pubkey[..6] == [0x6a, 0x24, 0xaa, 0x21, 0xa9, 0xed]
        })
        .map(|o| o.script_pubkey[6..38].try_into().unwrap())
}

fn check_witness_commitment(block: &Block) {
    let coinbase = block.coinbase().unwrap();
    let commitment = witness_commitment(coinbase).expect("a witness commitment");
    let reserved = &coinbase.inputs[0].witness[0];
    let mut preimage = block.witness_merkle_root().to_vec();
    preimage.extend_from_slice(reserved);
    assert_eq!(sha256d(&preimage), commitment, "witness commitment");
}

#[test]
fn litecoin_mainnet_genesis() {
    let bytes = fixture_block("ltc-mainnet-genesis.hex");
    let block = Block::parse(&bytes).unwrap();
    assert_eq!(
        to_display_hex(&block.hash()),
        "12a765e31ffd4059bada1e25190f6e98c99d9714d334efa41a195a7e7e04bfe2"
    );
    assert_eq!(
        to_display_hex(&block.header.merkle_root),
        "97ddfbbae6be97fd6cdf3e7ca13232a3afff2353e29badfab7f73011edd4ced9"
    );
    assert_eq!(block.merkle_root(), block.header.merkle_root);
    assert_eq!(block.txs.len(), 1);
    assert!(block.mweb.is_none() && block.hogex().is_none());
    assert_eq!(block.serialize(), bytes);
    assert_eq!(
        (block.header.nbits, block.header.nonce),
        (0x1e0ffff0, 2_084_524_493)
    );

    // Its real scrypt proof of work, through share validation: the extranonce is four bytes of
    // the genesis scriptSig (any bytes of the coinbase would do).
    let (job, extranonce) = job_for(&block, Algorithm::Scrypt, 8, 4);
    assert_block_candidate(&job, &extranonce, &block.header);
    // Any other nonce misses a 2^-20 target (almost surely; this one does).
    assert_eq!(
        submit(&job, &extranonce, &block.header, block.header.nonce + 1),
        ShareClass::BelowTarget
    );
    // So does another extranonce with the right nonce: the coinbase is committed.
    let mut other = extranonce.clone();
    other[0] ^= 1;
    assert_eq!(
        submit(&job, &other, &block.header, block.header.nonce),
        ShareClass::BelowTarget
    );
}

#[test]
fn litecoin_regtest_block_with_segwit_and_mweb() {
    let bytes = fixture_block("ltc-regtest-mweb-block.hex");
    let json: serde_json::Value =
        serde_json::from_str(&fixture("ltc-regtest-mweb-block.json")).unwrap();
    let block = Block::parse(&bytes).unwrap();
    assert_eq!(block.serialize(), bytes, "byte-identical re-serialization");

    // What litecoind says about it.
    assert_eq!(
        to_display_hex(&block.hash()),
        json["hash"].as_str().unwrap()
    );
    assert_eq!(
        to_display_hex(&block.header.merkle_root),
        json["merkleroot"].as_str().unwrap()
    );
    assert_eq!(block.txs.len() as u64, json["nTx"].as_u64().unwrap());
    assert_eq!(bytes.len() as u64, json["size"].as_u64().unwrap());
    assert_eq!(
        block.header.nbits,
        u32::from_str_radix(json["bits"].as_str().unwrap(), 16).unwrap()
    );
    assert_eq!(
        u64::from(block.header.nonce),
        json["nonce"].as_u64().unwrap()
    );
    let height = json["height"].as_u64().unwrap();
    assert!(height >= 432, "past MWEB activation on regtest");
    let txids: Vec<String> = block.txids().iter().map(to_display_hex).collect();
    let expected: Vec<&str> = json["tx"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(txids, expected);
    // The stripped size: no witnesses, no MWEB marker, no extension block.
    let stripped: usize = 80
        + 1
        + block
            .txs
            .iter()
            .map(|t| t.serialize_stripped().len())
            .sum::<usize>();
    assert_eq!(stripped as u64, json["strippedsize"].as_u64().unwrap());

    // The merkle root commits to every transaction, the HogEx (last) included.
    assert_eq!(block.merkle_root(), block.header.merkle_root);
    let hogex = block.hogex().expect("a HogEx");
    assert!(hogex.hogex && std::ptr::eq(hogex, block.txs.last().unwrap()));
    assert!(block.txs[..block.txs.len() - 1].iter().all(|t| !t.hogex));
    let without_hogex: Vec<Hash32> = block.txids()[..block.txs.len() - 1].to_vec();
    assert_ne!(
        defpool_core::merkle::merkle_root(&without_hogex),
        block.header.merkle_root
    );

    // The extension block is there, and the HogEx's first output commits to its header hash:
    // OP_8 (witness version 8) pushing the 32-byte MWEB header hash.
    let mweb = block.mweb.as_ref().expect("an MWEB extension block");
    assert!(!mweb.is_empty());
    // (MWEB hashes print in their own byte order, not reversed like txids.)
    let hog_addr = &hogex.outputs[0].script_pubkey;
    assert_eq!(hog_addr.len(), 34);
    assert_eq!(hog_addr[..2], [0x58, 0x20]);
    assert_eq!(
        hex::encode(&hog_addr[2..]),
        json["mweb"]["hash"].as_str().unwrap()
    );

    // Segwit: a non-coinbase transaction carries witness data, and the coinbase's witness
    // commitment matches the wtxids (the HogEx's included).
    assert!(block.txs[1..].iter().any(Transaction::has_witness));
    check_witness_commitment(&block);
    // A peg-in: an output of witness version 9 (OP_9, 32-byte kernel id).
    assert!(block.txs[1..].iter().any(|t| t
        .outputs
        .iter()
        .any(|o| o.script_pubkey.len() == 34 && o.script_pubkey[..2] == [0x59, 0x20])));

    // Its scrypt proof of work against nBits, through share validation.
    let (job, extranonce) = job_for(&block, Algorithm::Scrypt, 0, 2);
    assert_block_candidate(&job, &extranonce, &block.header);
    // About every other nonce misses the regtest target: find one that does.
    let missed = (1..64u32).any(|d| {
        submit(
            &job,
            &extranonce,
            &block.header,
            block.header.nonce.wrapping_add(d),
        ) == ShareClass::BelowTarget
    });
    assert!(missed);
}

#[test]
fn bitcoin_mainnet_block_702861() {
    // Real block from the `bitcoin-test-data` crate (dev-dependency).
    let bytes = bitcoin_test_data::blocks::mainnet_702861();
    let block = Block::parse(bytes).unwrap();
    assert_eq!(
        to_display_hex(&block.hash()),
        "000000000000000000000c835b2adcaedc20fdf6ee440009c249452c726dafae"
    );
    assert_eq!(block.serialize(), bytes, "byte-identical re-serialization");
    assert_eq!(block.merkle_root(), block.header.merkle_root);
    assert!(block.txs.len() > 1000);
    assert!(block.mweb.is_none() && block.hogex().is_none());
    assert!(block.txs[1..].iter().all(|t| !t.is_coinbase()));
    assert!(block.txs.iter().filter(|t| t.has_witness()).count() > 100);
    check_witness_commitment(&block);
    for tx in &block.txs {
        assert_eq!(Transaction::parse(&tx.serialize()).as_ref(), Ok(tx));
    }

    // Its sha256d proof of work through share validation, with a real merkle branch.
    let (job, extranonce) = job_for(&block, Algorithm::Sha256d, 4, 8);
    assert_eq!(
        job.merkle_branch.len(),
        (usize::BITS - (block.txs.len() - 1).leading_zeros()) as usize
    );
    assert_block_candidate(&job, &extranonce, &block.header);
    assert_eq!(
        submit(&job, &extranonce, &block.header, block.header.nonce ^ 1),
        ShareClass::BelowTarget
    );
}

/// Bitcoin's mainnet genesis block from the `bitcoin` crate (rust-bitcoin), which also decodes
/// block 702861 independently of our codec as a cross-check.
#[test]
fn bitcoin_mainnet_genesis_and_cross_check_with_rust_bitcoin() {
    use bitcoin::consensus::encode::{deserialize, serialize};
    let genesis = bitcoin::constants::genesis_block(bitcoin::Network::Bitcoin);
    let bytes = serialize(&genesis);
    let block = Block::parse(&bytes).unwrap();
    assert_eq!(
        to_display_hex(&block.hash()),
        "000000000019d6689c085ae165831e934ff763ae46a2a6c172b3f1b60a8ce26f"
    );
    assert_eq!(block.serialize(), bytes);
    assert_eq!(block.merkle_root(), block.header.merkle_root);
    let (job, extranonce) = job_for(&block, Algorithm::Sha256d, 0, 4);
    assert_block_candidate(&job, &extranonce, &block.header);

    let raw = bitcoin_test_data::blocks::mainnet_702861();
    let theirs: bitcoin::Block = deserialize(raw).unwrap();
    let ours = Block::parse(raw).unwrap();
    assert_eq!(
        to_display_hex(&ours.hash()),
        theirs.block_hash().to_string()
    );
    assert_eq!(ours.txs.len(), theirs.txdata.len());
    for (a, b) in ours.txs.iter().zip(&theirs.txdata) {
        assert_eq!(to_display_hex(&a.txid()), b.compute_txid().to_string());
        assert_eq!(to_display_hex(&a.wtxid()), b.compute_wtxid().to_string());
    }
}

/// SYNTHETIC Bitcoin Cash block: there is no BCH node or block source available here, so this
/// one is built in the test, BCH style (legacy transactions only, BIP34 height in the coinbase,
/// CTOR: non-coinbase transactions in txid order), and mined against the regtest target.
#[test]
fn synthetic_bch_block() {
    let out = |value: u64, tag: u8| TxOut {
        value,
        script_pubkey: [&[0x76, 0xa9, 0x14][..], &[tag; 20], &[0x88, 0xac]].concat(),
    };
    let coinbase = Transaction {
        version: 1,
        inputs: vec![TxIn {
            prev_txid: [0; 32],
            prev_vout: u32::MAX,
            // height 800,000 (BIP34), then 8 bytes of extranonce, then a tag.
            script_sig: [
                &[0x03, 0x00, 0x35, 0x0c][..],
                &[0x08],
                &[0u8; 8],
                b"/defpool-synthetic/",
            ]
            .concat(),
            sequence: u32::MAX,
            witness: vec![],
        }],
        outputs: vec![out(625_000_000, 1)],
        hogex: false,
        lock_time: 0,
    };
    let mut spends: Vec<Transaction> = (0..3u8)
        .map(|i| Transaction {
            version: 2,
            inputs: vec![TxIn {
                prev_txid: sha256d(&[i]),
                prev_vout: u32::from(i),
                script_sig: vec![0x47; 72],
                sequence: u32::MAX - 1,
                witness: vec![],
            }],
            outputs: vec![out(1_000 + u64::from(i), 2 + i), out(50_000, 9)],
            hogex: false,
            lock_time: 800_000,
        })
        .collect();
    spends.sort_by_key(|t| t.txid());
    let mut block = Block {
        header: Header {
            version: 0x2000_0000,
            prev_hash: sha256d(b"synthetic bch parent"),
            merkle_root: [0; 32],
            ntime: 1_700_000_000,
            nbits: 0x207f_ffff,
            nonce: 0,
        },
        txs: std::iter::once(coinbase).chain(spends).collect(),
        mweb: None,
    };
    block.header.merkle_root = block.merkle_root();
    let target = CompactTarget(block.header.nbits).to_target().unwrap();
    while !target.is_met_by(&sha256d(&block.header.serialize())) {
        block.header.nonce += 1;
    }

    let bytes = block.serialize();
    let parsed = Block::parse(&bytes).unwrap();
    assert_eq!(parsed, block);
    assert_eq!(parsed.serialize(), bytes);
    assert_eq!(parsed.merkle_root(), parsed.header.merkle_root);
    assert!(parsed.txs.iter().all(|t| !t.has_witness() && !t.hogex));

    let (job, extranonce) = job_for(&parsed, Algorithm::Sha256d, 5, 8);
    assert_eq!(extranonce, vec![0; 8]);
    assert_block_candidate(&job, &extranonce, &parsed.header);
}
