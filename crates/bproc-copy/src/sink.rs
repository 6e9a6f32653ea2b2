//! The receiving side: reads a stream and writes what it holds under the target, with the
//! rights of the thread that runs it.
//!
//! Where a file's data goes:
//!
//! - A regular file, new or replacing an old one, is written as an unnamed file (`O_TMPFILE`)
//!   in the directory of the file it becomes, and named only once its checksum matches:
//!   linked straight to its name when that is free, else linked to a temporary name
//!   `.NAME.bpcp-XXXXXXXX` and at once renamed over the old file. An interrupted copy (a
//!   killed sender, a lost node, a full disk) so leaves the old file in place, and a killed
//!   receiver (bpcp, or a slave) leaves nothing at all: the kernel frees an unnamed file with
//!   its last descriptor.
//! - Where the file system has no unnamed files (`EOPNOTSUPP`, or `EISDIR` from a kernel
//!   without `O_TMPFILE`) or there is no `/proc` to link one from, the file is written under
//!   the temporary name from the start. Such a temporary outlives a killed receiver, so the
//!   first file written that way into a directory first removes the temporaries there that
//!   have not changed for [`STALE_AFTER`] (a live copy changes its own every few minutes at
//!   least: a stream that stalls longer is given up).
//! - A symbolic link is written through, as rcp and cp do: the file it names is replaced (or
//!   created, for a dangling link). The link is followed by opening it, so the kernel's rules
//!   for following links (`fs.protected_symlinks` in sticky directories) apply.
//! - A FIFO or a device is written in place, as `open(2)` and `write(2)` would: it cannot be
//!   renamed over, and replacing it would destroy it. Its checksum is still verified and a
//!   mismatch reported (the bytes written cannot be taken back); its mode and times are left
//!   alone. A FIFO waits up to [`FIFO_WAIT`] for a reader.
//! - A symbolic link in the stream replaces a file or link of its name, never a FIFO, device
//!   or socket.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use nix::errno::Errno;
use nix::libc;

use crate::stream::{decode_entry, decode_magic, decode_trailer, Decoded, Entry, Times, Trailer};
use crate::{rcp_error, Progress, CHUNK};

/// Why a file's data has nowhere to go; the receiver reports it and goes on with the next.
#[derive(Debug, thiserror::Error)]
enum CreateError {
    /// A system call failed on the file (printed as rcp does, so not a source).
    #[error("rcp: {shown}: {}", crate::os_text(error))]
    Io { shown: String, error: io::Error },
    /// A directory is where the file should go.
    #[error("rcp: {0}: Is a directory")]
    IsDir(String),
}

/// A named temporary (see the module header) whose status has not changed for this long
/// belongs to a receiver that died, and the next copy into its directory removes it.
pub const STALE_AFTER: Duration = Duration::from_secs(10 * 60);

/// How long writing into a FIFO waits for a process to open it for reading.
pub const FIFO_WAIT: Duration = Duration::from_secs(120);

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
    /// Fills `dst`: first from what is buffered, then straight from the input.
    fn read_exact(&mut self, dst: &mut [u8]) -> io::Result<()> {
        let have = self.avail().len().min(dst.len());
        dst[..have].copy_from_slice(&self.buf[self.start..self.start + have]);
        self.start += have;
        self.r.read_exact(&mut dst[have..])
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
    // An unnamed file is named through its /proc/self/fd link (see `link_unnamed`).
    receive_with(input, target, progress, Path::new("/proc/self/fd").is_dir())
}

/// [`receive`], writing files unnamed until they are complete only when `unnamed`.
fn receive_with(
    input: &mut dyn Read,
    target: &Target,
    progress: &dyn Progress,
    unnamed: bool,
) -> Report {
    let mut rx = Receiver {
        target,
        target_is_dir: std::fs::metadata(&target.path).map(|m| m.is_dir()).unwrap_or(false),
        stack: Vec::new(),
        skip: 0,
        report: Report::default(),
        progress,
        unnamed,
        swept: HashSet::new(),
        block: None,
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
    /// New files start unnamed (`O_TMPFILE`); off where `/proc` is missing, and for a
    /// directory whose file system refuses them the named fallback is used anyway.
    unnamed: bool,
    /// Directories already swept of stale named temporaries.
    swept: HashSet<PathBuf>,
    /// Where file data is gathered into whole blocks before it is written.
    block: Option<Vec<u8>>,
}

/// File data is written in blocks of this size, at offsets that are multiples of it, into a
/// file that grows with them. A block stays in the processor's cache from the socket through
/// the checksum to the file; a write that fills whole pages spares the file system zeroing
/// them first; and a tmpfs mounted `huge=within_size` backs each block with one folio of its
/// size. A file sized first would get 2 MiB pages instead, which a virtual machine whose host
/// takes back free memory hands out at a fraction of memory speed (bench/bpcp.sh: a copy into
/// such a file took 0.43 to 2.4 s a GiB, into a growing one 0.43 to 0.6).
const BLOCK: usize = 512 << 10;

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
            if let Err(e) = set_times(&open.path, &t) {
                self.report.errors.push(rcp_error(&show(&open.path), &e));
            }
        }
    }

    fn symlink(&mut self, p: &Path, target: &[u8]) {
        let target = OsStr::from_bytes(target);
        let r = match std::fs::symlink_metadata(p) {
            Ok(m) if is_special(&m) => {
                Err(io::Error::other("not replacing a FIFO, device or socket with a symbolic link"))
            }
            Ok(_) => symlink_over(target, p),
            Err(_) => std::os::unix::fs::symlink(target, p).or_else(|e| {
                if e.kind() == io::ErrorKind::AlreadyExists {
                    symlink_over(target, p)
                } else {
                    Err(e)
                }
            }),
        };
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
            Err(e) => {
                self.report.errors.push(e.to_string());
                None
            }
        });
        let mut hasher = twox_hash::XxHash3_128::new();
        let mut left = size;
        let result = (|| -> io::Result<()> {
            let block = self.block.get_or_insert_with(|| vec![0u8; BLOCK]);
            while left > 0 {
                let chunk = &mut block[..left.min(BLOCK as u64) as usize];
                inb.read_exact(chunk)?;
                hasher.write(chunk);
                if let Some(w) = &mut out {
                    if let Err(e) = w.file.write_all(chunk) {
                        self.report.errors.push(rcp_error(&show(&w.shown), &e));
                        out.take().expect("checked above").discard();
                    }
                }
                left -= chunk.len() as u64;
                self.progress.advance(chunk.len() as u64);
            }
            Ok(())
        })();
        if let Err(e) = result {
            if let Some(w) = out {
                w.discard();
            }
            return Err(e);
        }
        let trailer = match inb.decode(decode_trailer) {
            Ok(t) => t,
            Err(e) => {
                if let Some(w) = out {
                    w.discard();
                }
                return Err(e);
            }
        };
        let Some(w) = out else { return Ok(()) };
        match trailer {
            Trailer::Ok(h) if h == hasher.finish_128().to_be_bytes() => {
                match self.finish(&w, mode, &times) {
                    Ok(()) => {
                        self.report.files += 1;
                        self.report.bytes += size;
                    }
                    Err(e) => {
                        self.report.errors.push(rcp_error(&show(&w.shown), &e));
                        w.discard();
                    }
                }
            }
            Trailer::Ok(_) => {
                let what = match w.place {
                    Place::InPlace => "written in place, so what it received is damaged",
                    Place::Replace { .. } => "the old file is kept",
                };
                self.report
                    .errors
                    .push(format!("rcp: {}: checksum mismatch; {what}", show(&w.shown)));
                w.discard();
            }
            Trailer::Failed(m) => {
                w.discard();
                self.report.source_errors.push(m);
            }
        }
        Ok(())
    }

    /// Opens what a file's data is written to: a new file that will become `dest` (or the
    /// file a symbolic link at `dest` names), or a FIFO or device there, in place.
    fn create(&mut self, dest: &Path) -> Result<Pending, CreateError> {
        let fail = |error: io::Error| CreateError::Io { shown: show(dest), error };
        let (real, existing) = match std::fs::symlink_metadata(dest) {
            Ok(m) if m.file_type().is_symlink() => follow(dest).map_err(fail)?,
            Ok(m) => (dest.to_owned(), Some(m)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => (dest.to_owned(), None),
            Err(e) => return Err(fail(e)),
        };
        let shown = dest.to_owned();
        match &existing {
            Some(m) if m.is_dir() => Err(CreateError::IsDir(show(dest))),
            Some(m) if is_special(m) => {
                let fifo = m.file_type().is_fifo();
                let file = open_in_place(&real, fifo).map_err(fail)?;
                Ok(Pending { file, shown, place: Place::InPlace })
            }
            _ => {
                let keep_mode = existing.filter(Metadata::is_file).map(|m| m.mode() & 0o7777);
                let (file, tmp) = self.new_file(&real).map_err(fail)?;
                Ok(Pending { file, shown, place: Place::Replace { dest: real, tmp, keep_mode } })
            }
        }
    }

    /// A new, empty file that will become `dest`: unnamed in its directory where the file
    /// system allows, else under a temporary name beside it (returned).
    fn new_file(&mut self, dest: &Path) -> io::Result<(File, Option<PathBuf>)> {
        let dir = match dest.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        if self.unnamed {
            let unnamed =
                OpenOptions::new().write(true).mode(0o600).custom_flags(libc::O_TMPFILE).open(dir);
            match unnamed {
                Ok(f) => return Ok((f, None)),
                // No unnamed files on this file system (EISDIR: a kernel without O_TMPFILE).
                Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EISDIR)) => {}
                Err(e) => return Err(e),
            }
        }
        if self.swept.insert(dir.to_owned()) {
            sweep(dir, SystemTime::now());
        }
        let tmp = temp_name(dest);
        let file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        Ok((file, Some(tmp)))
    }

    /// Gives a verified file its mode and times and puts it in place.
    fn finish(&self, w: &Pending, mode: u32, times: &Times) -> io::Result<()> {
        let Place::Replace { dest, tmp, keep_mode } = &w.place else {
            // A FIFO or device keeps its own mode and times.
            return Ok(());
        };
        let t = self.target;
        let mode = if t.preserve {
            mode & 0o7777
        } else {
            // rcp: an existing file keeps its mode; a new one gets the source's, masked.
            keep_mode.unwrap_or(mode & 0o777 & !t.umask)
        };
        w.file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        if t.preserve {
            set_file_times(&w.file, times)?;
        }
        match tmp {
            Some(tmp) => std::fs::rename(tmp, dest),
            None => link_unnamed(&w.file, dest),
        }
    }
}

/// A file being received.
struct Pending {
    file: File,
    /// The name the stream gives it, for messages.
    shown: PathBuf,
    place: Place,
}

/// What becomes of a [`Pending`] file.
enum Place {
    /// It replaces (or creates) the regular file `dest` once verified.
    Replace {
        /// Where it goes: the name in the stream, or the file a symbolic link there names.
        dest: PathBuf,
        /// The visible temporary name it is written under; `None` while it is unnamed.
        tmp: Option<PathBuf>,
        /// The mode of the file it replaces, which rcp keeps.
        keep_mode: Option<u32>,
    },
    /// It is a FIFO or device, written in place.
    InPlace,
}

impl Pending {
    /// Gives the file up: a named temporary is removed; an unnamed file goes with its
    /// descriptor; what was written in place stays written.
    fn discard(self) {
        if let Place::Replace { tmp: Some(tmp), .. } = &self.place {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

/// A FIFO, character or block device, or socket: what is written to in place, never
/// replaced.
fn is_special(m: &Metadata) -> bool {
    let t = m.file_type();
    t.is_fifo() || t.is_char_device() || t.is_block_device() || t.is_socket()
}

/// Follows the symbolic link `link` as `open(2)` would: returns the path of the file it
/// names and that file's metadata, or, for a dangling link, the path where the file it
/// names would be and `None`.
fn follow(link: &Path) -> io::Result<(PathBuf, Option<Metadata>)> {
    // Opening the link (O_PATH: no access to the file itself is needed, and a FIFO does not
    // block) is what makes the kernel's rules for following links apply.
    match OpenOptions::new().read(true).custom_flags(libc::O_PATH).open(link) {
        Ok(f) => {
            let m = f.metadata()?;
            Ok((std::fs::canonicalize(link)?, Some(m)))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // Dangling: the kernel followed the link (or refused above) and found nothing
            // at its end. Walk the chain to that name.
            let mut p = link.to_owned();
            for _ in 0..40 {
                match std::fs::symlink_metadata(&p) {
                    Ok(m) if m.file_type().is_symlink() => {
                        let to = std::fs::read_link(&p)?;
                        p = match p.parent() {
                            Some(dir) if to.is_relative() => dir.join(to),
                            _ => to,
                        };
                    }
                    Ok(_) => return Err(io::Error::from_raw_os_error(libc::EAGAIN)),
                    Err(_) => return Ok((p, None)),
                }
            }
            Err(io::Error::from_raw_os_error(libc::ELOOP))
        }
        Err(e) => Err(e),
    }
}

/// Opens the FIFO or device `p` for writing in place. A FIFO's writer waits for a reader,
/// here at most [`FIFO_WAIT`].
fn open_in_place(p: &Path, fifo: bool) -> io::Result<File> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let deadline = Instant::now() + FIFO_WAIT;
    let file = loop {
        // Non-blocking, so that a FIFO without a reader says so (ENXIO) instead of hanging
        // and a device that would wait for a carrier does not.
        let opened =
            OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY).open(p);
        match opened {
            Ok(f) => break f,
            Err(e) if fifo && e.raw_os_error() == Some(libc::ENXIO) => {
                if Instant::now() >= deadline {
                    return Err(io::Error::other(format!(
                        "no process opened the FIFO for reading within {} s",
                        FIFO_WAIT.as_secs()
                    )));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e),
        }
    };
    let flags = fcntl(file.as_raw_fd(), FcntlArg::F_GETFL)?;
    let flags = OFlag::from_bits_truncate(flags) - OFlag::O_NONBLOCK;
    fcntl(file.as_raw_fd(), FcntlArg::F_SETFL(flags))?;
    Ok(file)
}

/// Gives the unnamed (`O_TMPFILE`) file `f` the name `dest`: linked straight there when the
/// name is free, else linked to a temporary name beside it and renamed over what is there,
/// so `dest` always names either the old file or the whole new one.
fn link_unnamed(f: &File, dest: &Path) -> io::Result<()> {
    use nix::fcntl::AtFlags;
    // Linking a descriptor by AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH; its /proc link
    // followed does not.
    let me = PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd()));
    let link =
        |to: &Path| nix::unistd::linkat(None, me.as_path(), None, to, AtFlags::AT_SYMLINK_FOLLOW);
    match link(dest) {
        Ok(()) => return Ok(()),
        Err(Errno::EEXIST) => {}
        Err(e) => return Err(e.into()),
    }
    for _ in 0..16 {
        let tmp = temp_name(dest);
        match link(&tmp) {
            Ok(()) => {
                return std::fs::rename(&tmp, dest).inspect_err(|_| {
                    let _ = std::fs::remove_file(&tmp);
                })
            }
            Err(Errno::EEXIST) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(io::Error::from_raw_os_error(libc::EEXIST))
}

/// Makes `p` a symbolic link to `target`, replacing what is there atomically.
fn symlink_over(target: &OsStr, p: &Path) -> io::Result<()> {
    let tmp = temp_name(p);
    std::os::unix::fs::symlink(target, &tmp)?;
    std::fs::rename(&tmp, p).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
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

/// Whether `name` is one [`temp_name`] makes.
fn is_temp_name(name: &[u8]) -> bool {
    const TAG: &[u8] = b".bpcp-";
    let Some((head, hex)) = name.len().checked_sub(8).map(|at| name.split_at(at)) else {
        return false;
    };
    name.first() == Some(&b'.')
        && head.len() > 1 + TAG.len()
        && head.ends_with(TAG)
        && hex.iter().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
}

/// Removes from `dir` the named temporaries of receivers that died: files named as
/// [`temp_name`] makes whose status has not changed for [`STALE_AFTER`] before `now`. The
/// status change time, not the modification time, since `-p` sets the latter to the source's
/// just before the rename. Best effort: what cannot be read or removed stays.
fn sweep(dir: &Path, now: SystemTime) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        if !is_temp_name(e.file_name().as_bytes()) {
            continue;
        }
        let Ok(m) = e.metadata() else { continue };
        if m.is_dir() {
            continue;
        }
        let changed = SystemTime::UNIX_EPOCH
            + Duration::new(m.ctime().max(0) as u64, m.ctime_nsec().clamp(0, 999_999_999) as u32);
        if now.duration_since(changed).is_ok_and(|age| age >= STALE_AFTER) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Sets a path's times, not following a symbolic link.
fn set_times(p: &Path, t: &Times) -> io::Result<()> {
    use nix::sys::stat::{utimensat, UtimensatFlags};
    utimensat(None, p, &timespec(t.atime), &timespec(t.mtime), UtimensatFlags::NoFollowSymlink)
        .map_err(io::Error::from)
}

/// Sets an open file's times.
fn set_file_times(f: &File, t: &Times) -> io::Result<()> {
    nix::sys::stat::futimens(f.as_raw_fd(), &timespec(t.atime), &timespec(t.mtime))
        .map_err(io::Error::from)
}

fn timespec((s, ns): (i64, u32)) -> nix::sys::time::TimeSpec {
    nix::sys::time::TimeSpec::new(s, ns.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::{encode_entry, encode_trailer, MAGIC};
    use crate::NoProgress;
    use std::os::unix::fs::symlink;

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("bproc-sink-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// A stream holding one file `name` with `data`; its checksum right or wrong; cut off
    /// after `cut` data bytes when given.
    fn stream(name: &str, data: &[u8], good_sum: bool, cut: Option<usize>) -> Vec<u8> {
        let mut s = MAGIC.to_vec();
        let entry = Entry::File {
            name: name.as_bytes().to_vec(),
            mode: 0o644,
            times: Times::default(),
            size: data.len() as u64,
        };
        encode_entry(&entry, &mut s);
        if let Some(n) = cut {
            s.extend_from_slice(&data[..n]);
            return s;
        }
        s.extend_from_slice(data);
        let mut sum = twox_hash::XxHash3_128::oneshot(data).to_be_bytes();
        if !good_sum {
            sum[0] ^= 1;
        }
        encode_trailer(&Trailer::Ok(sum), &mut s);
        encode_entry(&Entry::End, &mut s);
        s
    }

    fn target(path: &Path) -> Target {
        Target {
            path: path.to_owned(),
            must_be_dir: false,
            suffix: OsString::new(),
            preserve: false,
            umask: 0o022,
        }
    }

    fn run(bytes: &[u8], to: &Path, unnamed: bool) -> Report {
        receive_with(&mut &bytes[..], &target(to), &NoProgress, unnamed)
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn new_and_replaced_files_leave_no_temporary() {
        let d = scratch("plain");
        for unnamed in [true, false] {
            let r = run(&stream("f", b"new data", true, None), &d, unnamed);
            assert_eq!(r.errors, Vec::<String>::new());
            assert_eq!(std::fs::read(d.join("f")).unwrap(), b"new data");
            std::fs::set_permissions(d.join("f"), std::fs::Permissions::from_mode(0o600)).unwrap();
            let r = run(&stream("f", b"newer", true, None), &d, unnamed);
            assert_eq!((r.files, r.errors.len()), (1, 0));
            assert_eq!(std::fs::read(d.join("f")).unwrap(), b"newer");
            // rcp: a replaced file keeps its mode.
            let mode = std::fs::metadata(d.join("f")).unwrap().mode() & 0o777;
            assert_eq!(mode, 0o600, "unnamed: {unnamed}");
            assert_eq!(names(&d), ["f"]);
            std::fs::remove_file(d.join("f")).unwrap();
        }
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_broken_stream_or_bad_checksum_keeps_the_old_file_and_leaves_nothing() {
        let d = scratch("broken");
        for unnamed in [true, false] {
            std::fs::write(d.join("f"), b"old").unwrap();
            let r = run(&stream("f", &[7u8; 5000], true, Some(3000)), &d, unnamed);
            assert_eq!(r.errors, ["rcp: lost connection"]);
            let r = run(&stream("f", b"new", false, None), &d, unnamed);
            assert_eq!(
                r.errors,
                [format!(
                    "rcp: {}: checksum mismatch; the old file is kept",
                    d.join("f").display()
                )]
            );
            assert_eq!(std::fs::read(d.join("f")).unwrap(), b"old");
            assert_eq!(names(&d), ["f"], "unnamed: {unnamed}");
        }
        let _ = std::fs::remove_dir_all(&d);
    }

    /// `bpcp 1:/tmp/realfile llink` replaced the link, not the file it names.
    #[test]
    fn symbolic_links_are_written_through() {
        let d = scratch("links");
        std::fs::write(d.join("real"), b"old").unwrap();
        std::fs::set_permissions(d.join("real"), std::fs::Permissions::from_mode(0o640)).unwrap();
        symlink("real", d.join("link")).unwrap();
        symlink(d.join("link"), d.join("chain")).unwrap();
        let r = run(&stream("x", b"through the link", true, None), &d.join("chain"), true);
        assert_eq!(r.errors, Vec::<String>::new());
        assert_eq!(std::fs::read(d.join("real")).unwrap(), b"through the link");
        assert!(std::fs::symlink_metadata(d.join("link")).unwrap().file_type().is_symlink());
        assert!(std::fs::symlink_metadata(d.join("chain")).unwrap().file_type().is_symlink());
        assert_eq!(std::fs::metadata(d.join("real")).unwrap().mode() & 0o777, 0o640);
        // A dangling link gets the file it names.
        symlink("sub/made", d.join("dangling")).unwrap();
        std::fs::create_dir(d.join("sub")).unwrap();
        let r = run(&stream("x", b"made", true, None), &d.join("dangling"), true);
        assert_eq!(r.errors, Vec::<String>::new());
        assert_eq!(std::fs::read(d.join("sub/made")).unwrap(), b"made");
        // A link to a directory as the target is that directory (inside a tree, a link to a
        // directory where a file goes is refused: "Is a directory").
        symlink("sub", d.join("todir")).unwrap();
        let r = run(&stream("x", b"into", true, None), &d.join("todir"), true);
        assert_eq!(r.errors, Vec::<String>::new());
        assert_eq!(std::fs::read(d.join("sub/x")).unwrap(), b"into");
        assert_eq!(names(&d), ["chain", "dangling", "link", "real", "sub", "todir"]);
        assert_eq!(names(&d.join("sub")), ["made", "x"]);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_fifo_is_written_in_place() {
        let d = scratch("fifo");
        let fifo = d.join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || std::fs::read(fifo).unwrap())
        };
        let r = run(&stream("x", &data, true, None), &fifo, true);
        assert_eq!((r.files, r.bytes, r.errors.len()), (1, data.len() as u64, 0), "{r:?}");
        assert_eq!(reader.join().unwrap(), data);
        assert!(std::fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
        // Through a link too; a bad checksum is reported, and the FIFO stays.
        symlink("fifo", d.join("link")).unwrap();
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || std::fs::read(fifo).unwrap())
        };
        let r = run(&stream("x", b"damaged", false, None), &d.join("link"), true);
        assert_eq!(reader.join().unwrap(), b"damaged");
        assert_eq!(
            r.errors,
            [format!(
                "rcp: {}: checksum mismatch; written in place, so what it received is damaged",
                d.join("link").display()
            )]
        );
        assert!(std::fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
        assert_eq!(names(&d), ["fifo", "link"]);
        let _ = std::fs::remove_dir_all(&d);
    }

    /// `bpcp FILE N:/dev/null` turned /dev/null into a regular file. This uses a private
    /// node with /dev/null's numbers, never the shared one.
    #[test]
    fn a_device_is_written_in_place() {
        if !nix::unistd::geteuid().is_root() {
            let _ = writeln!(io::stderr(), "SKIPPED: mknod of a character device needs root");
            return;
        }
        use nix::sys::stat::{makedev, mknod, Mode, SFlag};
        let d = scratch("dev");
        let null = d.join("null");
        mknod(&null, SFlag::S_IFCHR, Mode::from_bits_truncate(0o666), makedev(1, 3)).unwrap();
        std::fs::set_permissions(&null, std::fs::Permissions::from_mode(0o666)).unwrap();
        let r = run(&stream("x", &[1u8; 100_000], true, None), &null, true);
        assert_eq!((r.files, r.errors.len()), (1, 0), "{r:?}");
        let m = std::fs::symlink_metadata(&null).unwrap();
        assert!(m.file_type().is_char_device());
        assert_eq!((m.rdev(), m.mode() & 0o777), (makedev(1, 3), 0o666));
        // A symbolic link in a stream does not replace it.
        let mut s = MAGIC.to_vec();
        encode_entry(&Entry::Symlink { name: b"null".to_vec(), target: b"x".to_vec() }, &mut s);
        encode_entry(&Entry::End, &mut s);
        let r = run(&s, &d, true);
        assert_eq!(
            r.errors,
            [format!(
                "rcp: {}: not replacing a FIFO, device or socket with a symbolic link",
                null.display()
            )]
        );
        assert!(std::fs::symlink_metadata(&null).unwrap().file_type().is_char_device());
        assert_eq!(names(&d), ["null"]);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn stale_named_temporaries_are_swept() {
        let d = scratch("sweep");
        for n in [".f.bpcp-0123abcd", ".g.bpcp-deadbeef", ".f.bpcp-0123ABCD", ".bpcp-01234567"] {
            std::fs::write(d.join(n), b"partial").unwrap();
        }
        std::fs::write(d.join("f.bpcp-01234567"), b"not ours").unwrap();
        std::fs::create_dir(d.join(".dir.bpcp-01234567")).unwrap();
        // Nothing is old enough yet.
        sweep(&d, SystemTime::now());
        assert_eq!(names(&d).len(), 6);
        sweep(&d, SystemTime::now() + STALE_AFTER + Duration::from_secs(1));
        assert_eq!(
            names(&d),
            [".bpcp-01234567", ".dir.bpcp-01234567", ".f.bpcp-0123ABCD", "f.bpcp-01234567"]
        );
        assert!(is_temp_name(temp_name(Path::new("/x/name")).file_name().unwrap().as_bytes()));
        let _ = std::fs::remove_dir_all(&d);
    }
}
