//! The SV1 work done for every share: parsing the submit line and writing the answer. Each is
//! measured against the way it was done before, in the same run: the line read into a
//! `serde_json::Value` map, and the answer built as a `json!` map and then serialized.
//!
//! `cargo bench -p defpool-stratum --bench sv1_line`

use defpool_stratum::sv1::{parse_line, result_line, Incoming, MinerRequest};
use divan::black_box;
use serde_json::{json, Value};

const SUBMIT: &[u8] = br#"{"params":["bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080.rig-0017","2a","00000000a1b2c3d4","65f1a2b3","1c2d3e4f","00400000"],"id":4711,"method":"mining.submit"}"#;

fn main() {
    divan::main();
}

/// What the miner session does with a submit line: the envelope, then the submit's fields.
#[divan::bench(sample_count = 2000, sample_size = 20)]
fn parse_submit() -> MinerRequest {
    let Ok(Incoming::Request(req)) = parse_line(black_box(SUBMIT)) else {
        unreachable!("the line is a request")
    };
    MinerRequest::parse(&req).expect("a valid submit")
}

/// Baseline: the same line read into a `Value` map first (the earlier `parse_line`), then the
/// submit's fields from the same members.
#[divan::bench(sample_count = 2000, sample_size = 20)]
fn parse_submit_through_a_map() -> MinerRequest {
    let Value::Object(mut obj) = serde_json::from_slice(black_box(SUBMIT)).expect("JSON") else {
        unreachable!("an object")
    };
    let req = defpool_stratum::sv1::Request {
        id: obj.remove("id").unwrap_or(Value::Null),
        method: match obj.remove("method") {
            Some(Value::String(m)) => m,
            _ => unreachable!("a method"),
        },
        params: match obj.remove("params") {
            Some(Value::Array(p)) => p,
            _ => unreachable!("params"),
        },
    };
    MinerRequest::parse(&req).expect("a valid submit")
}

/// The answer to an accepted share.
#[divan::bench(sample_count = 2000, sample_size = 20)]
fn accepted_reply() -> String {
    let id = json!(4711);
    result_line(black_box(&id), Value::Bool(true))
}

/// Baseline: the earlier way, a map built and serialized.
#[divan::bench(sample_count = 2000, sample_size = 20)]
fn accepted_reply_through_a_map() -> String {
    let id = json!(4711);
    let id = black_box(&id);
    let mut line = json!({"id": id, "result": true, "error": null}).to_string();
    line.push('\n');
    line
}
