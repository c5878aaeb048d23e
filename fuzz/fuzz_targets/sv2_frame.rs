//! SV2 message decoding must be total: any bytes give a message or an error, never a panic.
//! Input layout: byte 0 = message type, bytes 1..3 = extension type (LE), rest = payload; the
//! whole input is also tried as a plaintext frame (header + payload).
#![no_main]

use defpool_stratum::sv2::{decode_frame, decode_frame_payload, encode_frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = decode_frame(data);
    if data.len() < 3 {
        return;
    }
    let msg_type = data[0];
    let extension = u16::from_le_bytes([data[1], data[2]]);
    let Ok(message) = decode_frame_payload(msg_type, extension, &data[3..]) else {
        return;
    };
    // A decoded message re-encodes (unless lossy UTF-8 repair grew a string past 255 bytes),
    // and what it re-encodes to is a fixed point of decode∘encode.
    if let Ok(frame) = encode_frame(&message) {
        let again = decode_frame(&frame).expect("an encoded frame decodes");
        assert_eq!(
            encode_frame(&again).expect("a decoded frame re-encodes"),
            frame,
            "decode∘encode is not stable for {}",
            message.name()
        );
    }
});
