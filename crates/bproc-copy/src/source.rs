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

/// Writes the stream for `paths` to `out`. Only a failure of `out` (the connection) is an
/// error; unreadable sources are reported inside the stream.
pub fn send(
    paths: &[String],
    recursive: bool,
    out: &mut dyn Write,
    progress: &dyn Progress,
) -> io::Result<SendStats> {
    let mut s = Sender {
        out,
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

struct Sender<'a> {
    out: &'a mut dyn Write,
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
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        let mut left = size;
        let mut failure = None;
        while left > 0 {
            let want = left.min(self.buf.len() as u64) as usize;
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
            hasher.update(&self.buf[..n]);
            self.out.write_all(&self.buf[..n])?;
            left -= n as u64;
            self.progress.advance(n as u64);
        }
        let trailer = match failure {
            None => {
                self.stats.files += 1;
                self.stats.bytes += size;
                Trailer::Ok(hasher.digest128().to_be_bytes())
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
