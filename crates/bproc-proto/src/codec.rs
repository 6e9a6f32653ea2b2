//! Primitive encoding: big-endian integers and length-prefixed strings and lists.
//!
//! [`Reader`] never panics and never allocates more than the bytes it was given allow: every
//! length is checked against both the caller's limit and the bytes that remain.

use thiserror::Error;

/// Why a frame or body could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The frame does not start with the bproc magic; the peer speaks another protocol.
    #[error("bad magic {0:02x?}: the peer does not speak the bproc protocol")]
    BadMagic([u8; 4]),
    /// The frame's protocol version is not ours.
    #[error("protocol version {got} is not supported (this side speaks {ours})")]
    BadVersion {
        /// Version found in the header.
        got: u8,
        /// Version this crate speaks.
        ours: u8,
    },
    /// A length field is larger than its limit.
    #[error("{what} is {len} bytes, over the limit of {max}")]
    TooLong {
        /// What the length is of.
        what: &'static str,
        /// The length found.
        len: usize,
        /// Its limit.
        max: usize,
    },
    /// The body ended before a field was complete.
    #[error("message truncated while reading {0}")]
    Truncated(&'static str),
    /// Bytes were left after the last field.
    #[error("{0} unexpected trailing bytes after the message")]
    Trailing(usize),
    /// A string is not UTF-8.
    #[error("{0} is not valid UTF-8")]
    BadString(&'static str),
    /// A field holds a value outside its range.
    #[error("invalid value {value} for {what}")]
    BadValue {
        /// The field.
        what: &'static str,
        /// The value found.
        value: u64,
    },
}

/// Appends fields to a byte buffer.
#[derive(Debug, Default)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    /// A writer that appends to `buf`.
    pub fn new(buf: Vec<u8>) -> Self {
        Writer { buf }
    }
    /// The bytes written so far.
    pub fn into_inner(self) -> Vec<u8> {
        self.buf
    }
    /// One byte.
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    /// Big-endian u16.
    pub fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    /// Big-endian u32.
    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    /// Big-endian i32.
    pub fn i32(&mut self, v: i32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    /// Big-endian u64.
    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    /// Raw bytes of a fixed size known to both sides.
    pub fn fixed(&mut self, v: &[u8]) {
        self.buf.extend_from_slice(v);
    }
    /// A u32 length then the bytes. The caller keeps `v` within the limit the reader applies.
    pub fn bytes(&mut self, v: &[u8]) {
        self.u32(v.len() as u32);
        self.buf.extend_from_slice(v);
    }
    /// A string, as [`Writer::bytes`].
    pub fn str(&mut self, v: &str) {
        self.bytes(v.as_bytes());
    }
}

/// Reads fields from a byte slice, checking every length.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader over `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated(what));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }
    /// One byte.
    pub fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(what)?[0])
    }
    /// Big-endian u16.
    pub fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }
    /// Big-endian u32.
    pub fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }
    /// Big-endian i32.
    pub fn i32(&mut self, what: &'static str) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array(what)?))
    }
    /// Big-endian u64.
    pub fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }
    /// `N` raw bytes.
    pub fn fixed<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        self.array(what)
    }
    /// A u32 length (at most `max`) then that many bytes.
    pub fn bytes(&mut self, what: &'static str, max: usize) -> Result<&'a [u8], DecodeError> {
        let len = self.u32(what)? as usize;
        if len > max {
            return Err(DecodeError::TooLong { what, len, max });
        }
        self.take(len, what)
    }
    /// A UTF-8 string of at most `max` bytes.
    pub fn str(&mut self, what: &'static str, max: usize) -> Result<String, DecodeError> {
        let b = self.bytes(what, max)?;
        std::str::from_utf8(b).map(str::to_owned).map_err(|_| DecodeError::BadString(what))
    }
    /// A u32 element count, checked against `max` and against the bytes left, given that every
    /// element takes at least `min_elem` bytes. Callers allocate only after this check.
    pub fn count(
        &mut self,
        what: &'static str,
        max: usize,
        min_elem: usize,
    ) -> Result<usize, DecodeError> {
        let n = self.u32(what)? as usize;
        if n > max {
            return Err(DecodeError::TooLong { what, len: n, max });
        }
        if n.saturating_mul(min_elem.max(1)) > self.buf.len() {
            return Err(DecodeError::Truncated(what));
        }
        Ok(n)
    }
    /// How many bytes are left.
    pub fn bytes_left(&self) -> usize {
        self.buf.len()
    }
    /// Discards up to `n` bytes.
    pub fn skip(&mut self, n: usize) {
        self.buf = &self.buf[n.min(self.buf.len())..];
    }
    /// Fails unless every byte was consumed.
    pub fn finish(self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Trailing(self.buf.len()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_over_limit_is_refused_before_reading() {
        let mut w = Writer::default();
        w.str("hello");
        let bytes = w.into_inner();
        let err = Reader::new(&bytes).str("name", 4).unwrap_err();
        assert_eq!(err, DecodeError::TooLong { what: "name", len: 5, max: 4 });
    }

    #[test]
    fn count_larger_than_remaining_bytes_is_truncation() {
        // Claims 1000 elements of at least 8 bytes with only 4 bytes following.
        let bytes = [0, 0, 3, 232, 1, 2, 3, 4];
        let err = Reader::new(&bytes).count("list", 5000, 8).unwrap_err();
        assert_eq!(err, DecodeError::Truncated("list"));
    }

    #[test]
    fn trailing_bytes_are_reported() {
        let bytes = [0, 1, 9];
        let mut r = Reader::new(&bytes);
        assert_eq!(r.u16("x").unwrap(), 1);
        assert_eq!(r.finish().unwrap_err(), DecodeError::Trailing(1));
    }
}
