//! Arbitrary bytes as a process image (bproc-image): reading must never panic or allocate
//! beyond the limits, and an accepted header must re-encode to the same bytes; a copy
//! carrying the files it names must never panic either, and one made names none.
#![no_main]

use bproc_image::{Chunk, Header, ImageReader, Preamble, CHUNK_HEAD_LEN, PREAMBLE_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Every named file reads as 64 KiB of 0xaa.
    let file = |_: &str, off: u64, len: usize| {
        Ok(if off < 1 << 16 { vec![0xaa; len.min(1 << 16)] } else { Vec::new() })
    };
    if let Ok(copy) = bproc_image::inline_files(data, |_| true, file) {
        let back = ImageReader::open(&copy[..]).expect("a copy's header reads back");
        assert!(back.header().by_reference().is_empty());
    }
    if data.len() >= CHUNK_HEAD_LEN {
        if let Ok(c) = Chunk::parse(data[..CHUNK_HEAD_LEN].try_into().unwrap()) {
            assert_eq!(Chunk::parse(&c.encode()), Ok(c));
        }
    }
    let Ok(mut reader) = ImageReader::open(data) else { return };
    let bytes = reader.header().encode();
    let pre = Preamble::parse(bytes[..PREAMBLE_LEN].try_into().unwrap()).unwrap();
    assert_eq!(Header::decode(&pre, &bytes[PREAMBLE_LEN..]).as_ref(), Ok(reader.header()));
    assert_eq!(&data[..bytes.len()], &bytes[..]);
    let mut buf = Vec::new();
    for _ in 0..1000 {
        match reader.next_chunk(&mut buf) {
            Ok(Some(_)) => {}
            _ => return,
        }
    }
});
