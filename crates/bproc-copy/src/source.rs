//! The sending side: walks the source paths with the caller's rights and writes the stream.
//! What cannot be read becomes an `X` entry with rcp's message, so every receiver reports it
//! and the copy goes on with the next path.

use std::fs::{File, Metadata};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use crate::stream::{encode_entry, encode_trailer, Entry, Times, Trailer};
use crate::{rcp_error, Progress, CHUNK};

/// What a sender sent.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SendStats {
    /// Files sent whole.
    pub files: u64,
    /// Bytes of file data.
    pub bytes: u64,
    /// Errors put in the stream (also reported by every receiver).
    pub errors: Vec<String>,
}

/// Where a sender writes its stream.
pub trait Out: Write {
    /// Sends `data`, just read from `file` at `offset`, straight from the file (the kernel's
    /// `sendfile`, which spares copying it through this process) if this output can;
    /// `Ok(false)` if it cannot, and it is to be written. A file changed since it was read
    /// (for the checksum) fails that check where it lands; one cut shorter meanwhile has the
    /// rest sent from `data`, so the stream keeps its length.
    fn send_file(&mut self, file: &File, offset: u64, data: &[u8]) -> io::Result<bool> {
        let _ = (file, offset, data);
        Ok(false)
    }
}

impl Out for std::os::unix::net::UnixStream {}

/// Writes the stream for `paths` to `out`. Only a failure of `out` (the connection) is an
/// error; unreadable sources are reported inside the stream.
pub fn send(
    paths: &[String],
    recursive: bool,
    out: &mut dyn Out,
    progress: &dyn Progress,
) -> io::Result<SendStats> {
    let mut s = Sender {
        out: Gathered { out, buf: Vec::with_capacity(CHUNK) },
        buf: vec![0u8; CHUNK],
        head: Vec::new(),
        stats: SendStats::default(),
        progress,
    };
    s.out.write_all(crate::stream::MAGIC)?;
    for p in paths {
        s.top(p, recursive)?;
    }
    s.entry(&Entry::End)?;
    s.out.flush()?;
    Ok(s.stats)
}

/// An [`Out`] with the stream's small parts (entries, trailers, small files) gathered into
/// large writes; what it sends from a file goes after what it gathered.
struct Gathered<'a> {
    out: &'a mut dyn Out,
    buf: Vec<u8>,
}

impl Gathered<'_> {
    /// Sends `data`, just read from `file` at `offset`.
    fn file_data(&mut self, file: &File, offset: u64, data: &[u8]) -> io::Result<()> {
        if data.len() >= SEND_FILE_MIN {
            self.flush()?;
            if self.out.send_file(file, offset, data)? {
                return Ok(());
            }
        }
        self.write_all(data)
    }
}

impl Write for Gathered<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len() + data.len() > self.buf.capacity() {
            self.flush()?;
        }
        if data.len() >= self.buf.capacity() {
            return self.out.write(data);
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.out.write_all(&self.buf)?;
            self.buf.clear();
        }
        self.out.flush()
    }
}

/// How much of a file is read (and checksummed) at a time when it is sent from the file
/// itself: a piece that stays in the processor's cache between the read and the checksum.
pub const SEND_FILE_STEP: usize = 256 << 10;

/// Data shorter than this is gathered with the rest of the stream rather than sent from its
/// file: a small file costs one write among others instead of system calls of its own.
const SEND_FILE_MIN: usize = 64 << 10;

struct Sender<'a> {
    out: Gathered<'a>,
    buf: Vec<u8>,
    head: Vec<u8>,
    stats: SendStats,
    progress: &'a dyn Progress,
}

pub(crate) fn times_of(m: &Metadata) -> Times {
    Times {
        mtime: (m.mtime(), m.mtime_nsec().clamp(0, 999_999_999) as u32),
        atime: (m.atime(), m.atime_nsec().clamp(0, 999_999_999) as u32),
    }
}

impl Sender<'_> {
    fn entry(&mut self, e: &Entry) -> io::Result<()> {
        self.head.clear();
        encode_entry(e, &mut self.head);
        self.out.write_all(&self.head)
    }

    fn error(&mut self, message: String) -> io::Result<()> {
        self.stats.errors.push(message.clone());
        self.entry(&Entry::Error { message })
    }

    fn top(&mut self, path: &str, recursive: bool) -> io::Result<()> {
        let p = Path::new(path);
        // rcp follows a symbolic link named on the command line.
        let meta = match std::fs::metadata(p) {
            Ok(m) => m,
            Err(e) => return self.error(rcp_error(path, &e)),
        };
        let name = match p.file_name() {
            Some(n) if !path.ends_with("/..") && path != ".." => n.as_bytes().to_vec(),
            _ if meta.is_dir() => match std::fs::canonicalize(p)
                .ok()
                .and_then(|c| c.file_name().map(|n| n.as_bytes().to_vec()))
            {
                Some(n) => n,
                None => return self.error(format!("rcp: {path}: cannot copy the root directory")),
            },
            _ => return self.error(format!("rcp: {path}: invalid name")),
        };
        if meta.is_dir() {
            if !recursive {
                return self.error(format!("rcp: {path}: not a plain file"));
            }
            return self.dir(p, path, name, &meta);
        }
        self.node(p, path, name, &meta)
    }

    /// A non-directory, or a directory met inside a recursive copy.
    fn node(&mut self, p: &Path, shown: &str, name: Vec<u8>, meta: &Metadata) -> io::Result<()> {
        let ft = meta.file_type();
        if ft.is_symlink() {
            return match std::fs::read_link(p) {
                Ok(t) => {
                    self.entry(&Entry::Symlink { name, target: t.as_os_str().as_bytes().to_vec() })
                }
                Err(e) => self.error(rcp_error(shown, &e)),
            };
        }
        if ft.is_dir() {
            return self.dir(p, shown, name, meta);
        }
        if !ft.is_file() || ft.is_fifo() || ft.is_socket() {
            return self.error(format!("rcp: {shown}: not a plain file"));
        }
        let mut f = match File::open(p) {
            Ok(f) => f,
            Err(e) => return self.error(rcp_error(shown, &e)),
        };
        // The size as opened: a file that changes under us sends what it held then.
        let meta = f.metadata().unwrap_or_else(|_| meta.clone());
        let size = meta.len();
        self.entry(&Entry::File {
            name,
            mode: meta.mode() & 0o7777,
            times: times_of(&meta),
            size,
        })?;
        let mut hasher = twox_hash::XxHash3_128::new();
        let mut left = size;
        let mut failure = None;
        let step = if size >= SEND_FILE_MIN as u64 { SEND_FILE_STEP } else { CHUNK };
        while left > 0 {
            let want = left.min(step as u64) as usize;
            let n = if failure.is_some() {
                // Keep the stream in step: pad, and the trailer says to drop the file.
                self.buf[..want].fill(0);
                want
            } else {
                match f.read(&mut self.buf[..want]) {
                    Ok(0) => {
                        failure = Some(format!("rcp: {shown}: file shrank while being copied"));
                        continue;
                    }
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        failure = Some(rcp_error(shown, &e));
                        continue;
                    }
                }
            };
            hasher.write(&self.buf[..n]);
            if failure.is_some() {
                self.out.write_all(&self.buf[..n])?;
            } else {
                self.out.file_data(&f, size - left, &self.buf[..n])?;
            }
            left -= n as u64;
            self.progress.advance(n as u64);
        }
        let trailer = match failure {
            None => {
                self.stats.files += 1;
                self.stats.bytes += size;
                Trailer::Ok(hasher.finish_128().to_be_bytes())
            }
            Some(m) => {
                self.stats.errors.push(m.clone());
                Trailer::Failed(m)
            }
        };
        self.head.clear();
        encode_trailer(&trailer, &mut self.head);
        self.out.write_all(&self.head)
    }

    fn dir(&mut self, p: &Path, shown: &str, name: Vec<u8>, meta: &Metadata) -> io::Result<()> {
        let mut names: Vec<_> = match std::fs::read_dir(p) {
            Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.file_name())).collect(),
            Err(e) => return self.error(rcp_error(shown, &e)),
        };
        names.sort();
        self.entry(&Entry::Dir { name, mode: meta.mode() & 0o7777, times: times_of(meta) })?;
        for n in names {
            let child = p.join(&n);
            let child_shown = format!("{}/{}", shown.trim_end_matches('/'), n.to_string_lossy());
            match std::fs::symlink_metadata(&child) {
                Ok(m) => self.node(&child, &child_shown, n.as_bytes().to_vec(), &m)?,
                Err(e) => self.error(rcp_error(&child_shown, &e))?,
            }
        }
        self.entry(&Entry::Up)
    }
}
