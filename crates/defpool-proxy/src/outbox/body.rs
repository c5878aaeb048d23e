//! How an unbatched row's records and a batch are stored: their JSON, LZ4-compressed behind a
//! one-byte tag (schema 3).
//!
//! Records repeat the same keys, users, workers and upstream names, so the JSON shrinks several
//! times. Every byte of a body is written three times under load (the commit into the WAL, the
//! checkpoint into the database file, the seal's batch), and those writes are what the appends
//! queued behind them wait for. Compression costs a few microseconds per row on the writer and
//! about a millisecond per second-long batch on a blocking thread.
//!
//! Bodies of schema 2 files (plain JSON text, which starts with `[` or `{`) still read.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The tag of an LZ4 body: never the first byte of JSON text.
const LZ4: u8 = 0x01;

/// Tag, then the JSON's length as a little-endian `u32`, then the LZ4 block.
const HEADER: usize = 1 + 4;

/// A decompressed body larger than this is corrupt: the largest batch is a few MB.
const MAX_JSON: usize = 256 << 20;

/// The stored form of `value`.
pub(super) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, serde_json::Error> {
    let json = serde_json::to_vec(value)?;
    let mut out = vec![0u8; HEADER + lz4_flex::block::get_maximum_output_size(json.len())];
    out[0] = LZ4;
    // `json.len()` fits: an append or a batch is bounded far below 4 GiB.
    out[1..HEADER].copy_from_slice(&(json.len() as u32).to_le_bytes());
    let written = lz4_flex::block::compress_into(&json, &mut out[HEADER..])
        .expect("the buffer has the maximum compressed size");
    out.truncate(HEADER + written);
    Ok(out)
}

/// The value stored as `body`, compressed or (schema 2) plain JSON. The error says what is
/// wrong with it.
pub(super) fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    match body.first() {
        Some(&LZ4) => {
            let Some(len) = body.get(1..HEADER) else {
                return Err(format!("a compressed body of {} bytes", body.len()));
            };
            let len = u32::from_le_bytes(len.try_into().expect("four bytes")) as usize;
            if len > MAX_JSON {
                return Err(format!("a compressed body claims {len} bytes of JSON"));
            }
            let json = lz4_flex::block::decompress(&body[HEADER..], len)
                .map_err(|e| format!("decompressing: {e}"))?;
            serde_json::from_slice(&json).map_err(|e| e.to_string())
        }
        _ => serde_json::from_slice(body).map_err(|e| e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_body_round_trips_and_is_smaller_than_its_json() {
        let value: Vec<(String, u64)> = (0..500)
            .map(|i| (format!("bc1qexampleaddress.worker{}", i % 40), i))
            .collect();
        let json = serde_json::to_vec(&value).unwrap();
        let body = encode(&value).unwrap();
        assert_eq!(decode::<Vec<(String, u64)>>(&body).unwrap(), value);
        assert!(
            body.len() * 3 < json.len(),
            "{} of {}",
            body.len(),
            json.len()
        );
    }

    #[test]
    fn plain_json_of_schema_2_still_reads() {
        assert_eq!(decode::<Vec<u32>>(b"[1,2,3]").unwrap(), vec![1, 2, 3]);
        assert_eq!(decode::<serde_json::Value>(br#"{"a":1}"#).unwrap()["a"], 1);
    }

    #[test]
    fn damaged_bodies_are_errors_not_panics() {
        let body = encode(&vec![7u64; 100]).unwrap();
        for cut in 0..body.len() {
            assert!(decode::<Vec<u64>>(&body[..cut]).is_err(), "cut at {cut}");
        }
        let mut huge = body.clone();
        huge[1..HEADER].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode::<Vec<u64>>(&huge).unwrap_err().contains("claims"));
        let mut flipped = body;
        let last = flipped.len() - 1;
        flipped[last] ^= 0xff;
        assert!(decode::<Vec<u64>>(&flipped).is_err());
    }

    proptest! {
        #[test]
        fn any_value_round_trips(v in proptest::collection::vec((any::<u64>(), "[a-z.0-9]{0,24}"), 0..200)) {
            let body = encode(&v).unwrap();
            prop_assert_eq!(body[0], LZ4);
            prop_assert_eq!(decode::<Vec<(u64, String)>>(&body).unwrap(), v);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode::<Vec<(u64, String)>>(&bytes);
            let mut tagged = vec![LZ4];
            tagged.extend(bytes);
            let _ = decode::<Vec<(u64, String)>>(&tagged);
        }
    }
}
