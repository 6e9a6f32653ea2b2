//! A file probe on an image connection (`bproc_proto::conn`): arbitrary bytes through
//! `probe_len` and `decode_probe` must not panic, and an accepted probe must re-encode to the
//! same bytes.
#![no_main]

use bproc_proto::conn::{decode_probe, encode_probe, probe_len};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(head) = data.first_chunk::<4>() else {
        return;
    };
    let Ok(len) = probe_len(*head) else {
        return;
    };
    let body = &data[4..];
    if body.len() != len {
        return;
    }
    if let Ok(files) = decode_probe(body) {
        assert_eq!(encode_probe(&files), data, "re-encoding a probe changed it");
    }
});
