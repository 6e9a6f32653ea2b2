//! Arbitrary bytes as one frame: `check` and `decode` must never panic, and whatever `decode`
//! accepts must re-encode to the same bytes and decode to the same message.
#![no_main]

use bproc_proto::{check, decode, encode, Message, HEADER_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let checked = check(data);
    match &checked {
        Ok(Some(n)) => assert!(*n >= HEADER_LEN && *n <= data.len(), "check gave {n}"),
        Ok(None) => {}
        Err(_) => {}
    }
    // The prefix `check` says is one frame is exactly what a stream reader hands to `decode`.
    if let Ok(Some(n)) = checked {
        let _ = decode(&data[..n]);
    }

    let Ok((id, msg)) = decode(data) else {
        return;
    };
    // A frame `decode` accepts is a complete frame of exactly its own length.
    assert_eq!(checked, Ok(Some(data.len())), "decode accepted what check did not");

    let again = encode(id, &msg);
    // Unknown skips its body, so its encoding (empty body) differs from the input; the
    // message itself must still survive the round trip.
    if !matches!(msg, Message::Unknown { .. }) {
        // The encoding has no slack (fixed widths, 0/1 flags, exact lengths), so it is canonical.
        assert_eq!(again, data, "re-encoding {} changed the bytes", msg.name());
    }
    match decode(&again) {
        Ok((id2, msg2)) => {
            assert_eq!(id2, id);
            assert_eq!(msg2, msg);
        }
        Err(e) => panic!("re-encoded {} does not decode: {e}", msg.name()),
    }
});
