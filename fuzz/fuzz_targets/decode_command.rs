//! The platform's command frames (PROTOCOL.md section 4) as raw bytes: the
//! decoder must answer every input with a message or a `FrameError`, never
//! panic, and an error's excerpt must stay one short printable line.
#![no_main]

use connector_core::codec::{decode_command, decode_outgoing, encode_message};
use libfuzzer_sys::fuzz_target;

/// A small limit, so the fuzzer also reaches the "too large" path.
const LIMIT: usize = 4096;

fuzz_target!(|data: &[u8]| {
    match decode_command(data, LIMIT) {
        Ok(message) => {
            // What was read can be written back and read again unchanged.
            let frame = encode_message(&message, 1);
            let (_, again) = decode_outgoing(&frame).expect("an encoded message decodes");
            let again = again.expect("a message frame holds a message");
            assert_eq!(again.device_id, message.device_id);
            assert_eq!(again.task_id, message.task_id);
            assert_eq!(again.payload, message.payload);
        }
        Err(error) => {
            let excerpt = error.excerpt();
            assert!(!excerpt.contains('\n'), "excerpt spans lines: {excerpt:?}");
            assert!(excerpt.chars().count() <= 1000, "excerpt too long: {}", excerpt.len());
        }
    }
    // The connector's own outgoing frames are parsed by the same module.
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = decode_outgoing(text);
    }
});
