//! Checkpoint of the calling process at a call point: the dump half of process migration
//! (VMADump's job, done from inside the process instead of the kernel).
//!
//! [`checkpoint`] saves the callee-saved registers on the stack (a `setjmp` made of a few
//! lines of assembly), then writes the whole process to an fd as a `bproc-image`: its memory
//! regions (only the pages it touched; libraries on the library list by reference, with just
//! the pages it changed), signal state, rseq, robust list, memory layout fields, auxiliary
//! vector, limits and regular open files. It returns twice in effect: once here, having
//! written the image, and once in every process restored from it ([`crate::restore`]).
//!
//! From the moment it starts writing pages it allocates nothing, so the heap it saves is the
//! heap it resumes with.
//!
//! What cannot travel is handled as BProc did: fds 3 and up that are not files on a disk
//! (pipes, sockets, event, timer and signal fds, epoll, FIFOs, terminals, deleted files) are
//! left out, so the restored copy has them closed; shared file mappings that are read-only go
//! by reference (when the target has the file) or by content, as private mappings, and
//! writable shared mappings become private copies. With [`DumpOptions::strict`] each of these
//! is refused instead. A refusal is `EBUSY` before anything is written, and its message names
//! the cause (`fd 7: a connected TCP socket`).
//!
//! Other threads are held still while the dump is written (`crate::threads`: each is
//! signalled and waits in the handler, having saved its registers, FPU state, signal mask,
//! thread pointer, alternate stack, robust list and tid address), and go into the image, to
//! be made again by the restore. A thread that does not stop (it blocks the signal) is a
//! refusal naming it.

use std::ffi::c_void;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::panic::AssertUnwindSafe;

use bproc_image::{
    Chunk, Header, Machine, MmFields, OpenFile, Region, SigAction, Source, Special, HUGE_PAGE,
    MAX_CHUNK, PAGE,
};
use nix::libc;
use nix::sys::uio::{process_vm_readv, RemoteIoVec};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::io::IoSliceMut;
use thiserror::Error;

/// Why a process could not be dumped or restored.
#[derive(Debug, Error)]
pub enum CkptError {
    /// The process holds something that cannot move (`EBUSY`).
    #[error("cannot move this process: {0}")]
    Busy(String),
    /// The image was made on a different machine (kernel, CPU, architecture).
    #[error("cannot restore here: {0}")]
    Machine(String),
    /// A path in the image cannot be given to the kernel: too long, or with a NUL (`EINVAL`).
    #[error("cannot restore a path: {0}")]
    Path(String),
    /// The image is damaged.
    #[error(transparent)]
    Image(#[from] bproc_image::ReadError),
    /// A system call failed.
    #[error("{what}: {source}")]
    Sys {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
}

impl CkptError {
    /// The errno that stands for it.
    pub fn errno(&self) -> i32 {
        match self {
            CkptError::Busy(_) => libc::EBUSY,
            CkptError::Machine(_) => libc::ENOEXEC,
            CkptError::Path(_) => libc::EINVAL,
            CkptError::Image(bproc_image::ReadError::Io(e)) => {
                e.raw_os_error().unwrap_or(libc::EIO)
            }
            CkptError::Image(_) => libc::EINVAL,
            CkptError::Sys { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
        }
    }

    pub(crate) fn sys(what: impl Into<String>, source: std::io::Error) -> Self {
        CkptError::Sys { what: what.into(), source }
    }
}

/// Which return of [`checkpoint`] this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resumed {
    /// The original process: the image was written.
    Dumped,
    /// A process restored from the image, with the value its restorer gave (≥ 1).
    Restored(i64),
}

/// What a dump leaves out or sends by reference.
pub struct DumpOptions<'a> {
    /// Whether a file is on the library list: its private mappings are sent by reference
    /// (the restoring machine has the same file at the same path).
    pub by_ref: &'a dyn Fn(&str) -> bool,
    /// Fds the dump neither carries nor refuses (the image's own fd, a connection the caller
    /// closes in the restored copy).
    pub skip_fds: &'a [RawFd],
    /// A writable buffer (address, length) for the restorer's note ([`Header::mailbox`]).
    pub mailbox: Option<(u64, u32)>,
    /// Refuse (`EBUSY`) what would not move unchanged: fds that would be closed, writable
    /// shared mappings that would become private. By default they are closed and made
    /// private, as BProc did.
    pub strict: bool,
}

// The call point. `bproc_ckpt_enter(callback, ctx)` pushes the callee-saved registers and
// the SSE and x87 control words, then calls `callback(ctx, rsp)`: `rsp` is all a restorer
// needs to come back here, through `bproc_ckpt_resume`, which pops them and returns its
// `rax` (set by the restorer) to `bproc_ckpt_enter`'s caller.
std::arch::global_asm!(
    ".text",
    ".p2align 4",
    ".globl bproc_ckpt_enter",
    ".type bproc_ckpt_enter,@function",
    "bproc_ckpt_enter:",
    "push rbp",
    "push rbx",
    "push r12",
    "push r13",
    "push r14",
    "push r15",
    "sub rsp, 8",
    "stmxcsr [rsp]",
    "fnstcw [rsp + 4]",
    "mov rax, rdi",
    "mov rdi, rsi",
    "mov rsi, rsp",
    "call rax",
    "add rsp, 8",
    "pop r15",
    "pop r14",
    "pop r13",
    "pop r12",
    "pop rbx",
    "pop rbp",
    "ret",
    ".size bproc_ckpt_enter, . - bproc_ckpt_enter",
    ".globl bproc_ckpt_resume",
    ".type bproc_ckpt_resume,@function",
    "bproc_ckpt_resume:",
    "ldmxcsr [rsp]",
    "fldcw [rsp + 4]",
    "add rsp, 8",
    "pop r15",
    "pop r14",
    "pop r13",
    "pop r12",
    "pop rbx",
    "pop rbp",
    "ret",
    ".size bproc_ckpt_resume, . - bproc_ckpt_resume",
);

extern "C" {
    fn bproc_ckpt_enter(callback: extern "C" fn(*mut c_void, u64) -> i64, ctx: *mut c_void) -> i64;
    fn bproc_ckpt_resume();
}

struct Ctx<'a> {
    out: RawFd,
    opts: &'a DumpOptions<'a>,
    /// The other threads, held, and the tid slot ([`Header::tid_slot`]).
    threads: (Vec<bproc_image::Thread>, u32),
    result: Option<Result<(), CkptError>>,
}

extern "C" fn dump_entry(ctx: *mut c_void, rsp: u64) -> i64 {
    // SAFETY: `checkpoint` passes a live `Ctx` it does not touch until this returns.
    let ctx = unsafe { &mut *ctx.cast::<Ctx<'_>>() };
    let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
        dump(ctx.out, ctx.opts, &Target::Me { rsp }, &ctx.threads)
    }));
    ctx.result = Some(r.unwrap_or_else(|_| Err(CkptError::Busy("the dumper panicked".into()))));
    0
}

/// Writes the calling process to `out` as a process image. Returns [`Resumed::Dumped`] here,
/// and [`Resumed::Restored`] in each process restored from the image. Flush buffered output
/// first, or the restored copies write it again.
pub fn checkpoint(out: BorrowedFd<'_>, opts: &DumpOptions<'_>) -> Result<Resumed, CkptError> {
    crate::threads::cache_rseq();
    let frozen = crate::threads::Frozen::hold()?;
    let threads = frozen.as_ref().map(|f| f.threads()).unwrap_or_default();
    let mut ctx = Ctx { out: out.as_raw_fd(), opts, threads, result: None };
    // SAFETY: `dump_entry` matches the callback's ABI and gets `ctx` back; the assembly keeps
    // the C ABI (callee-saved registers, 16-byte stack alignment at the call).
    let r = unsafe { bproc_ckpt_enter(dump_entry, (&mut ctx as *mut Ctx<'_>).cast()) };
    if r > 0 {
        // A restored copy: its `ctx` holds what the dump saw before it finished; its other
        // threads were made again where they were before they were held.
        if let Some(f) = frozen {
            f.thaw(true);
        }
        return Ok(Resumed::Restored(r));
    }
    if let Some(f) = frozen {
        f.thaw(false);
    }
    ctx.result.take().unwrap_or(Ok(()))?;
    Ok(Resumed::Dumped)
}

/// Whose state a dump reads: this process at its call point, or a child stopped by
/// ptrace at its first instruction after `execve` ([`exec_dump`]).
enum Target {
    Me { rsp: u64 },
    Exec { pid: i32, regs: Box<libc::user_regs_struct> },
}

impl Target {
    /// `/proc/self/NAME` or `/proc/PID/NAME`.
    fn proc(&self, name: &str) -> String {
        match self {
            Target::Me { .. } => format!("/proc/self/{name}"),
            Target::Exec { pid, .. } => format!("/proc/{pid}/{name}"),
        }
    }

    fn pid(&self) -> i32 {
        match self {
            Target::Me { .. } => std::process::id() as i32,
            Target::Exec { pid, .. } => *pid,
        }
    }
}

/// Runs `path` with `argv` and `envp` in a child stopped by ptrace before the new program's
/// first instruction, writes that process to `out` as an image, and kills the child
/// (BProc's `bproc_execdump`). A process restored from the image starts the program from its
/// entry point, with these arguments and environment. The child inherits this process's fds
/// but those in `opts.skip_fds` and the close-on-exec ones, and they are checked as for
/// [`checkpoint`] (`EBUSY` for sockets and pipes at fds 3 and up). If the exec fails, its
/// errno (`ENOENT`, `EACCES`...) is returned.
pub fn exec_dump(
    out: BorrowedFd<'_>,
    opts: &DumpOptions<'_>,
    path: &std::ffi::CStr,
    argv: &[std::ffi::CString],
    envp: &[std::ffi::CString],
) -> Result<(), CkptError> {
    use std::ffi::c_char;
    let argp: Vec<*const c_char> =
        argv.iter().map(|a| a.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();
    let envpp: Vec<*const c_char> =
        envp.iter().map(|a| a.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();
    let mut report = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two fds into the array.
    if unsafe { libc::pipe2(report.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(CkptError::sys("pipe2", std::io::Error::last_os_error()));
    }
    // SAFETY: the child only makes async-signal-safe calls (close, ptrace, execve, write,
    // _exit) on memory prepared before the fork.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: as above; the pointers stay valid in the child's copy of memory.
        unsafe {
            for fd in opts.skip_fds {
                libc::close(*fd);
            }
            libc::close(report[0]);
            if nix::sys::ptrace::traceme().is_ok() {
                libc::execve(path.as_ptr(), argp.as_ptr(), envpp.as_ptr());
            }
            let e = *libc::__errno_location();
            libc::write(report[1], (&e as *const i32).cast(), 4);
            libc::_exit(127);
        }
    }
    // SAFETY: closes our copy of the write end, which nothing else uses.
    unsafe { libc::close(report[1]) };
    // SAFETY: takes ownership of the read end.
    let report =
        unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(report[0]) };
    if pid < 0 {
        return Err(CkptError::sys("fork", std::io::Error::last_os_error()));
    }
    let child = Child(pid);
    let what = path.to_string_lossy();
    let stopped = loop {
        match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::__WALL)) {
            Err(nix::Error::EINTR) => {}
            Err(e) => {
                return Err(CkptError::sys(format!("waiting for {what} to start"), e.into()));
            }
            Ok(s) => {
                break matches!(
                    s,
                    WaitStatus::Stopped(..)
                        | WaitStatus::PtraceEvent(..)
                        | WaitStatus::PtraceSyscall(_)
                )
            }
        }
    };
    if !stopped {
        std::mem::forget(child); // reaped already
        let mut e = [0u8; 4];
        let n = nix::unistd::read(report.as_raw_fd(), &mut e).unwrap_or(0);
        let errno = if n == 4 { i32::from_ne_bytes(e) } else { libc::ECHILD };
        return Err(CkptError::sys(
            format!("cannot run {what}"),
            std::io::Error::from_raw_os_error(errno),
        ));
    }
    let regs = nix::sys::ptrace::getregs(Pid::from_raw(pid))
        .map_err(|e| CkptError::sys("PTRACE_GETREGS", e.into()))?;
    dump(out.as_raw_fd(), opts, &Target::Exec { pid, regs: Box::new(regs) }, &(Vec::new(), 0))
}

/// A traced child, killed and reaped when dropped.
struct Child(i32);

impl Drop for Child {
    fn drop(&mut self) {
        // Our own child, which nothing else waits for.
        let _ = nix::sys::signal::kill(Pid::from_raw(self.0), nix::sys::signal::Signal::SIGKILL);
        let _ = waitpid(Pid::from_raw(self.0), Some(WaitPidFlag::__WALL));
    }
}

/// One line of `/proc/PID/maps`.
pub(crate) struct MapLine {
    pub start: u64,
    pub end: u64,
    pub perms: [u8; 4],
    pub offset: u64,
    pub inode: u64,
    pub name: String,
}

pub(crate) fn parse_maps(text: &str) -> Vec<MapLine> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.splitn(6, ' ');
            let (range, perms, offset, _dev, inode) =
                (f.next()?, f.next()?, f.next()?, f.next()?, f.next()?);
            let name = f.next().unwrap_or("").trim_start().to_owned();
            let (s, e) = range.split_once('-')?;
            Some(MapLine {
                start: u64::from_str_radix(s, 16).ok()?,
                end: u64::from_str_radix(e, 16).ok()?,
                perms: perms.as_bytes().try_into().ok()?,
                offset: u64::from_str_radix(offset, 16).ok()?,
                inode: inode.parse().ok()?,
                name,
            })
        })
        .collect()
}

fn prot_of(perms: &[u8; 4]) -> u8 {
    use bproc_image::prot::{EXEC, READ, WRITE};
    (if perms[0] == b'r' { READ } else { 0 })
        | (if perms[1] == b'w' { WRITE } else { 0 })
        | (if perms[2] == b'x' { EXEC } else { 0 })
}

/// The machine as an image records it: architecture, kernel release, vDSO and CPU hashes.
/// Worked out once per process (a daemon's threads that enter another pid namespace's
/// `/proc` can no longer see their own).
pub fn this_machine() -> Result<Machine, CkptError> {
    static MACHINE: std::sync::OnceLock<Machine> = std::sync::OnceLock::new();
    if let Some(m) = MACHINE.get() {
        return Ok(m.clone());
    }
    let m = describe_machine()?;
    Ok(MACHINE.get_or_init(|| m).clone())
}

fn describe_machine() -> Result<Machine, CkptError> {
    use sha2::{Digest, Sha256};
    let uts = nix::sys::utsname::uname().map_err(|e| CkptError::sys("uname", e.into()))?;
    let maps = std::fs::read_to_string("/proc/self/maps")
        .map_err(|e| CkptError::sys("/proc/self/maps", e))?;
    let mut vdso = Sha256::new();
    for m in parse_maps(&maps).iter().filter(|m| m.name == "[vdso]") {
        // SAFETY: the vDSO is mapped readable for this process's whole life.
        vdso.update(unsafe {
            std::slice::from_raw_parts(m.start as *const u8, (m.end - m.start) as usize)
        });
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags = cpuinfo.lines().find(|l| l.starts_with("flags")).unwrap_or("");
    Ok(Machine {
        arch: uts.machine().to_string_lossy().into_owned(),
        kernel: uts.release().to_string_lossy().into_owned(),
        vdso_hash: vdso.finalize().into(),
        cpu_hash: Sha256::digest(flags.as_bytes()).into(),
    })
}

/// The kernel's `struct sigaction` on x86-64.
#[repr(C)]
#[derive(Default, Clone, Copy)]
pub(crate) struct KSigAction {
    pub handler: u64,
    pub flags: u64,
    pub restorer: u64,
    pub mask: u64,
}

fn sigactions() -> Vec<SigAction> {
    let mut out = Vec::new();
    for sig in 1..=64u8 {
        if sig == libc::SIGKILL as u8 || sig == libc::SIGSTOP as u8 {
            continue;
        }
        let mut old = KSigAction::default();
        // SAFETY: reads the disposition into a correctly sized kernel struct; no change.
        let r = unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                libc::c_long::from(sig),
                std::ptr::null::<KSigAction>(),
                &mut old as *mut KSigAction,
                8usize,
            )
        };
        if r == 0 && old.handler != 0 {
            out.push(SigAction {
                signal: sig,
                handler: old.handler,
                flags: old.flags,
                restorer: old.restorer,
                mask: old.mask,
            });
        }
    }
    out
}

/// glibc's registered rseq area (`__rseq_offset` from the thread pointer, `__rseq_size`), if
/// it registered one.
/// (Read before any thread is held: `crate::threads::cache_rseq`.)
fn rseq(fs_base: u64) -> (u64, u32, u32) {
    let (off, size) = crate::threads::cached_rseq();
    if size == 0 {
        return (0, 0, 0);
    }
    (fs_base.wrapping_add(off as u64), size.max(32), 0x5305_3053)
}

fn mm_fields(t: &Target) -> Result<MmFields, CkptError> {
    let path = t.proc("stat");
    let stat = std::fs::read_to_string(&path).map_err(|e| CkptError::sys(path, e))?;
    let st = bproc_sys::peer::Stat::parse(&stat);
    // Fields after the name, 0-based (proc(5)'s numbers less 3): startcode 23, endcode 24,
    // startstack 25, start_data 42, end_data 43, start_brk 44, arg_start 45, arg_end 46,
    // env_start 47, env_end 48.
    let at = |i: usize| st.as_ref().and_then(|s| s.num::<u64>(i + 3)).unwrap_or(0);
    let brk = match t {
        // SAFETY: brk(0) only reports the current break.
        Target::Me { .. } => (unsafe { libc::syscall(libc::SYS_brk, 0usize) }) as u64,
        // Right after execve the break is where the heap starts.
        Target::Exec { .. } => at(44),
    };
    Ok(MmFields {
        start_code: at(23),
        end_code: at(24),
        start_stack: at(25),
        start_data: at(42),
        end_data: at(43),
        start_brk: at(44),
        brk,
        arg_start: at(45),
        arg_end: at(46),
        env_start: at(47),
        env_end: at(48),
    })
}

fn open_files(opts: &DumpOptions<'_>, t: &Target) -> Result<Vec<OpenFile>, CkptError> {
    let dir = t.proc("fd");
    let mut fds: Vec<i32> = std::fs::read_dir(&dir)
        .map_err(|e| CkptError::sys(dir.clone(), e))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    fds.sort_unstable();
    let mut out = Vec::new();
    for fd in fds.into_iter().filter(|fd| *fd > 2 && !opts.skip_fds.contains(fd)) {
        // The directory listing's own fd is gone by now.
        let Ok(target) = std::fs::read_link(format!("{dir}/{fd}")) else { continue };
        let target = target.to_string_lossy().into_owned();
        // A target made by `exec_dump` inherited this process's fd at the same number.
        if let Some(what) = cannot_travel(fd, &target, &format!("{dir}/{fd}")) {
            if opts.strict {
                return Err(CkptError::Busy(format!("fd {fd}: {what}")));
            }
            continue;
        }
        let info = std::fs::read_to_string(t.proc(&format!("fdinfo/{fd}"))).unwrap_or_default();
        let field = |name: &str, radix: u32| {
            info.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| u64::from_str_radix(v.trim(), radix).ok())
                .unwrap_or(0)
        };
        let flags = field("flags:", 8) as i32 & !(libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC);
        out.push(OpenFile { fd, path: target, flags, offset: field("pos:", 10) });
    }
    Ok(out)
}

/// Why fd `fd` (its `/proc` link reads `target`; `link` is that link) cannot be opened again
/// elsewhere by path, or `None` for a file on a disk (regular file, directory, or a device
/// other than a terminal). The kind of a socket is read from this process's fd of the same
/// number, which is the same socket.
pub(crate) fn cannot_travel(fd: RawFd, target: &str, link: &str) -> Option<String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    if target.starts_with("socket:") {
        return Some(socket_kind(fd));
    }
    if target.starts_with("pipe:") {
        return Some("a pipe".into());
    }
    if let Some(kind) = target.strip_prefix("anon_inode:") {
        let kind = kind.trim_start_matches('[').trim_end_matches(']');
        return Some(match kind {
            "eventfd" => "an eventfd".into(),
            "eventpoll" => "an epoll instance".into(),
            "timerfd" => "a timerfd".into(),
            "signalfd" => "a signalfd".into(),
            "inotify" => "an inotify instance".into(),
            "pidfd" => "a pidfd".into(),
            other => format!("a kernel object ({other})"),
        });
    }
    if target.starts_with("/memfd:") {
        return Some(format!("a memfd ({})", target.trim_end_matches(" (deleted)")));
    }
    if target.ends_with(" (deleted)") {
        return Some(format!("a deleted file ({target})"));
    }
    if !target.starts_with('/') {
        return Some(format!("a kernel object ({target})"));
    }
    let st = std::fs::metadata(link).ok()?;
    let ft = st.file_type();
    if ft.is_fifo() {
        return Some(format!("a FIFO ({target})"));
    }
    if ft.is_socket() {
        return Some(format!("a socket ({target})"));
    }
    if ft.is_char_device() {
        // Terminals: the console and virtual terminals (4), /dev/tty and ptmx (5), and
        // pseudo-terminals (136 to 143). A node's are other devices.
        let major = nix::sys::stat::major(st.rdev());
        if major == 4 || major == 5 || (136..=143).contains(&major) {
            return Some(format!("a terminal ({target})"));
        }
    }
    None
}

/// What kind of socket fd `fd` is, in words: "a connected TCP socket", "a Unix socket".
fn socket_kind(fd: RawFd) -> String {
    let opt = |name: libc::c_int| {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into a local int.
        let r = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                name,
                (&mut v as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        (r == 0).then_some(v)
    };
    let (Some(domain), Some(kind)) = (opt(libc::SO_DOMAIN), opt(libc::SO_TYPE)) else {
        return "a socket".into();
    };
    let listening = opt(libc::SO_ACCEPTCONN) == Some(1);
    let mut addr = zeroed_storage();
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: getpeername writes at most `len` bytes into a local sockaddr_storage.
    let connected = unsafe {
        libc::getpeername(fd, (&mut addr as *mut libc::sockaddr_storage).cast(), &mut len)
    } == 0;
    let family = match domain {
        libc::AF_INET | libc::AF_INET6 => match kind {
            libc::SOCK_STREAM => "TCP",
            libc::SOCK_DGRAM => "UDP",
            _ => "IP",
        },
        libc::AF_UNIX => "Unix",
        libc::AF_NETLINK => "netlink",
        libc::AF_PACKET => "packet",
        _ => "",
    };
    let state = if listening {
        "listening "
    } else if connected {
        "connected "
    } else {
        ""
    };
    if family.is_empty() {
        format!("a {state}socket of family {domain}")
    } else {
        format!("a {state}{family} socket")
    }
}

fn zeroed_storage() -> libc::sockaddr_storage {
    // SAFETY: sockaddr_storage is plain old data, for which all zeroes is a valid value.
    unsafe { std::mem::zeroed() }
}

fn regions(opts: &DumpOptions<'_>, t: &Target) -> Result<(Vec<Region>, Vec<Special>), CkptError> {
    use std::os::unix::fs::MetadataExt;
    let path = t.proc("maps");
    let maps = std::fs::read_to_string(&path).map_err(|e| CkptError::sys(path, e))?;
    let mut regions = Vec::new();
    let mut specials = Vec::new();
    for m in parse_maps(&maps) {
        if m.name == "[vsyscall]" {
            continue;
        }
        if m.name.starts_with("[vdso") || m.name.starts_with("[vvar") {
            specials.push(Special { name: m.name, start: m.start, end: m.end });
            continue;
        }
        let shared = m.perms[3] == b's';
        if shared && m.perms[1] == b'w' && opts.strict {
            return Err(CkptError::Busy(format!(
                "shared mapping {:#x}-{:#x} {}: writable shared memory would become private",
                m.start, m.end, m.name
            )));
        }
        let source = if m.name.starts_with('/') {
            let on_list = (opts.by_ref)(&m.name);
            match std::fs::metadata(&m.name) {
                // A writable shared mapping becomes a private copy of its contents: mapped
                // privately from the file, it would read the file's later changes.
                Ok(st)
                    if on_list
                        && st.ino() == m.inode
                        && !m.name.ends_with(" (deleted)")
                        && !(shared && m.perms[1] == b'w') =>
                {
                    Source::File {
                        path: m.name.clone(),
                        offset: m.offset,
                        size: st.size(),
                        mtime: (st.mtime(), st.mtime_nsec() as u32),
                    }
                }
                _ => Source::Copied { path: m.name.clone() },
            }
        } else if shared {
            // Shared anonymous memory (`/dev/zero`, SysV) is named like a file; here it
            // has no name at all: a private copy of every page.
            Source::Copied { path: String::new() }
        } else {
            Source::Anonymous
        };
        regions.push(Region {
            start: m.start,
            end: m.end,
            prot: prot_of(&m.perms),
            stack: m.name == "[stack]",
            source,
        });
    }
    Ok((regions, specials))
}

fn header(
    opts: &DumpOptions<'_>,
    t: &Target,
    threads: &(Vec<bproc_image::Thread>, u32),
) -> Result<Header, CkptError> {
    if let Ok(tasks) = std::fs::read_dir(t.proc("task")) {
        let me = match t {
            // SAFETY: gettid cannot fail.
            Target::Me { .. } => unsafe { libc::gettid() },
            Target::Exec { pid, .. } => *pid,
        };
        let tids: Vec<i32> =
            tasks.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect();
        let missing = tids
            .iter()
            .find(|&&tid| tid != me && !threads.0.iter().any(|th| th.tid == tid))
            .copied();
        if let Some(other) = missing {
            return Err(CkptError::Busy(format!(
                "thread {other} (one of {} threads) was not held for the dump",
                tids.len()
            )));
        }
    }
    let files = open_files(opts, t)?;
    let (regions, specials) = regions(opts, t)?;
    let text =
        |p: &str| std::fs::read_to_string(t.proc(p)).unwrap_or_default().trim_end().to_owned();
    let link = |p: &str| std::fs::read_link(t.proc(p)).map(|l| l.to_string_lossy().into_owned());
    let state = match t {
        Target::Me { rsp } => my_state(*rsp),
        Target::Exec { pid, regs } => exec_state(*pid, regs, &text("status"), &text("personality")),
    };
    let auxv_bytes = std::fs::read(t.proc("auxv")).unwrap_or_default();
    let mut auxv = Vec::new();
    for pair in auxv_bytes.chunks_exact(16) {
        let k = u64::from_ne_bytes(pair[..8].try_into().expect("8 bytes"));
        let v = u64::from_ne_bytes(pair[8..].try_into().expect("8 bytes"));
        if k == 0 {
            break;
        }
        auxv.push((k, v));
    }
    let rlimits = (0..16u32)
        .filter_map(|r| {
            let mut l = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            // SAFETY: prlimit with no new limit writes one rlimit.
            let got = unsafe { libc::prlimit(t.pid(), r as _, std::ptr::null(), &mut l) };
            (got == 0).then_some((r, l.rlim_cur, l.rlim_max))
        })
        .collect();
    Ok(Header {
        machine: this_machine()?,
        pid: t.pid(),
        comm: text("comm"),
        exe: link("exe").unwrap_or_default(),
        cwd: link("cwd").unwrap_or_else(|_| "/".into()),
        umask: state.umask,
        rsp: state.rsp,
        rip: state.rip,
        fs_base: state.fs_base,
        gs_base: state.gs_base,
        sigmask: state.sigmask,
        sigactions: state.sigactions,
        altstack: state.altstack,
        rseq: state.rseq,
        robust_list: state.robust_list,
        tid_address: state.tid_address,
        personality: state.personality,
        mailbox: opts.mailbox.unwrap_or((0, 0)),
        mm: mm_fields(t)?,
        auxv,
        rlimits,
        specials,
        files,
        regions,
        threads: threads.0.clone(),
        tid_slot: threads.1,
    })
}

/// The per-thread and signal state of a dump.
struct State {
    umask: u32,
    rsp: u64,
    rip: u64,
    fs_base: u64,
    gs_base: u64,
    sigmask: u64,
    sigactions: Vec<SigAction>,
    altstack: (u64, i32, u64),
    rseq: (u64, u32, u32),
    robust_list: (u64, u64),
    tid_address: u64,
    personality: u32,
}

/// This process's state, to resume at `bproc_ckpt_resume` with stack pointer `rsp`.
fn my_state(rsp: u64) -> State {
    let mut fs_base = 0u64;
    let mut gs_base = 0u64;
    let mut sigmask = 0u64;
    let mut robust = (0u64, 0u64);
    let mut tid_address = 0u64;
    // SAFETY: each call writes one value of the given type into a local.
    let (altstack, personality, umask) = unsafe {
        libc::syscall(libc::SYS_arch_prctl, 0x1003, &mut fs_base as *mut u64); // ARCH_GET_FS
        libc::syscall(libc::SYS_arch_prctl, 0x1004, &mut gs_base as *mut u64); // ARCH_GET_GS
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_BLOCK,
            std::ptr::null::<u64>(),
            &mut sigmask as *mut u64,
            8usize,
        );
        libc::syscall(
            libc::SYS_get_robust_list,
            0,
            &mut robust.0 as *mut u64,
            &mut robust.1 as *mut u64,
        );
        libc::prctl(libc::PR_GET_TID_ADDRESS, &mut tid_address as *mut u64);
        let mut ss: libc::stack_t = std::mem::zeroed();
        libc::sigaltstack(std::ptr::null(), &mut ss);
        let umask = libc::umask(0o022);
        libc::umask(umask);
        ((ss.ss_sp as u64, ss.ss_flags, ss.ss_size as u64), libc::personality(0xffff_ffff), umask)
    };
    State {
        umask,
        rsp,
        rip: bproc_ckpt_resume as *const () as usize as u64,
        fs_base,
        gs_base,
        sigmask,
        sigactions: sigactions(),
        altstack,
        rseq: rseq(fs_base),
        robust_list: robust,
        tid_address,
        personality: personality as u32,
    }
}

/// The state of child `pid`, stopped by ptrace right after `execve` with registers `regs`:
/// `status` and `personality` are its `/proc` files. A new program has no handlers (only
/// ignored signals stay ignored), no alternate stack, rseq, robust list or tid address yet.
fn exec_state(pid: i32, regs: &libc::user_regs_struct, status: &str, personality: &str) -> State {
    let field = |name: &str, radix: u32| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| u64::from_str_radix(v.trim(), radix).ok())
            .unwrap_or(0)
    };
    let mut sigmask = 0u64;
    // nix has no wrapper for PTRACE_GETSIGMASK.
    // SAFETY: PTRACE_GETSIGMASK writes 8 bytes into a local; `pid` is our stopped tracee.
    if unsafe { libc::ptrace(libc::PTRACE_GETSIGMASK, pid, 8, &mut sigmask as *mut u64) } != 0 {
        sigmask = field("SigBlk:", 16);
    }
    let ignored = field("SigIgn:", 16);
    let sigactions = (1..=64u8)
        .filter(|s| ignored & (1 << (s - 1)) != 0)
        .map(|signal| SigAction {
            signal,
            handler: libc::SIG_IGN as u64,
            flags: 0,
            restorer: 0,
            mask: 0,
        })
        .collect();
    State {
        umask: field("Umask:", 8) as u32,
        rsp: regs.rsp,
        rip: regs.rip,
        fs_base: regs.fs_base,
        gs_base: regs.gs_base,
        sigmask,
        sigactions,
        altstack: (0, libc::SS_DISABLE, 0),
        rseq: (0, 0, 0),
        robust_list: (0, 0),
        tid_address: 0,
        personality: u32::from_str_radix(personality.trim(), 16).unwrap_or(0),
    }
}

/// Writes all of `buf` to `fd` with raw system calls (no allocation).
fn write_all(fd: RawFd, mut buf: &[u8]) -> Result<(), CkptError> {
    while !buf.is_empty() {
        // SAFETY: writes from a valid slice.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(CkptError::sys("writing the image", e));
        }
        buf = &buf[n as usize..];
    }
    Ok(())
}

/// Whether `h` lists the heap of a process whose break is `now`: the break it read is that
/// one, and the region holding the heap reaches it.
fn heap_listed(h: &Header, now: u64) -> bool {
    let (start, brk) = (h.mm.start_brk, h.mm.brk);
    let heap_end = h.regions.iter().find(|r| r.start <= start && start < r.end).map(|r| r.end);
    now == brk && (brk <= start || heap_end.is_some_and(|e| e >= brk.next_multiple_of(PAGE)))
}

/// Which pages of a region the image carries, from `/proc/self/pagemap`: those present or
/// swapped; in a mapping by reference, only those no longer the file's (copied on write);
/// in a copied file mapping, every page.
fn wanted(source: &Source, entry: u64) -> bool {
    const PRESENT: u64 = 1 << 63;
    const SWAPPED: u64 = 1 << 62;
    const FILE_PAGE: u64 = 1 << 61;
    match source {
        Source::Copied { .. } => true,
        Source::File { .. } => entry & (PRESENT | SWAPPED) != 0 && entry & FILE_PAGE == 0,
        Source::Anonymous => entry & (PRESENT | SWAPPED) != 0,
    }
}

/// A buffer mapped outside the regions being saved, unmapped when dropped.
struct Bounce {
    ptr: *mut u8,
    len: usize,
}

impl Bounce {
    fn new(len: usize) -> Result<Bounce, CkptError> {
        // SAFETY: a fresh private anonymous mapping; the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(CkptError::sys("mapping a buffer", std::io::Error::last_os_error()));
        }
        Ok(Bounce { ptr: ptr.cast(), len })
    }
}

impl Drop for Bounce {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `new` mapped; nothing refers to it any more.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

fn dump(
    out: RawFd,
    opts: &DumpOptions<'_>,
    t: &Target,
    threads: &(Vec<bproc_image::Thread>, u32),
) -> Result<(), CkptError> {
    let open = |p: String| std::fs::File::open(&p).map_err(|e| CkptError::sys(p, e));
    let (pagemap, mem) = (open(t.proc("pagemap"))?, open(t.proc("mem"))?);
    // A process dumping itself holds these two while its fds are listed: they are the
    // dump's, not the process's.
    let skip: Vec<RawFd> = match t {
        Target::Me { .. } => [opts.skip_fds, &[pagemap.as_raw_fd(), mem.as_raw_fd()]].concat(),
        Target::Exec { .. } => opts.skip_fds.to_vec(),
    };
    let opts = &DumpOptions { skip_fds: &skip, ..*opts };
    // The dump's own allocations may grow the heap after its regions are listed; the
    // allocator's state, saved with the pages, would then count heap the image lacks. List
    // again until the heap holds still (it does once the allocator has what these need).
    let mut h = header(opts, t, threads)?;
    let mut head = h.encode();
    for _ in 0..8 {
        // SAFETY: brk(0) changes nothing and returns the current break.
        let now = || unsafe { libc::syscall(libc::SYS_brk, 0) } as u64;
        // A stopped child's heap never moves.
        if matches!(t, Target::Exec { .. }) || heap_listed(&h, now()) {
            break;
        }
        h = header(opts, t, threads)?;
        head = h.encode();
    }
    let pid = t.pid();
    // Pages are copied by the kernel (process_vm_readv) into a buffer mapped after the
    // regions were listed, so the dump never reads memory that Rust code may be using, and
    // the buffer is not part of the image.
    let bounce = Bounce::new(MAX_CHUNK as usize)?;
    // From here on, nothing allocates: the heap being saved stays as it was.
    write_all(out, &head)?;
    let mut chunks = 0u32;
    let mut entries = [0u64; 512];
    let max_pages = u64::from(MAX_CHUNK) / PAGE;
    // `zeros_implied`: the restore maps the region anonymous (it reads as zeros), so pages of
    // zeros need not travel.
    let mut write_chunk = |start: u64, pages: u64, readable: bool, zeros_implied: bool| {
        let len = (pages * PAGE) as usize;
        // SAFETY: the buffer is ours alone, mapped readable and writable, and holds
        // MAX_CHUNK ≥ len bytes; nothing else refers to it while this slice lives.
        let buf = unsafe { std::slice::from_raw_parts_mut(bounce.ptr, len) };
        // process_vm_readv is the fast path; /proc/PID/mem also reads pages that are not
        // readable.
        let got = if readable {
            let remote = RemoteIoVec { base: start as usize, len };
            process_vm_readv(Pid::from_raw(pid), &mut [IoSliceMut::new(buf)], &[remote])
        } else {
            nix::sys::uio::pread(&mem, buf, start as libc::off_t)
        };
        match got {
            Ok(n) if n == len => {}
            Ok(_) => {
                return Err(CkptError::sys(
                    format!("reading {start:#x}"),
                    std::io::Error::from_raw_os_error(libc::EFAULT),
                ))
            }
            Err(e) => return Err(CkptError::sys(format!("reading {start:#x}"), e.into())),
        }
        let data = &*buf;
        let page = PAGE as usize;
        // Stops at the first word that is not zero: a page of data costs next to nothing.
        let zero = |at: usize| {
            zeros_implied && data[at..at + page].chunks_exact(16).all(|w| w == [0u8; 16])
        };
        let mut at = 0;
        while at < len {
            if zero(at) {
                at += page;
                continue;
            }
            let mut end = at + page;
            while end < len && !zero(end) {
                end += page;
            }
            let run = &data[at..end];
            write_all(out, &Chunk::for_data(start + at as u64, run).encode())?;
            chunks += 1;
            write_all(out, run)?;
            at = end;
        }
        Ok::<(), CkptError>(())
    };
    for r in &h.regions {
        let readable = r.prot & bproc_image::prot::READ != 0;
        let zeros_implied = !matches!(r.source, Source::File { .. });
        let mut run: Option<(u64, u64)> = None; // (start, pages)
        let mut page = r.start;
        while page < r.end {
            let n = (((r.end - page) / PAGE) as usize).min(entries.len());
            let bytes = n * 8;
            // SAFETY: reads into the local array, at most its size.
            let got = unsafe {
                libc::pread(
                    pagemap.as_raw_fd(),
                    entries.as_mut_ptr().cast(),
                    bytes,
                    ((page / PAGE) * 8) as libc::off_t,
                )
            };
            if got != bytes as isize {
                return Err(CkptError::sys("reading pagemap", std::io::Error::last_os_error()));
            }
            for (i, e) in entries[..n].iter().enumerate() {
                let addr = page + i as u64 * PAGE;
                let take = wanted(&r.source, *e);
                // A long run is cut where a huge page starts, so that a restore reading the
                // image as a stream finds each huge page whole in one chunk.
                let cut_here = |k: u64| {
                    k >= max_pages
                        || (addr.is_multiple_of(HUGE_PAGE)
                            && k * PAGE + HUGE_PAGE > u64::from(MAX_CHUNK))
                };
                run = match (run, take) {
                    (Some((s, k)), true) if !cut_here(k) => Some((s, k + 1)),
                    (prev, take) => {
                        if let Some((s, k)) = prev {
                            write_chunk(s, k, readable, zeros_implied)?;
                        }
                        take.then_some((addr, 1))
                    }
                };
            }
            page += n as u64 * PAGE;
        }
        if let Some((s, k)) = run {
            write_chunk(s, k, readable, zeros_implied)?;
        }
    }
    write_all(out, &Chunk::End { chunks }.encode())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A heap that grew after the regions were listed, or after the break was read, is
    /// listed again.
    #[test]
    fn a_heap_short_of_the_break_is_listed_again() {
        let heap = |end: u64| Region {
            start: 0x5000_0000,
            end,
            prot: 3,
            stack: false,
            source: Source::Anonymous,
        };
        let mut h = Header { regions: vec![heap(0x5000_3000)], ..Default::default() };
        h.mm.start_brk = 0x5000_0000;
        h.mm.brk = 0x5000_2010;
        assert!(heap_listed(&h, 0x5000_2010));
        assert!(!heap_listed(&h, 0x5000_4000), "the break moved after it was read");
        h.regions = vec![heap(0x5000_2000)];
        assert!(!heap_listed(&h, 0x5000_2010), "the heap grew after the regions were listed");
        h.regions.clear();
        h.mm.brk = h.mm.start_brk;
        assert!(heap_listed(&h, h.mm.brk), "no heap yet");
    }

    #[test]
    fn maps_lines_parse() {
        let text = "55d0a000-55d0c000 r-xp 00002000 fd:01 1234   /usr/bin/cat\n\
                    7ffd1000-7ffd3000 rw-p 00000000 00:00 0      [stack]\n\
                    7f0000000000-7f0000001000 rw-p 00000000 00:00 0 \n";
        let m = parse_maps(text);
        assert_eq!(m.len(), 3);
        assert_eq!(
            (m[0].start, m[0].end, m[0].offset, m[0].inode),
            (0x55d0a000, 0x55d0c000, 0x2000, 1234)
        );
        assert_eq!(m[0].name, "/usr/bin/cat");
        assert_eq!(prot_of(&m[0].perms), 5);
        assert_eq!(m[1].name, "[stack]");
        assert_eq!(m[2].name, "");
    }

    #[test]
    fn a_thread_that_does_not_stop_is_named() {
        let (tx, rx) = std::sync::mpsc::channel::<i32>();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let other = std::thread::spawn(move || {
            // SAFETY: builds a signal set in a local and blocks it for this thread.
            unsafe {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, crate::threads::FREEZE_SIGNAL);
                libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            }
            // SAFETY: gettid cannot fail.
            let _ = tx.send(unsafe { libc::gettid() });
            let _ = done_rx.recv();
        });
        let tid = rx.recv().unwrap();
        let path = std::env::temp_dir().join(format!("bproc-ckpt-busy-{}", std::process::id()));
        let f = std::fs::File::create(&path).unwrap();
        let opts = DumpOptions { by_ref: &|_| true, skip_fds: &[], mailbox: None, strict: false };
        let e = checkpoint(f.as_fd(), &opts).unwrap_err();
        assert_eq!(e.errno(), libc::EBUSY, "{e}");
        assert!(e.to_string().contains(&format!("thread {tid} did not stop")), "{e}");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0, "nothing written");
        std::fs::remove_file(path).unwrap();
        drop(done_tx);
        let _ = other.join();
    }

    use std::os::fd::AsFd;
}
