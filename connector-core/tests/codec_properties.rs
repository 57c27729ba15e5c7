//! Properties of the wire codec that tables cannot cover: every message
//! survives a round trip, and no input whatsoever makes the decoder panic.

use connector_core::codec::{decode_command, decode_outgoing, encode_message, FrameKind};
use connector_core::Message;
use proptest::prelude::*;

fn any_text() -> impl Strategy<Value = String> {
    // Mostly short strings with quotes, escapes and non-ASCII, sometimes empty.
    prop_oneof![Just(String::new()), "\\PC{0,24}", "[\"\\\\{}:,a-z ]{0,12}"]
}

prop_compose! {
    fn any_message()(
        device_id in any_text(), endpoint in any_text(), endpoint_name in any_text(),
        timestamp in any::<u64>(), task_id in any_text(), instance_id in any_text(),
        worker_id in any_text(), output_name in any_text(),
        payload_header in any_text(), payload in any_text(),
    ) -> Message {
        Message {
            device_id, endpoint, endpoint_name, timestamp: Some(timestamp), task_id,
            instance_id, worker_id, output_name, payload_header, payload,
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn encode_then_decode_is_the_identity(message in any_message()) {
        let frame = encode_message(&message, 0);
        let kind = if message.task_id.is_empty() { FrameKind::Change } else { FrameKind::Response };
        prop_assert_eq!(decode_outgoing(&frame), Ok((kind, Some(message.clone()))));
        // The object after the prefix is also a valid command frame.
        let json = &frame[frame.find(':').unwrap() + 1..];
        prop_assert_eq!(decode_command(json.as_bytes(), usize::MAX), Ok(message));
    }

    #[test]
    fn decode_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_command(&bytes, 256);
        let _ = decode_outgoing(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn decode_never_panics_on_json_like_text(text in "[\\[\\]{}\":,0-9a-z_ .-]{0,200}") {
        let _ = decode_command(text.as_bytes(), usize::MAX);
        let _ = decode_command(format!("{{\"protocol_parts\":{text}}}").as_bytes(), usize::MAX);
    }
}
