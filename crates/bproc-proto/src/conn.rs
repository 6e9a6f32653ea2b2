//! The header that opens every connection a node makes back to a launcher: a forwarded fd,
//! a staged file fetched by hash, or a process image. The launcher tells them apart, and
//! knows them for its own, by this header: the launch's 16-byte token, the rank (u32,
//! big-endian) and what the connection carries (u8: the fd number, [`FETCH`] or [`IMAGE`]).
//!
//! ```
//! use bproc_proto::conn;
//! let h = conn::header(&[7; 16], 3, conn::IMAGE);
//! assert_eq!(conn::parse(&h), ([7; 16], 3, conn::IMAGE));
//! ```
//!
//! On an image connection the mover then asks which of the files it maps the restoring
//! machine has, identical (same size and modification time), at the same path: a probe (u32
//! body length ≤ [`MAX_PROBE_BYTES`], then the body: u32 count ≤ [`MAX_PROBE_FILES`], and per
//! file its path, size u64, mtime seconds u64 as two's complement and nanoseconds u32),
//! answered with u32 count and one byte per file (1: present). A vector fork's launch lists
//! those files ([`crate::ProcSpec::image_files`]), so there the node sends the answer right
//! after the header, unasked, and no probe comes: a round trip less per node. Those files
//! go in the image by reference; then the image follows, or, when the mover cannot move
//! after all, a refusal:
//! [`REFUSAL`], u16 length (big-endian, at most [`MAX_REFUSAL`]) and the reason in UTF-8, so
//! the node's log says why no image came.

use crate::{DecodeError, Reader, Writer};

/// Length of the header.
pub const HEADER_LEN: usize = 21;
/// A staged file: the header is followed by the file's 32-byte hash, and the launcher answers
/// with the size (u64, big-endian) and the content.
pub const FETCH: u8 = 0xff;
/// The process image of a move or rfork: the launcher writes the image and closes.
pub const IMAGE: u8 = 0xfe;

/// Opens a refusal in place of an image (an image opens with `BPROCIMG`).
pub const REFUSAL: [u8; 8] = *b"BPRCNOGO";
/// Longest reason in a refusal.
pub const MAX_REFUSAL: usize = 1024;

/// A refusal saying `why` (cut to [`MAX_REFUSAL`] bytes, at a character boundary).
pub fn encode_refusal(why: &str) -> Vec<u8> {
    let mut end = why.len().min(MAX_REFUSAL);
    while !why.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = REFUSAL.to_vec();
    out.extend_from_slice(&(end as u16).to_be_bytes());
    out.extend_from_slice(&why.as_bytes()[..end]);
    out
}

/// Most files in one probe.
pub const MAX_PROBE_FILES: usize = 4096;
/// Largest probe body.
pub const MAX_PROBE_BYTES: usize = 1 << 20;

/// The reason of the refusal `data` opens with, as much of it as `data` holds (at most
/// [`MAX_REFUSAL`] bytes); `None` when `data` opens with something else.
pub fn refusal(data: &[u8]) -> Option<String> {
    let rest = data.strip_prefix(&REFUSAL[..])?;
    let len = match rest {
        [a, b, ..] => usize::from(u16::from_be_bytes([*a, *b])).min(MAX_REFUSAL),
        _ => 0,
    };
    let why = rest.get(2..).unwrap_or_default();
    Some(String::from_utf8_lossy(&why[..len.min(why.len())]).into_owned())
}

crate::wire_struct! {
    /// A file as a probe, or a vector fork's launch ([`crate::ProcSpec::image_files`]), names it.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct FileId {
        /// Absolute path.
        pub path: String => crate::wire::Text("probe path", crate::MAX_PATH),
        /// Size in bytes.
        pub size: u64 => crate::wire::Int("probe size"),
        /// Modification time: seconds and nanoseconds.
        pub mtime: (i64, u32) => (crate::wire::Int("probe mtime"), crate::wire::Int("probe mtime ns")),
    }
}

/// A probe for `files`, length first.
pub fn encode_probe(files: &[FileId]) -> Vec<u8> {
    let mut w = Writer::new(vec![0; 4]);
    w.u32(files.len() as u32);
    for f in files {
        crate::wire::Wire::put(f, &mut w);
    }
    let mut out = w.into_inner();
    let len = (out.len() - 4) as u32;
    out[..4].copy_from_slice(&len.to_be_bytes());
    out
}

/// The body length a probe's first four bytes announce, if acceptable.
pub fn probe_len(head: [u8; 4]) -> Result<usize, DecodeError> {
    let len = u32::from_be_bytes(head) as usize;
    if len > MAX_PROBE_BYTES {
        return Err(DecodeError::BadValue { what: "probe length", value: len as u64 });
    }
    Ok(len)
}

/// The files of a probe body.
pub fn decode_probe(body: &[u8]) -> Result<Vec<FileId>, DecodeError> {
    let mut r = Reader::new(body);
    // A file takes at least 4 + 8 + 8 + 4 bytes.
    let n = r.count("probe files", MAX_PROBE_FILES, 24)?;
    let mut files = Vec::with_capacity(n);
    for _ in 0..n {
        files.push(<FileId as crate::wire::Wire>::get(&mut r)?);
    }
    r.finish()?;
    Ok(files)
}

/// The answer to a probe: u32 count, then a byte per file.
pub fn encode_answer(present: &[bool]) -> Vec<u8> {
    let mut out = (present.len() as u32).to_be_bytes().to_vec();
    out.extend(present.iter().map(|p| u8::from(*p)));
    out
}

/// The answer to the probe `body`, with `present` telling which files are here.
pub fn answer(body: &[u8], present: impl Fn(&FileId) -> bool) -> Result<Vec<u8>, DecodeError> {
    let files = decode_probe(body)?;
    Ok(encode_answer(&files.iter().map(present).collect::<Vec<_>>()))
}

/// The number of answer bytes that follow a count of `head`, which must be `asked`.
pub fn answer_len(head: [u8; 4], asked: usize) -> Result<usize, DecodeError> {
    let n = u32::from_be_bytes(head) as usize;
    if n != asked {
        return Err(DecodeError::BadValue { what: "probe answer count", value: n as u64 });
    }
    Ok(n)
}

/// The header for rank `rank`'s connection `what` under `token`.
pub fn header(token: &[u8; 16], rank: u32, what: u8) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..16].copy_from_slice(token);
    h[16..20].copy_from_slice(&rank.to_be_bytes());
    h[20] = what;
    h
}

/// The token, rank and kind of a header.
pub fn parse(h: &[u8; HEADER_LEN]) -> ([u8; 16], u32, u8) {
    let mut token = [0u8; 16];
    token.copy_from_slice(&h[..16]);
    (token, u32::from_be_bytes([h[16], h[17], h[18], h[19]]), h[20])
}

/// Environment variable that hands a launcher's ghosts its [`Rejoin`].
pub const ENV_REJOIN: &str = "BPROC_GHOST_REJOIN";

/// Where a launcher reads its ranks' forwarded output (bpsh's listener), so that a process
/// that moves back to the front end, into its ghost, connects its output there again as the
/// same rank, after what its copy on the node wrote (as a process moving on from node to node
/// does), instead of writing to the launcher's stdout ahead of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejoin {
    /// The listener.
    pub addr: std::net::SocketAddrV4,
    /// The token its connections present.
    pub token: [u8; 16],
    /// The forwarded fds among 1 and 2.
    pub fds: Vec<u8>,
    /// The rank of each ghost, in the order they are made.
    pub ranks: Vec<u32>,
}

impl Rejoin {
    /// As an environment value: `ADDR:PORT TOKEN FDS RANK,RANK...`.
    pub fn encode(&self) -> String {
        let fds: String = self.fds.iter().map(|f| char::from(b'0' + f % 10)).collect();
        let ranks: Vec<String> = self.ranks.iter().map(u32::to_string).collect();
        format!("{} {} {fds} {}", self.addr, hex::encode(self.token), ranks.join(","))
    }

    /// A value [`Rejoin::encode`] made; `None` for anything else.
    pub fn decode(value: &str) -> Option<Rejoin> {
        let mut words = value.split(' ');
        let addr = words.next()?.parse().ok()?;
        let token = hex::decode(words.next()?).ok()?.try_into().ok()?;
        let fds = words.next()?.bytes().map(|b| b.checked_sub(b'0')).collect::<Option<_>>()?;
        let ranks = match words.next()? {
            "" => Vec::new(),
            list => list.split(',').map(|r| r.parse().ok()).collect::<Option<_>>()?,
        };
        Some(Rejoin { addr, token, fds, ranks })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_read_back_bounded_and_in_part() {
        let r = encode_refusal("node 3: /lib/x.so changed");
        assert_eq!(refusal(&r).as_deref(), Some("node 3: /lib/x.so changed"));
        // What comes after a refusal is not part of it; a cut one gives what came.
        assert_eq!(
            refusal(&[&r[..], b"more"].concat()).as_deref(),
            Some("node 3: /lib/x.so changed")
        );
        assert_eq!(refusal(&r[..14]).as_deref(), Some("node"));
        assert_eq!(refusal(&REFUSAL).as_deref(), Some(""));
        assert_eq!(refusal(b"BPROCIMG...."), None);
        let long = encode_refusal(&"é".repeat(MAX_REFUSAL));
        assert_eq!(refusal(&long).map(|w| w.len()), Some(MAX_REFUSAL));
        let mut claim = REFUSAL.to_vec();
        claim.extend_from_slice(&u16::MAX.to_be_bytes());
        claim.extend(std::iter::repeat_n(b'x', 2 * MAX_REFUSAL));
        assert_eq!(refusal(&claim).map(|w| w.len()), Some(MAX_REFUSAL));
    }

    #[test]
    fn probes_round_trip_and_are_bounded() {
        let files = vec![
            FileId { path: "/usr/bin/cat".into(), size: 35_280, mtime: (1_700_000_000, 5) },
            FileId { path: "/tmp/x".into(), size: 0, mtime: (-1, 0) },
        ];
        let p = encode_probe(&files);
        let len = probe_len(p[..4].try_into().unwrap()).unwrap();
        assert_eq!(len, p.len() - 4);
        assert_eq!(decode_probe(&p[4..]).unwrap(), files);
        assert!(decode_probe(&p[4..p.len() - 1]).is_err(), "truncated");
        assert!(probe_len((MAX_PROBE_BYTES as u32 + 1).to_be_bytes()).is_err());
        let a = encode_answer(&[true, false]);
        assert_eq!(answer_len(a[..4].try_into().unwrap(), 2).unwrap(), 2);
        assert_eq!(&a[4..], &[1, 0]);
        assert!(answer_len(a[..4].try_into().unwrap(), 3).is_err());
    }

    #[test]
    fn rejoin_survives_the_environment() {
        let r = Rejoin {
            addr: "127.0.0.1:40000".parse().unwrap(),
            token: [0xab; 16],
            fds: vec![1, 2],
            ranks: vec![0, 2, 3],
        };
        assert_eq!(Rejoin::decode(&r.encode()), Some(r.clone()));
        let none = Rejoin { fds: vec![], ranks: vec![], ..r };
        assert_eq!(Rejoin::decode(&none.encode()), Some(none));
        assert_eq!(Rejoin::decode("127.0.0.1:1 zz 1 0"), None);
        assert_eq!(Rejoin::decode("nonsense"), None);
    }
}
