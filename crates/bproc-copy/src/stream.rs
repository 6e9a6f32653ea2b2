//! The copy stream, without I/O: what a sender writes and a receiver (and every relay of a
//! broadcast) reads.
//!
//! ```text
//! stream  := MAGIC entry* END
//! MAGIC   := "BPCPSTR1"
//! entry   := 'F' mode:u32 times name size:u64  data[size] trailer    a regular file
//!          | 'D' mode:u32 times name                                  enter a directory
//!          | 'U'                                                      leave it
//!          | 'L' name target:str                                      a symbolic link
//!          | 'X' message:str                                          a source error
//! END     := 'Z'
//! times   := mtime:u64 mtime_ns:u32 atime:u64 atime_ns:u32           (i64 as two's complement)
//! name    := u32 length (1..=255) bytes, not "." or "..", no '/' or NUL
//! trailer := 0 hash:[16]  (XXH3-128 of the data)  |  1 message:str  (the source failed mid-file)
//! ```
//! Integers are big-endian, `str` is a u32 length then UTF-8 (at most 4096 bytes). The decoder
//! is bounded by these limits and fuzzed (`fuzz/fuzz_targets/copy_stream.rs`).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use bproc_proto::{DecodeError, Reader, Writer};

/// First bytes of every stream.
pub const MAGIC: &[u8; 8] = b"BPCPSTR1";
/// Longest file name (Linux's `NAME_MAX`).
pub const NAME_MAX: usize = 255;
/// Longest message or link target.
pub const TEXT_MAX: usize = 4096;
/// Longest encoded entry header or trailer: a decoder never needs more bytes than this.
pub const HEADER_MAX: usize = 1 + 4 + 24 + 4 + NAME_MAX + 4 + TEXT_MAX + 8;

/// Modification and access times, seconds and nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Times {
    /// Modification time.
    pub mtime: (i64, u32),
    /// Access time.
    pub atime: (i64, u32),
}

/// One entry's header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A regular file; `size` data bytes and a [`Trailer`] follow.
    File {
        /// Name in its directory.
        name: Vec<u8>,
        /// Permission bits.
        mode: u32,
        /// Times.
        times: Times,
        /// Data length.
        size: u64,
    },
    /// A directory; its entries follow, then [`Entry::Up`].
    Dir {
        /// Name in its parent.
        name: Vec<u8>,
        /// Permission bits.
        mode: u32,
        /// Times.
        times: Times,
    },
    /// End of the current directory.
    Up,
    /// A symbolic link.
    Symlink {
        /// Name in its directory.
        name: Vec<u8>,
        /// What it points to.
        target: Vec<u8>,
    },
    /// Something the sender could not read, as rcp would print it.
    Error {
        /// The message.
        message: String,
    },
    /// End of the stream.
    End,
}

/// What follows a file's data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trailer {
    /// The data is complete; its XXH3-128.
    Ok([u8; 16]),
    /// The sender could not read the whole file (the data was padded); drop it.
    Failed(String),
}

/// Why a stream cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// A field is malformed.
    #[error("bad copy stream: {0}")]
    Decode(DecodeError),
    /// The stream does not start with [`MAGIC`].
    #[error("bad copy stream: the peer is not a bpcp sender")]
    Magic,
    /// A name could escape its directory.
    #[error("bad copy stream: unsafe file name {0:?}")]
    Name(String),
}

/// `Ok(None)`: more bytes are needed.
pub type Decoded<T> = Result<Option<(T, usize)>, StreamError>;

fn put_times(w: &mut Writer, t: &Times) {
    w.u64(t.mtime.0 as u64);
    w.u32(t.mtime.1);
    w.u64(t.atime.0 as u64);
    w.u32(t.atime.1);
}

fn get_times(r: &mut Reader<'_>) -> Result<Times, DecodeError> {
    let mtime = (r.u64("mtime")? as i64, nanos(r.u32("mtime ns")?)?);
    let atime = (r.u64("atime")? as i64, nanos(r.u32("atime ns")?)?);
    Ok(Times { mtime, atime })
}

fn nanos(v: u32) -> Result<u32, DecodeError> {
    if v < 1_000_000_000 {
        Ok(v)
    } else {
        Err(DecodeError::BadValue { what: "nanoseconds", value: v.into() })
    }
}

/// A name that stays inside its directory.
pub fn safe_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= NAME_MAX
        && name != b"."
        && name != b".."
        && !name.iter().any(|&b| b == b'/' || b == 0)
}

fn get_name(r: &mut Reader<'_>) -> Result<Vec<u8>, StreamError> {
    let name = r.bytes("name", NAME_MAX).map_err(StreamError::Decode)?;
    if !safe_name(name) {
        return Err(StreamError::Name(OsStr::from_bytes(name).to_string_lossy().into_owned()));
    }
    Ok(name.to_vec())
}

/// Appends `e`'s encoding to `out`.
pub fn encode_entry(e: &Entry, out: &mut Vec<u8>) {
    let mut w = Writer::new(std::mem::take(out));
    match e {
        Entry::File { name, mode, times, size } => {
            w.u8(b'F');
            w.u32(*mode);
            put_times(&mut w, times);
            w.bytes(name);
            w.u64(*size);
        }
        Entry::Dir { name, mode, times } => {
            w.u8(b'D');
            w.u32(*mode);
            put_times(&mut w, times);
            w.bytes(name);
        }
        Entry::Up => w.u8(b'U'),
        Entry::Symlink { name, target } => {
            w.u8(b'L');
            w.bytes(name);
            w.bytes(target);
        }
        Entry::Error { message } => {
            w.u8(b'X');
            w.str(truncate(message));
        }
        Entry::End => w.u8(b'Z'),
    }
    *out = w.into_inner();
}

/// `s` cut to [`TEXT_MAX`] bytes on a character boundary.
fn truncate(s: &str) -> &str {
    if s.len() <= TEXT_MAX {
        return s;
    }
    let mut end = TEXT_MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A truncated field means "read more"; any other error is final.
fn need_more<T>(e: StreamError) -> Decoded<T> {
    match e {
        StreamError::Decode(DecodeError::Truncated(_)) => Ok(None),
        e => Err(e),
    }
}

/// Decodes one entry header from the start of `buf`.
pub fn decode_entry(buf: &[u8]) -> Decoded<Entry> {
    let mut r = Reader::new(buf);
    let d = |e| StreamError::Decode(e);
    let parsed = (|| -> Result<Entry, StreamError> {
        Ok(match r.u8("entry kind").map_err(d)? {
            b'F' => {
                let mode = r.u32("mode").map_err(d)?;
                let times = get_times(&mut r).map_err(d)?;
                let name = get_name(&mut r)?;
                Entry::File { name, mode, times, size: r.u64("size").map_err(d)? }
            }
            b'D' => {
                let mode = r.u32("mode").map_err(d)?;
                let times = get_times(&mut r).map_err(d)?;
                Entry::Dir { name: get_name(&mut r)?, mode, times }
            }
            b'U' => Entry::Up,
            b'L' => {
                let name = get_name(&mut r)?;
                let target = r.bytes("link target", TEXT_MAX).map_err(d)?;
                if target.is_empty() || target.contains(&0) {
                    return Err(StreamError::Decode(DecodeError::BadValue {
                        what: "link target",
                        value: target.len() as u64,
                    }));
                }
                Entry::Symlink { name, target: target.to_vec() }
            }
            b'X' => Entry::Error { message: r.str("message", TEXT_MAX).map_err(d)? },
            b'Z' => Entry::End,
            k => {
                return Err(StreamError::Decode(DecodeError::BadValue {
                    what: "entry kind",
                    value: k.into(),
                }))
            }
        })
    })();
    match parsed {
        Ok(e) => Ok(Some((e, buf.len() - r.bytes_left()))),
        Err(e) => need_more(e),
    }
}

/// Appends a trailer's encoding to `out`.
pub fn encode_trailer(t: &Trailer, out: &mut Vec<u8>) {
    let mut w = Writer::new(std::mem::take(out));
    match t {
        Trailer::Ok(h) => {
            w.u8(0);
            w.fixed(h);
        }
        Trailer::Failed(m) => {
            w.u8(1);
            w.str(truncate(m));
        }
    }
    *out = w.into_inner();
}

/// Decodes a trailer from the start of `buf`.
pub fn decode_trailer(buf: &[u8]) -> Decoded<Trailer> {
    let mut r = Reader::new(buf);
    let parsed = (|| -> Result<Trailer, DecodeError> {
        Ok(match r.u8("trailer")? {
            0 => Trailer::Ok(r.fixed("hash")?),
            1 => Trailer::Failed(r.str("message", TEXT_MAX)?),
            v => return Err(DecodeError::BadValue { what: "trailer", value: v.into() }),
        })
    })();
    match parsed {
        Ok(t) => Ok(Some((t, buf.len() - r.bytes_left()))),
        Err(e) => need_more(StreamError::Decode(e)),
    }
}

/// Checks the stream's first bytes.
pub fn decode_magic(buf: &[u8]) -> Decoded<()> {
    if buf.len() < MAGIC.len() {
        return if MAGIC.starts_with(buf) { Ok(None) } else { Err(StreamError::Magic) };
    }
    if &buf[..MAGIC.len()] == MAGIC {
        Ok(Some(((), MAGIC.len())))
    } else {
        Err(StreamError::Magic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn name() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(1u8..=255, 1..40).prop_filter("safe", |n| safe_name(n))
    }

    fn entry() -> impl Strategy<Value = Entry> {
        let times = (any::<i64>(), 0u32..1_000_000_000, any::<i64>(), 0u32..1_000_000_000)
            .prop_map(|(a, b, c, d)| Times { mtime: (a, b), atime: (c, d) });
        prop_oneof![
            (name(), any::<u32>(), times.clone(), any::<u64>())
                .prop_map(|(name, mode, times, size)| Entry::File { name, mode, times, size }),
            (name(), any::<u32>(), times).prop_map(|(name, mode, times)| Entry::Dir {
                name,
                mode,
                times
            }),
            Just(Entry::Up),
            (name(), proptest::collection::vec(1u8..=255, 1..60))
                .prop_map(|(name, target)| Entry::Symlink { name, target }),
            ".{0,40}".prop_map(|message| Entry::Error { message }),
            Just(Entry::End),
        ]
    }

    proptest! {
        #[test]
        fn entries_round_trip_and_truncations_ask_for_more(e in entry()) {
            let mut buf = Vec::new();
            encode_entry(&e, &mut buf);
            prop_assert!(buf.len() <= HEADER_MAX);
            prop_assert_eq!(decode_entry(&buf).unwrap(), Some((e, buf.len())));
            for cut in 0..buf.len() {
                prop_assert_eq!(decode_entry(&buf[..cut]).unwrap(), None);
            }
        }

        #[test]
        fn any_bytes_decode_or_fail_cleanly(b in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode_entry(&b);
            let _ = decode_trailer(&b);
        }
    }

    #[test]
    fn names_cannot_escape() {
        for bad in [&b".."[..], b".", b"a/b", b"", b"a\0"] {
            assert!(!safe_name(bad), "{bad:?}");
        }
        let mut buf = Vec::new();
        encode_entry(
            &Entry::Dir { name: b"..".to_vec(), mode: 0o755, times: Times::default() },
            &mut buf,
        );
        assert!(matches!(decode_entry(&buf), Err(StreamError::Name(_))));
    }

    #[test]
    fn trailers_round_trip() {
        for t in [Trailer::Ok([7; 16]), Trailer::Failed("rcp: x: Input/output error".into())] {
            let mut buf = Vec::new();
            encode_trailer(&t, &mut buf);
            assert_eq!(decode_trailer(&buf).unwrap(), Some((t, buf.len())));
            assert_eq!(decode_trailer(&buf[..buf.len() - 1]).unwrap(), None);
        }
    }
}
