//! The stream reader's path: the first 16 bytes through `Header::parse`, the rest through
//! `decode_body` (whatever its length, whatever the header's length field says). Neither may
//! panic; an accepted body must round-trip like a whole frame.
#![no_main]

use bproc_proto::{decode, decode_body, encode, Header, Message, HEADER_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(head) = data.first_chunk::<HEADER_LEN>() else {
        return;
    };
    let Ok(h) = Header::parse(head) else {
        return;
    };
    let body = &data[HEADER_LEN..];
    let Ok(msg) = decode_body(&h, body) else {
        return;
    };
    if matches!(msg, Message::Unknown { .. }) {
        assert_eq!(msg, Message::Unknown { msg_type: h.msg_type });
        return;
    }
    assert_eq!(msg.msg_type(), h.msg_type, "{} decoded from another type", msg.name());
    let again = encode(h.id, &msg);
    assert_eq!(&again[HEADER_LEN..], body, "re-encoding {} changed the body", msg.name());
    assert_eq!(decode(&again), Ok((h.id, msg)));
});
