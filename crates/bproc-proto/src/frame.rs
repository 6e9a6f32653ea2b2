//! Frames: the fixed header that starts every message.
//!
//! ```text
//!  0        4     5     6          8               12              16
//!  +--------+-----+-----+----------+---------------+---------------+----------------+
//!  | "BPRC" | ver | 0   | type u16 | request id u32| body len u32  | body ...       |
//!  +--------+-----+-----+----------+---------------+---------------+----------------+
//! ```
//! All integers are big-endian. `type` selects the [`Message`] variant. A request carries a
//! non-zero id that its reply repeats; events carry id 0. The body length is checked against
//! [`MAX_BODY`] before the body is read or allocated.

use crate::codec::{DecodeError, Reader, Writer};
use crate::msg::Message;

/// The four bytes that start every frame.
pub const MAGIC: [u8; 4] = *b"BPRC";
/// The protocol version this crate speaks. Bumped on any incompatible change.
pub const VERSION: u8 = 7;
/// Size of the fixed header.
pub const HEADER_LEN: usize = 16;
/// Largest body accepted (4 MiB): a full node list of thousands of nodes fits, and a peer
/// cannot make a receiver allocate more than this per frame.
pub const MAX_BODY: usize = 4 << 20;

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Message type.
    pub msg_type: u16,
    /// Request id (0 for events).
    pub id: u32,
    /// Body length, already checked against [`MAX_BODY`].
    pub len: u32,
}

impl Header {
    /// Parses and validates the 16 header bytes.
    pub fn parse(b: &[u8; HEADER_LEN]) -> Result<Header, DecodeError> {
        let mut r = Reader::new(b);
        let magic = r.fixed::<4>("magic")?;
        if magic != MAGIC {
            return Err(DecodeError::BadMagic(magic));
        }
        let ver = r.u8("version")?;
        if ver != VERSION {
            return Err(DecodeError::BadVersion { got: ver, ours: VERSION });
        }
        let flags = r.u8("flags")?;
        if flags != 0 {
            return Err(DecodeError::BadValue { what: "header flags", value: flags.into() });
        }
        let msg_type = r.u16("type")?;
        let id = r.u32("request id")?;
        let len = r.u32("body length")?;
        if len as usize > MAX_BODY {
            return Err(DecodeError::TooLong { what: "body", len: len as usize, max: MAX_BODY });
        }
        Ok(Header { msg_type, id, len })
    }
}

/// The frames of one launch's tree parts ([`Message::SpawnTree`]), which differ only in their
/// entries, the last field: the rest (the spec and its environment, most of a frame) encoded
/// once for a node that passes a launch on to dozens of children.
#[derive(Debug, Clone)]
pub struct TreeFrames {
    /// The frame up to the entries' count.
    head: Vec<u8>,
}

impl TreeFrames {
    /// The parts of `msg`, a `SpawnTree` with no entries (`None` for anything else), sent
    /// with request id `id`.
    pub fn new(id: u32, msg: &Message) -> Option<TreeFrames> {
        if !matches!(msg, Message::SpawnTree { entries, .. } if entries.is_empty()) {
            return None;
        }
        let mut head = encode(id, msg);
        head.truncate(head.len() - 4);
        Some(TreeFrames { head })
    }

    /// The frame of the part with `entries`, with room for `spare` more bytes after it.
    pub fn frame(&self, entries: &[crate::TreeEntry], spare: usize) -> Vec<u8> {
        use crate::wire::Wire;
        let mut w = Writer::new(Vec::with_capacity(self.head.len() + 4 + 64 + spare));
        w.fixed(&self.head);
        w.u32(entries.len() as u32);
        for e in entries {
            e.put(&mut w);
        }
        let mut buf = w.into_inner();
        let len = (buf.len() - HEADER_LEN) as u32;
        buf[12..16].copy_from_slice(&len.to_be_bytes());
        debug_assert!(len as usize <= MAX_BODY, "encoded body over MAX_BODY");
        buf
    }
}

/// Encodes `msg` as one complete frame with request id `id`.
pub fn encode(id: u32, msg: &Message) -> Vec<u8> {
    let mut buf = Vec::with_capacity(64);
    encode_into(&mut buf, id, msg);
    buf
}

/// [`encode`] into `buf`, which is cleared first: nothing is allocated when `buf` has room
/// for the frame (a ghost that shares its address space must not allocate).
pub fn encode_into(buf: &mut Vec<u8>, id: u32, msg: &Message) {
    buf.clear();
    let mut w = Writer::new(std::mem::take(buf));
    w.fixed(&MAGIC);
    w.u8(VERSION);
    w.u8(0);
    w.u16(msg.msg_type());
    w.u32(id);
    w.u32(0); // length, patched below
    msg.encode_body(&mut w);
    *buf = w.into_inner();
    let len = (buf.len() - HEADER_LEN) as u32;
    buf[12..16].copy_from_slice(&len.to_be_bytes());
    debug_assert!(len as usize <= MAX_BODY, "encoded body over MAX_BODY");
}

/// Checks whether `buf` starts with a complete frame.
///
/// Returns `Ok(None)` when more bytes are needed (a normal result, not an error),
/// `Ok(Some(n))` when the first `n` bytes are one frame, and an error when the header is bad.
pub fn check(buf: &[u8]) -> Result<Option<usize>, DecodeError> {
    let Some(head) = buf.first_chunk::<HEADER_LEN>() else {
        return Ok(None);
    };
    let h = Header::parse(head)?;
    let total = HEADER_LEN + h.len as usize;
    Ok((buf.len() >= total).then_some(total))
}

/// Decodes exactly one frame from `frame`, returning its request id and message.
pub fn decode(frame: &[u8]) -> Result<(u32, Message), DecodeError> {
    let head = frame.first_chunk::<HEADER_LEN>().ok_or(DecodeError::Truncated("header"))?;
    let h = Header::parse(head)?;
    let body = &frame[HEADER_LEN..];
    if body.len() < h.len as usize {
        return Err(DecodeError::Truncated("body"));
    }
    if body.len() > h.len as usize {
        return Err(DecodeError::Trailing(body.len() - h.len as usize));
    }
    Ok((h.id, decode_body(&h, body)?))
}

/// Decodes a body whose header was already parsed (used by stream readers that read the header
/// first, then exactly `h.len` bytes).
pub fn decode_body(h: &Header, body: &[u8]) -> Result<Message, DecodeError> {
    let mut r = Reader::new(body);
    let msg = Message::decode_body(h.msg_type, &mut r)?;
    r.finish()?;
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_fixture() {
        let bytes = encode(0x01020304, &Message::NodeList);
        assert_eq!(bytes, [b'B', b'P', b'R', b'C', 7, 0, 0, 20, 1, 2, 3, 4, 0, 0, 0, 0]);
    }

    #[test]
    fn tree_frames_encode_each_part_as_the_whole_message_would() {
        let whole = crate::samples::all()
            .into_iter()
            .map(|(_, m)| m)
            .find(|m| matches!(m, Message::SpawnTree { .. }))
            .expect("a SpawnTree sample");
        let Message::SpawnTree { entries, .. } = &whole else { unreachable!() };
        let mut bare = whole.clone();
        if let Message::SpawnTree { entries, .. } = &mut bare {
            entries.clear();
        }
        let frames = TreeFrames::new(9, &bare).expect("a SpawnTree without entries");
        for part in [&entries[..], &entries[1..], &[]] {
            let mut msg = bare.clone();
            if let Message::SpawnTree { entries, .. } = &mut msg {
                *entries = part.to_vec();
            }
            assert_eq!(frames.frame(part, 32), encode(9, &msg));
        }
        assert!(TreeFrames::new(9, &whole).is_none());
        assert!(TreeFrames::new(9, &Message::NodeList).is_none());
    }

    #[test]
    fn oversized_length_is_refused_from_the_header_alone() {
        let mut bytes = encode(1, &Message::NodeList);
        bytes[12..16].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(check(&bytes), Err(DecodeError::TooLong { what: "body", .. })));
    }

    #[test]
    fn partial_frames_are_incomplete_not_errors() {
        let bytes = encode(3, &Message::SetState { node: 4, state: "up".into() });
        for cut in 0..bytes.len() {
            assert_eq!(check(&bytes[..cut]), Ok(None), "cut at {cut}");
        }
        assert_eq!(check(&bytes), Ok(Some(bytes.len())));
    }

    #[test]
    fn wrong_version_is_named() {
        let mut bytes = encode(1, &Message::NodeList);
        bytes[4] = 9;
        assert_eq!(decode(&bytes), Err(DecodeError::BadVersion { got: 9, ours: VERSION }));
    }

    /// Found by the fuzzer: a node-lost exit with a stray value must not decode, since it
    /// could not be re-encoded to the same bytes.
    #[test]
    fn node_lost_exit_with_a_value_is_refused() {
        let bytes: [u8; 33] = [
            0x42, 0x50, 0x52, 0x43, VERSION, 0, 0, 0x79, 0, 0, 0x79, 0, 0, 0, 0, 0x11, 0, 0, 0, 0,
            0, 0, 0, 0, 0, 0, 0, 8, 2, 0x23, 0, 0, 9,
        ];
        assert!(matches!(decode(&bytes), Err(DecodeError::BadValue { .. })));
    }

    #[test]
    fn rank_is_written_into_the_environment() {
        let spec = crate::ProcSpec {
            env: vec!["A=1".into(), "BPROC_RANK=XXXXXXX".into(), "B=x=y".into()],
            ..Default::default()
        };
        let env = spec.env_for_rank(12);
        assert_eq!(env[1], ("BPROC_RANK".into(), "0000012".into()));
        assert_eq!(env[2], ("B".into(), "x=y".into()));
    }

    #[test]
    fn the_environment_where_a_rank_runs_names_its_socket() {
        let spec = crate::ProcSpec {
            env: vec![
                "A=1".into(),
                "BPROC_SOCKET=/front/end".into(),
                "BPROC_RANK=XXXXXXX".into(),
                "NOEQUALS".into(),
                "B=x=y".into(),
            ],
            ..Default::default()
        };
        let joined =
            |socket| spec.env_where("0000007", socket).map(|p| p.concat()).collect::<Vec<_>>();
        let env = joined(Some("/node/sock"));
        assert_eq!(env, ["A=1", "BPROC_RANK=0000007", "B=x=y", "BPROC_SOCKET=/node/sock"]);
        assert_eq!(joined(None), ["A=1", "BPROC_RANK=0000007", "B=x=y"]);
    }

    #[test]
    fn unknown_type_decodes_to_unknown() {
        let mut bytes = encode(5, &Message::NodeList);
        bytes[6..8].copy_from_slice(&0xfffeu16.to_be_bytes());
        bytes[12..16].copy_from_slice(&3u32.to_be_bytes());
        bytes.extend_from_slice(&[1, 2, 3]);
        assert_eq!(decode(&bytes), Ok((5, Message::Unknown { msg_type: 0xfffe })));
    }
}
