//! SV1 parsing must be total: any bytes give a message or an error, never a panic.
//!
//! The input is one line as `LineReader` would return it (the proxy parses every miner and pool
//! line with `parse_line`, then the miner side with `MinerRequest::parse` and the pool side with
//! `PoolMessage::parse`). Whatever parses must also re-encode to a line that parses again to the
//! same message (floats and subscribe's optional fields aside).
#![no_main]

use defpool_stratum::sv1::{parse_line, Incoming, MinerRequest, PoolMessage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(incoming) = parse_line(data) else {
        return;
    };
    let Incoming::Request(req) = incoming else {
        return;
    };
    if let Ok(m) = MinerRequest::parse(&req) {
        let line = m.to_line(1);
        let again = reparse(line.as_bytes());
        match (MinerRequest::parse(&again), &m) {
            // Floats may lose their last bit in JSON, and subscribe writes an absent user agent
            // as "" (so a session id keeps its position); everything else round-trips.
            (
                Ok(_),
                MinerRequest::SuggestDifficulty(_)
                | MinerRequest::Configure(_)
                | MinerRequest::Subscribe { .. },
            ) => {}
            (Ok(b), a) => assert_eq!(&b, a, "MinerRequest does not round-trip"),
            (Err(e), a) => panic!("{a:?} re-encoded to {line:?}, which fails: {e}"),
        }
    }
    if let Ok(m) = PoolMessage::parse(&req) {
        let line = m.to_line();
        let again = reparse(line.as_bytes());
        match (PoolMessage::parse(&again), &m) {
            (Ok(_), PoolMessage::SetDifficulty(_)) => {}
            (Ok(b), a) => assert_eq!(&b, a, "PoolMessage does not round-trip"),
            (Err(e), a) => panic!("{a:?} re-encoded to {line:?}, which fails: {e}"),
        }
    }
});

fn reparse(line: &[u8]) -> defpool_stratum::sv1::Request {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    match parse_line(line).expect("an encoded line parses") {
        Incoming::Request(r) => r,
        Incoming::Response(r) => panic!("an encoded request parsed as a response: {r:?}"),
    }
}
