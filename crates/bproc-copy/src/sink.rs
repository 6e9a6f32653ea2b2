//! The receiving side: reads a stream and writes what it holds under the target, with the
//! rights of the thread that runs it. Every file is written to a temporary name in its
//! directory and renamed over the old one only when its checksum matches, so an interrupted
//! copy (a killed sender, a lost node, a full disk) leaves the old file in place.

use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::stream::{decode_entry, decode_magic, decode_trailer, Decoded, Entry, Times, Trailer};
use crate::{rcp_error, Progress, CHUNK};

/// Where and how a stream is written.
#[derive(Debug, Clone)]
pub struct Target {
    /// A directory, or the new name of a single source.
    pub path: PathBuf,
    /// `path` must be a directory.
    pub must_be_dir: bool,
    /// Appended to each top-level name (`.3` when gathering from node 3).
    pub suffix: OsString,
    /// Keep modes and times (`-p`).
    pub preserve: bool,
    /// Masks the modes of new files and directories without `-p`.
    pub umask: u32,
}

/// What a receiver did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Errors the sender put in the stream.
    pub source_errors: Vec<String>,
    /// This receiver's own errors.
    pub errors: Vec<String>,
    /// Files written.
    pub files: u64,
    /// Bytes of file data written.
    pub bytes: u64,
}

/// Input with room to decode headers in place and hand out data without copying.
struct InBuf<'a> {
    r: &'a mut dyn Read,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl InBuf<'_> {
    fn avail(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }
    /// Reads more; `Ok(false)` at end of input.
    fn fill(&mut self) -> io::Result<bool> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        loop {
            match self.r.read(&mut self.buf[self.end..]) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.end += n;
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
    fn decode<T>(&mut self, f: fn(&[u8]) -> Decoded<T>) -> io::Result<T> {
        loop {
            match f(self.avail()) {
                Ok(Some((v, n))) => {
                    self.start += n;
                    return Ok(v);
                }
                Ok(None) => {
                    if !self.fill()? {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                }
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
        }
    }
}

/// A directory being filled: its final mode and times are set when it is left.
struct Open {
    path: PathBuf,
    mode: Option<u32>,
    times: Option<Times>,
}

/// Reads the stream from `input` and writes it under `target`. Never fails: a broken stream
/// becomes `rcp: lost connection` in the report, after removing the partial file.
pub fn receive(input: &mut dyn Read, target: &Target, progress: &dyn Progress) -> Report {
    let mut rx = Receiver {
        target,
        target_is_dir: std::fs::metadata(&target.path).map(|m| m.is_dir()).unwrap_or(false),
        stack: Vec::new(),
        skip: 0,
        report: Report::default(),
        progress,
    };
    let mut inb = InBuf { r: input, buf: vec![0u8; CHUNK], start: 0, end: 0 };
    if let Err(e) = rx.run(&mut inb) {
        let msg = match e.kind() {
            io::ErrorKind::InvalidData => format!("rcp: {e}"),
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => {
                "rcp: lost connection (the sender stopped sending)".to_owned()
            }
            _ => "rcp: lost connection".to_owned(),
        };
        rx.report.errors.push(msg);
    }
    rx.report
}

struct Receiver<'a> {
    target: &'a Target,
    target_is_dir: bool,
    /// Directories entered and being written.
    stack: Vec<Open>,
    /// Depth of a directory being skipped (its creation failed).
    skip: usize,
    report: Report,
    progress: &'a dyn Progress,
}

/// Deepest directory nesting accepted.
const MAX_DEPTH: usize = 1024;

fn show(p: &Path) -> String {
    p.display().to_string()
}

impl Receiver<'_> {
    fn run(&mut self, inb: &mut InBuf<'_>) -> io::Result<()> {
        inb.decode(decode_magic)?;
        loop {
            let entry = inb.decode(decode_entry)?;
            match entry {
                Entry::End => {
                    if !self.stack.is_empty() || self.skip > 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "bad copy stream: unbalanced directories",
                        ));
                    }
                    return Ok(());
                }
                Entry::Error { message } => self.report.source_errors.push(message),
                Entry::Up => {
                    if self.skip > 0 {
                        self.skip -= 1;
                    } else if let Some(open) = self.stack.pop() {
                        self.close_dir(open);
                    } else {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "bad copy stream: unbalanced directories",
                        ));
                    }
                }
                Entry::Dir { name, mode, times } => {
                    if self.skip > 0 || self.stack.len() >= MAX_DEPTH {
                        self.skip += 1;
                        continue;
                    }
                    match self.dest(&name, true) {
                        Some(p) => self.open_dir(p, mode, times),
                        None => self.skip += 1,
                    }
                }
                Entry::Symlink { name, target } => {
                    if self.skip == 0 {
                        if let Some(p) = self.dest(&name, false) {
                            self.symlink(&p, &target);
                        }
                    }
                }
                Entry::File { name, mode, times, size } => {
                    let dest = if self.skip == 0 { self.dest(&name, false) } else { None };
                    self.file(inb, dest, mode, times, size)?;
                }
            }
        }
    }

    /// Where entry `name` goes; `None` (with the error recorded) when it cannot be placed.
    fn dest(&mut self, name: &[u8], is_dir: bool) -> Option<PathBuf> {
        if let Some(open) = self.stack.last() {
            return Some(open.path.join(OsStr::from_bytes(name)));
        }
        let t = self.target;
        if self.target_is_dir {
            let mut n = OsStr::from_bytes(name).to_os_string();
            n.push(&t.suffix);
            return Some(t.path.join(n));
        }
        if t.must_be_dir || (is_dir && t.path.exists()) {
            self.report.errors.push(format!("rcp: {}: Not a directory", show(&t.path)));
            return None;
        }
        Some(t.path.clone())
    }

    fn open_dir(&mut self, p: PathBuf, mode: u32, times: Times) {
        let preserve = self.target.preserve;
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => {
                self.stack.push(Open {
                    path: p,
                    mode: preserve.then_some(mode),
                    times: preserve.then_some(times),
                });
            }
            Ok(_) => {
                self.report.errors.push(format!("rcp: {}: Not a directory", show(&p)));
                self.skip += 1;
            }
            Err(_) => match std::fs::DirBuilder::new().mode(0o700).create(&p) {
                Ok(()) => {
                    let mode = if preserve { mode } else { mode & !self.target.umask };
                    self.stack.push(Open {
                        path: p,
                        mode: Some(mode),
                        times: preserve.then_some(times),
                    });
                }
                Err(e) => {
                    self.report.errors.push(rcp_error(&show(&p), &e));
                    self.skip += 1;
                }
            },
        }
    }

    fn close_dir(&mut self, open: Open) {
        if let Some(mode) = open.mode {
            if let Err(e) =
                std::fs::set_permissions(&open.path, std::fs::Permissions::from_mode(mode & 0o7777))
            {
                self.report.errors.push(rcp_error(&show(&open.path), &e));
            }
        }
        if let Some(t) = open.times {
            if let Err(e) = set_times(&open.path, None, &t) {
                self.report.errors.push(rcp_error(&show(&open.path), &e));
            }
        }
    }

    fn symlink(&mut self, p: &Path, target: &[u8]) {
        let tmp = temp_name(p);
        let r = std::os::unix::fs::symlink(OsStr::from_bytes(target), &tmp).and_then(|()| {
            std::fs::rename(&tmp, p).inspect_err(|_| drop(std::fs::remove_file(&tmp)))
        });
        match r {
            Ok(()) => self.report.files += 1,
            Err(e) => self.report.errors.push(rcp_error(&show(p), &e)),
        }
    }

    /// Reads one file's data and trailer; writes it at `dest` when there is one.
    fn file(
        &mut self,
        inb: &mut InBuf<'_>,
        dest: Option<PathBuf>,
        mode: u32,
        times: Times,
        size: u64,
    ) -> io::Result<()> {
        let mut out = dest.and_then(|p| match self.create(&p) {
            Ok(w) => Some(w),
            Err(msg) => {
                self.report.errors.push(msg);
                None
            }
        });
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        let mut left = size;
        let result = (|| -> io::Result<()> {
            while left > 0 {
                if inb.avail().is_empty() && !inb.fill()? {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                let take = (inb.avail().len() as u64).min(left) as usize;
                let chunk = &inb.buf[inb.start..inb.start + take];
                hasher.update(chunk);
                if let Some(w) = &mut out {
                    if let Err(e) = w.file.write_all(chunk) {
                        self.report.errors.push(rcp_error(&show(&w.dest), &e));
                        let w = out.take().expect("checked above");
                        let _ = std::fs::remove_file(&w.tmp);
                    }
                }
                inb.start += take;
                left -= take as u64;
                self.progress.advance(take as u64);
            }
            Ok(())
        })();
        if let Err(e) = result {
            if let Some(w) = out {
                let _ = std::fs::remove_file(&w.tmp);
            }
            return Err(e);
        }
        let trailer = match inb.decode(decode_trailer) {
            Ok(t) => t,
            Err(e) => {
                if let Some(w) = out {
                    let _ = std::fs::remove_file(&w.tmp);
                }
                return Err(e);
            }
        };
        let Some(w) = out else { return Ok(()) };
        match trailer {
            Trailer::Ok(h) if h == hasher.digest128().to_be_bytes() => {
                match self.finish(&w, mode, &times) {
                    Ok(()) => {
                        self.report.files += 1;
                        self.report.bytes += size;
                    }
                    Err(e) => {
                        let _ = std::fs::remove_file(&w.tmp);
                        self.report.errors.push(rcp_error(&show(&w.dest), &e));
                    }
                }
            }
            Trailer::Ok(_) => {
                let _ = std::fs::remove_file(&w.tmp);
                self.report.errors.push(format!(
                    "rcp: {}: checksum mismatch; the old file is kept",
                    show(&w.dest)
                ));
            }
            Trailer::Failed(m) => {
                let _ = std::fs::remove_file(&w.tmp);
                self.report.source_errors.push(m);
            }
        }
        Ok(())
    }

    fn create(&self, dest: &Path) -> Result<Pending, String> {
        let existing = std::fs::symlink_metadata(dest).ok();
        if existing.as_ref().is_some_and(|m| m.is_dir()) {
            return Err(format!("rcp: {}: Is a directory", show(dest)));
        }
        let tmp = temp_name(dest);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| rcp_error(&show(dest), &e))?;
        let keep_mode = existing.filter(|m| m.is_file()).map(|m| m.mode() & 0o7777);
        Ok(Pending { file, tmp, dest: dest.to_owned(), keep_mode })
    }

    fn finish(&self, w: &Pending, mode: u32, times: &Times) -> io::Result<()> {
        let t = self.target;
        let mode = if t.preserve {
            mode & 0o7777
        } else {
            // rcp: an existing file keeps its mode; a new one gets the source's, masked.
            w.keep_mode.unwrap_or(mode & 0o777 & !t.umask)
        };
        w.file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        if t.preserve {
            set_times(&w.tmp, Some(&w.file), times)?;
        }
        std::fs::rename(&w.tmp, &w.dest)
    }
}

/// A file being written under a temporary name.
struct Pending {
    file: File,
    tmp: PathBuf,
    dest: PathBuf,
    keep_mode: Option<u32>,
}

/// `.NAME.bpcp-XXXXXXXX` beside `dest`.
fn temp_name(dest: &Path) -> PathBuf {
    let mut r = [0u8; 4];
    let _ = getrandom::fill(&mut r);
    let name = dest.file_name().map(|n| n.as_bytes()).unwrap_or(b"file");
    let mut t = b".".to_vec();
    t.extend_from_slice(&name[..name.len().min(200)]);
    t.extend_from_slice(format!(".bpcp-{:08x}", u32::from_be_bytes(r)).as_bytes());
    dest.with_file_name(OsString::from_vec(t))
}

fn set_times(p: &Path, f: Option<&File>, t: &Times) -> io::Result<()> {
    use nix::sys::stat::{futimens, utimensat, UtimensatFlags};
    use nix::sys::time::TimeSpec;
    let ts = |(s, ns): (i64, u32)| TimeSpec::new(s, ns.into());
    let r = match f {
        Some(f) => futimens(f.as_raw_fd(), &ts(t.atime), &ts(t.mtime)),
        None => utimensat(None, p, &ts(t.atime), &ts(t.mtime), UtimensatFlags::NoFollowSymlink),
    };
    r.map_err(io::Error::from)
}
