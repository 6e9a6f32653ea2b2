//! Writes the seed corpus: one frame per sample of `bproc_proto::samples` (every message type,
//! some in more than one shape, the same values as the golden fixtures), a copy stream, a
//! process image and a message of an unknown type. The committed files in `fuzz/seeds/` come from this;
//! re-run it after a protocol change:
//!
//! ```text
//! cd fuzz && cargo +stable run --example gen_seeds -- seeds
//! ```
//!
//! Files named `regress-*` in `fuzz/seeds/` are not made here: they are inputs that once made a
//! fuzz target fail, kept so that every run replays them first. This program leaves them alone.

use std::path::PathBuf;

use bproc_proto::{encode, Message};

fn main() -> std::io::Result<()> {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "seeds".into()));
    std::fs::create_dir_all(&dir)?;
    let msgs = bproc_proto::samples::all();
    // Header ids vary so the seeds carry more than one; the decoder must not care.
    for (i, (suffix, msg)) in msgs.iter().enumerate() {
        let name = format!("{}{suffix}", msg.name());
        std::fs::write(dir.join(name), encode(i as u32 * 7, msg))?;
    }
    // A bpcp copy stream (for the copy_stream target): a directory holding a file and a link.
    use bproc_copy::stream::{encode_entry, encode_trailer, Entry, Times, Trailer, MAGIC};
    let mut stream = MAGIC.to_vec();
    let times = Times { mtime: (1_700_000_000, 5), atime: (1_700_000_001, 0) };
    encode_entry(&Entry::Dir { name: b"d".to_vec(), mode: 0o755, times }, &mut stream);
    encode_entry(&Entry::File { name: b"f".to_vec(), mode: 0o644, times, size: 3 }, &mut stream);
    stream.extend_from_slice(b"abc");
    encode_trailer(&Trailer::Ok([7; 16]), &mut stream);
    encode_entry(&Entry::Symlink { name: b"l".to_vec(), target: b"f".to_vec() }, &mut stream);
    encode_entry(&Entry::Up, &mut stream);
    encode_entry(
        &Entry::Error { message: "rcp: /x: No such file or directory".into() },
        &mut stream,
    );
    encode_entry(&Entry::End, &mut stream);
    std::fs::write(dir.join("CopyStream"), stream)?;
    // A process image (for the image target): a header with one region and one chunk.
    let header = bproc_image::Header {
        comm: "app".into(),
        regions: vec![bproc_image::Region {
            start: 0x10000,
            end: 0x12000,
            prot: 3,
            stack: false,
            source: bproc_image::Source::Anonymous,
        }],
        ..Default::default()
    };
    let mut image = header.encode();
    let page = [5u8; 4096];
    image.extend_from_slice(&bproc_image::Chunk::for_data(0x11000, &page).encode());
    image.extend_from_slice(&page);
    image.extend_from_slice(&bproc_image::Chunk::End { chunks: 1 }.encode());
    std::fs::write(dir.join("ProcessImage"), image)?;
    // A type this version does not know, with a body that is skipped.
    let mut unknown = encode(16, &Message::NodeList);
    unknown[6..8].copy_from_slice(&0xfffeu16.to_be_bytes());
    unknown[12..16].copy_from_slice(&3u32.to_be_bytes());
    unknown.extend_from_slice(&[1, 2, 3]);
    std::fs::write(dir.join("Unknown"), unknown)?;
    println!("wrote {} seeds to {}", msgs.len() + 3, dir.display());
    Ok(())
}
