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

/// Length of the header.
pub const HEADER_LEN: usize = 21;
/// A staged file: the header is followed by the file's 32-byte hash, and the launcher answers
/// with the size (u64, big-endian) and the content.
pub const FETCH: u8 = 0xff;
/// The process image of a move or rfork: the launcher writes the image and closes.
pub const IMAGE: u8 = 0xfe;

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
