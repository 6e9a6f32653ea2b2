//! bpsh's output formats, without I/O: given the bytes each node's process wrote on stdout or
//! stderr, what bpsh writes to its own stdout and stderr.
//!
//! - Default: every chunk as it arrives; nodes interleave at arbitrary byte boundaries.
//! - `-L`: each (node, stream) pair is buffered and only whole lines go out; a buffer that
//!   fills (`-b` bytes) without a newline goes out as it is.
//! - `-p`: each line starts with `"%3d: "` (the node number), and a piece cut by a full
//!   buffer or by the end of the stream gets a newline.
//! - `-d`: before each node's output, `"%d\t"` and 69 dashes on stdout.

use std::collections::HashMap;

/// Which of bpsh's own streams a piece goes to.
pub const STDOUT: u8 = 1;
/// bpsh's stderr.
pub const STDERR: u8 = 2;

/// The divider printed before node `node`'s output (`-d`).
pub fn divider(node: i32) -> Vec<u8> {
    format!("{node}\t{}\n", "-".repeat(69)).into_bytes()
}

/// Line assembly per (rank, stream).
#[derive(Debug)]
pub struct Formatter {
    line: bool,
    prefix: bool,
    buffer: usize,
    nodes: Vec<i32>,
    partial: HashMap<(usize, u8), Vec<u8>>,
}

impl Formatter {
    /// A formatter for ranks on `nodes` with bpsh's `-L`, `-p` and `-b` settings.
    pub fn new(line: bool, prefix: bool, buffer: usize, nodes: Vec<i32>) -> Self {
        Formatter {
            line: line || prefix,
            prefix,
            buffer: buffer.max(1),
            nodes,
            partial: HashMap::new(),
        }
    }

    fn emit(&self, rank: usize, piece: &[u8], add_newline: bool, out: &mut Vec<u8>) {
        if self.prefix {
            out.extend_from_slice(format!("{:3}: ", self.nodes[rank]).as_bytes());
        }
        out.extend_from_slice(piece);
        if add_newline && self.prefix {
            out.push(b'\n');
        }
    }

    /// Bytes `data` arrived from rank `rank`'s `stream`; returns what to write to that stream.
    pub fn data(&mut self, rank: usize, stream: u8, data: &[u8]) -> Vec<u8> {
        if !self.line {
            return data.to_vec();
        }
        let mut out = Vec::new();
        let mut buf = self.partial.remove(&(rank, stream)).unwrap_or_default();
        for &b in data {
            buf.push(b);
            if b == b'\n' {
                self.emit(rank, &buf, false, &mut out);
                buf.clear();
            } else if buf.len() >= self.buffer {
                self.emit(rank, &buf, true, &mut out);
                buf.clear();
            }
        }
        if !buf.is_empty() {
            self.partial.insert((rank, stream), buf);
        }
        out
    }

    /// Rank `rank`'s `stream` ended; returns what is left to write.
    pub fn eof(&mut self, rank: usize, stream: u8) -> Vec<u8> {
        let mut out = Vec::new();
        if let Some(buf) = self.partial.remove(&(rank, stream)) {
            self.emit(rank, &buf, true, &mut out);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_mode_passes_chunks_through() {
        let mut f = Formatter::new(false, false, 4096, vec![0]);
        assert_eq!(f.data(0, STDOUT, b"ab"), b"ab");
        assert_eq!(f.data(0, STDOUT, b"c\nd"), b"c\nd");
        assert!(f.eof(0, STDOUT).is_empty());
    }

    #[test]
    fn line_mode_joins_pieces_per_stream() {
        let mut f = Formatter::new(true, false, 4096, vec![3, 4]);
        assert!(f.data(0, STDOUT, b"hel").is_empty());
        assert!(f.data(1, STDOUT, b"oth").is_empty());
        assert!(f.data(0, STDERR, b"err").is_empty());
        assert_eq!(f.data(0, STDOUT, b"lo\nwor"), b"hello\n");
        assert_eq!(f.data(1, STDOUT, b"er\n"), b"other\n");
        assert_eq!(f.eof(0, STDOUT), b"wor");
        assert_eq!(f.eof(0, STDERR), b"err");
    }

    #[test]
    fn prefixes_and_cut_lines() {
        let mut f = Formatter::new(false, true, 8, vec![5, 12, 1000]);
        assert_eq!(f.data(0, STDOUT, b"a\nb\n"), b"  5: a\n  5: b\n");
        assert_eq!(f.data(1, STDERR, b"x\n"), b" 12: x\n");
        assert_eq!(f.data(2, STDOUT, b"y\n"), b"1000: y\n");
        // A line longer than the buffer is cut, each piece on its own prefixed line.
        assert_eq!(f.data(0, STDOUT, b"0123456789\n"), b"  5: 01234567\n  5: 89\n");
        assert!(f.data(0, STDOUT, b"tail").is_empty());
        assert_eq!(f.eof(0, STDOUT), b"  5: tail\n");
    }

    #[test]
    fn divider_format() {
        let d = String::from_utf8(divider(3)).unwrap();
        assert_eq!(d, format!("3\t{}\n", "-".repeat(69)));
    }
}
