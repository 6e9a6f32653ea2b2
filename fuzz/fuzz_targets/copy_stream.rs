//! Arbitrary bytes as a bpcp copy stream: the entry and trailer decoders must never panic,
//! must consume no more than they were given, and whatever they accept must re-encode to the
//! same bytes.
#![no_main]

use bproc_copy::stream::{
    decode_entry, decode_magic, decode_trailer, encode_entry, encode_trailer, Entry, HEADER_MAX,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rest = match decode_magic(data) {
        Ok(Some(((), n))) => &data[n..],
        // Streams without the magic are refused before any entry is read; fuzz the entries
        // anyway.
        _ => data,
    };
    for _ in 0..1000 {
        let (entry, n) = match decode_entry(rest) {
            Ok(Some(x)) => x,
            Ok(None) => {
                // "Need more" is only allowed while a header can still be incomplete.
                assert!(
                    rest.len() < HEADER_MAX,
                    "decoder asked for more after {} bytes",
                    rest.len()
                );
                return;
            }
            Err(_) => return,
        };
        assert!(n > 0 && n <= rest.len());
        let mut again = Vec::new();
        encode_entry(&entry, &mut again);
        assert_eq!(&again[..], &rest[..n], "re-encoding {entry:?} changed the bytes");
        rest = &rest[n..];
        match entry {
            Entry::End => return,
            Entry::File { size, .. } => {
                let skip = usize::try_from(size).unwrap_or(usize::MAX).min(rest.len());
                rest = &rest[skip..];
                let Ok(Some((t, n))) = decode_trailer(rest) else { return };
                let mut again = Vec::new();
                encode_trailer(&t, &mut again);
                assert_eq!(&again[..], &rest[..n]);
                rest = &rest[n..];
            }
            _ => {}
        }
    }
});
