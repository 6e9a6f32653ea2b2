//! Starting a remote process with `clone3`, so that it can take a chosen pid in the slave's
//! pid namespace (`set_tid`): the ghost's pid on the master. Also the namespace's init, which
//! reaps what the namespace's processes leave behind.
//!
//! The child of `clone3` is a copy of a multi-threaded daemon: until it calls `execve` it
//! makes only direct system calls on memory prepared before the clone (no allocation, no
//! locks), and reports a failure to the parent as an errno on a close-on-exec pipe.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::libc;

use crate::{FdFile, Identity, Jail, Limit};

/// Everything a new process needs; built by the caller, read by the child. The default is
/// nothing at all (no program, fds closed), to fill in with struct update syntax.
#[derive(Debug, Default)]
pub struct SpawnSpec {
    /// Program to run.
    pub path: CString,
    /// Its arguments, `argv[0]` first.
    pub argv: Vec<CString>,
    /// Its environment, `NAME=value`.
    pub envp: CStrings,
    /// Working directory (entered after the identity switch, with the caller's rights; `/`
    /// when it cannot be); ignored with a jail, which has its own.
    pub cwd: Option<CString>,
    /// Its fds 0, 1 and 2 (`None`: closed).
    pub stdio: [Option<OwnedFd>; 3],
    /// Further fds it gets, at these numbers, after `stdio` (at most [`MAX_FDS`]).
    pub fds: Vec<(i32, OwnedFd)>,
    /// Resource limits.
    pub limits: Vec<Limit>,
    /// Root to confine it to.
    pub jail: Option<Jail>,
    /// Who it runs as.
    pub identity: Option<Identity>,
    /// Its umask.
    pub umask: u32,
    /// Files opened onto its fds after the identity switch.
    pub files: Vec<FdFile>,
    /// The pid it must have in the calling thread's pid namespace for children.
    pub set_tid: Option<i32>,
    /// Traced by the calling thread from its first instruction (`PTRACE_TRACEME`): it stops
    /// with `SIGTRAP` after the exec.
    pub trace: bool,
    /// Every signal the calling process ignored when it first started a process with this
    /// set goes back to its default action in the child: a daemon started in the background
    /// of a script ignores SIGINT and SIGQUIT, which the processes it starts for others must
    /// not inherit. (SIGPIPE, which the Rust runtime ignores, always goes back.)
    pub default_signals: bool,
    /// The program as an open file, run with `execveat` (`AT_EMPTY_PATH`) rather than by
    /// `path`, which then only names it: no lookup, no `/proc` in a jail.
    pub exec_fd: Option<std::os::fd::RawFd>,
}

/// NUL-terminated strings in one buffer, as `execve` takes an environment: one allocation
/// for the dozens of strings of a launch's environment (made again for every rank a node
/// starts, where each string had been copied twice on the way), and together in memory for
/// the kernel's copy at the exec.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CStrings {
    buf: Vec<u8>,
    count: usize,
}

/// A string for [`CStrings`] that holds a NUL.
#[derive(Debug, thiserror::Error)]
#[error("NUL in {0:?}")]
pub struct InteriorNul(pub String);

impl CStrings {
    /// The strings each made of `N` parts one after the other (`NAME=` and a value, say).
    pub fn joined<'a, const N: usize>(
        items: impl IntoIterator<Item = [&'a str; N]>,
    ) -> Result<CStrings, InteriorNul> {
        let mut all = CStrings::default();
        for parts in items {
            all.push(&parts)?;
        }
        Ok(all)
    }

    /// Appends the string made of `parts` one after another; nothing when one holds a NUL.
    pub fn push(&mut self, parts: &[&str]) -> Result<(), InteriorNul> {
        if parts.iter().any(|p| p.as_bytes().contains(&0)) {
            return Err(InteriorNul(parts.concat()));
        }
        for p in parts {
            self.buf.extend_from_slice(p.as_bytes());
        }
        self.buf.push(0);
        self.count += 1;
        Ok(())
    }

    /// The strings, in order.
    pub fn iter(&self) -> impl Iterator<Item = &std::ffi::CStr> {
        self.buf.split_inclusive(|b| *b == 0).map(|s| {
            std::ffi::CStr::from_bytes_with_nul(s).expect("each string ends at its only NUL")
        })
    }

    /// A pointer to each string, then a null one (`execve`'s array, valid while `self` is
    /// neither changed nor dropped).
    fn pointers(&self) -> Vec<*const libc::c_char> {
        let mut out = Vec::with_capacity(self.count + 1);
        out.extend(self.iter().map(|s| s.as_ptr()));
        out.push(std::ptr::null());
        out
    }
}

/// Most further fds a [`SpawnSpec`] may carry.
pub const MAX_FDS: usize = 16;

/// `struct clone_args` of `<linux/sched.h>` (libc has it only for some targets), for
/// `clone3(2)` here and for the one a restore makes inside the restored process; padded with
/// zeros to [`CLONE3_SIZE`](crate::forkpid::CLONE3_SIZE), the size the slave's fork filter
/// lets through.
#[repr(C)]
#[derive(Default)]
pub struct CloneArgs {
    /// `CLONE_*` flags.
    pub flags: u64,
    /// Where the kernel stores a pidfd (`CLONE_PIDFD`).
    pub pidfd: u64,
    /// Where the child's tid goes in the child (`CLONE_CHILD_SETTID`).
    pub child_tid: u64,
    /// Where the child's tid goes in the parent (`CLONE_PARENT_SETTID`).
    pub parent_tid: u64,
    /// The signal the parent gets when the child ends.
    pub exit_signal: u64,
    /// Lowest address of the child's stack.
    pub stack: u64,
    /// Size of the child's stack.
    pub stack_size: u64,
    /// Thread-local storage (`CLONE_SETTLS`).
    pub tls: u64,
    /// Address of the tids to ask for, innermost namespace first.
    pub set_tid: u64,
    /// How many tids `set_tid` holds.
    pub set_tid_size: u64,
    /// A cgroup fd (`CLONE_INTO_CGROUP`).
    pub cgroup: u64,
    /// Zero: the padding to [`CLONE3_SIZE`](crate::forkpid::CLONE3_SIZE).
    pub pad: u64,
}

const _: () = assert!(std::mem::size_of::<CloneArgs>() == crate::forkpid::CLONE3_SIZE);

impl CloneArgs {
    /// The struct as `clone3` reads it, for a call another process makes.
    pub fn as_bytes(&self) -> &[u8] {
        // SAFETY: CloneArgs is plain old data (`repr(C)`, u64 fields, no padding); its bytes
        // live as long as the borrow.
        unsafe {
            std::slice::from_raw_parts(
                (self as *const CloneArgs).cast::<u8>(),
                std::mem::size_of::<CloneArgs>(),
            )
        }
    }
}

/// `clone3` with `args`: like `fork`, 0 in the child and the pid in the parent.
///
/// # Safety
/// The caller's child must keep to async-signal-safe work until it execs or exits.
pub(crate) unsafe fn clone3(args: &CloneArgs) -> nix::Result<i32> {
    // SAFETY (for the call itself): `args` is a live, fully initialised clone_args of the
    // size passed, and `set_tid` (when used) points at an i32 the caller keeps alive.
    let r =
        libc::syscall(libc::SYS_clone3, args as *const CloneArgs, std::mem::size_of::<CloneArgs>());
    if r < 0 {
        Err(nix::Error::last())
    } else {
        Ok(r as i32)
    }
}

/// Starts `spec` as a child of the calling process, in the calling thread's pid namespace for
/// children; returns its pid in the caller's own namespace. The child leads a new process
/// group and dies with SIGKILL when the calling thread exits. Call it from a thread that
/// blocks every signal: the child starts with that mask and clears it just before `exec`.
pub fn spawn(spec: &SpawnSpec) -> std::io::Result<i32> {
    if spec.fds.len() > MAX_FDS || spec.fds.iter().any(|(fd, _)| *fd < 0) {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    }
    let argv: Vec<*const libc::c_char> =
        spec.argv.iter().map(|a| a.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();
    let envp = spec.envp.pointers();
    let groups: Vec<libc::gid_t> =
        spec.identity.as_ref().map(|i| i.groups.clone()).unwrap_or_default();
    let tid: i32 = spec.set_tid.unwrap_or(0);
    let ignored = if spec.default_signals { ignored_signals() } else { 0 };
    let mut ctx =
        ChildCtx { spec, argv: &argv, envp: &envp, groups: &groups, ignored, errno: 0, step: 0 };
    // The child shares this memory and runs on its own stack until it execs, while this
    // thread waits (vfork): no page tables are copied, which on a daemon of some size costs
    // more than the rest of a start. Its memory need not be cleared (64 KiB a start).
    let mut stack = SPARE_STACK.take();
    if stack.capacity() < CHILD_STACK {
        stack = Vec::with_capacity(CHILD_STACK);
    }
    let args = CloneArgs {
        flags: (libc::CLONE_VM | libc::CLONE_VFORK) as u64,
        exit_signal: libc::SIGCHLD as u64,
        stack: stack.as_mut_ptr() as u64,
        stack_size: CHILD_STACK as u64,
        set_tid: if spec.set_tid.is_some() { &tid as *const i32 as u64 } else { 0 },
        set_tid_size: u64::from(spec.set_tid.is_some()),
        ..Default::default()
    };
    // SAFETY: the child runs `child_entry` on `stack`, reading `ctx` (alive until this call
    // returns, which happens only once the child has exec'd or exited) and writing only its
    // `errno`; it makes direct system calls only and never returns.
    let pid = unsafe { clone3_entry(&args, child_entry, (&mut ctx as *mut ChildCtx).cast()) };
    SPARE_STACK.set(stack);
    if pid < 0 {
        return Err(std::io::Error::from_raw_os_error(-pid as i32));
    }
    // SAFETY: the child has exec'd or exited; nothing else writes `errno` or `step` now.
    let (errno, step) =
        unsafe { (std::ptr::read_volatile(&ctx.errno), std::ptr::read_volatile(&ctx.step)) };
    if errno != 0 {
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid as i32), None);
        let step = match step {
            STEP_SETUP => SpawnStep::Setup,
            STEP_ROOT => SpawnStep::Root,
            STEP_IDENTITY => SpawnStep::Identity,
            STEP_EXEC => SpawnStep::Exec,
            i => SpawnStep::File((i - STEP_FILE) as usize),
        };
        let kind = std::io::Error::from_raw_os_error(errno).kind();
        return Err(std::io::Error::new(kind, SpawnFailed { step, errno }));
    }
    Ok(pid as i32)
}

/// The step at which the child of [`spawn`] failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpawnStep {
    /// Its own setup (process group, fds, tracing).
    Setup,
    /// Entering the jail ([`SpawnSpec::jail`]).
    Root,
    /// Taking the identity ([`SpawnSpec::identity`]).
    Identity,
    /// Opening `files[i]` ([`SpawnSpec::files`]).
    File(usize),
    /// Executing the program (or its interpreter).
    Exec,
}

/// A start that failed in the child, carried in the `std::io::Error` that [`spawn`] returns
/// (whose kind matches the errno): which step failed, so a caller can name the file.
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
#[error("{step:?} failed: {}", nix::errno::Errno::from_raw(*errno).desc())]
pub struct SpawnFailed {
    /// The step.
    pub step: SpawnStep,
    /// Its errno.
    pub errno: i32,
}

/// The signals this process ignores, bit `n - 1` for signal `n`, as they were at the first
/// call (a daemon's dispositions are set as it starts, and asking the kernel for each signal
/// at every start would cost a start several dozen system calls).
fn ignored_signals() -> u64 {
    static IGNORED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *IGNORED.get_or_init(|| {
        let mut ignored = 0u64;
        for sig in 1..=64 {
            // SAFETY: sigaction with no new action only writes the current one into `old`,
            // a zeroed struct we own; signals the C library reserves fail with EINVAL.
            let is_ignored = unsafe {
                let mut old: libc::sigaction = std::mem::zeroed();
                libc::sigaction(sig, std::ptr::null(), &mut old) == 0
                    && old.sa_sigaction == libc::SIG_IGN
            };
            if is_ignored {
                ignored |= 1 << (sig - 1);
            }
        }
        ignored
    })
}

/// The errno of an error [`spawn`] returned: the system's, or the child's ([`SpawnFailed`]).
pub fn spawn_errno(e: &std::io::Error) -> Option<i32> {
    e.raw_os_error()
        .or_else(|| e.get_ref().and_then(|r| r.downcast_ref::<SpawnFailed>()).map(|f| f.errno))
}

/// Stack for the child of [`spawn`] until it execs.
const CHILD_STACK: usize = 64 * 1024;

thread_local! {
    /// The calling thread's child stack, kept for its next start: allocating and freeing
    /// 64 KiB each time made the allocator consolidate its free lists at every start.
    static SPARE_STACK: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// What the child of [`spawn`] reads, and where it leaves its errno.
struct ChildCtx<'a> {
    spec: &'a SpawnSpec,
    argv: &'a [*const libc::c_char],
    envp: &'a [*const libc::c_char],
    groups: &'a [libc::gid_t],
    /// Signals to set back to their defaults, bit `n - 1` for signal `n`.
    ignored: u64,
    errno: i32,
    step: u32,
}

extern "C" fn child_entry(ctx: *mut libc::c_void) -> ! {
    // SAFETY: `ctx` is the `ChildCtx` of the waiting parent, alive until this child execs or
    // exits; the parent reads `errno` only after that.
    unsafe {
        let ctx = &mut *ctx.cast::<ChildCtx>();
        let (e, step) = child(ctx.spec, ctx.argv, ctx.envp, ctx.groups, ctx.ignored);
        std::ptr::write_volatile(&mut ctx.step, step);
        std::ptr::write_volatile(&mut ctx.errno, if e == 0 { libc::EIO } else { e });
        libc::_exit(127)
    }
}

/// `clone3` with `args` whose child calls `entry(arg)` on the stack `args` names and never
/// returns; the parent gets the child's pid or a negated errno.
///
/// # Safety
/// `args` must name a valid stack; `entry` must never return and may only make direct system
/// calls while it shares the caller's memory.
#[cfg(target_arch = "x86_64")]
pub(crate) unsafe fn clone3_entry(
    args: &CloneArgs,
    entry: extern "C" fn(*mut libc::c_void) -> !,
    arg: *mut libc::c_void,
) -> i64 {
    let ret: i64;
    // SAFETY: the kernel starts the child on the new stack (16-byte aligned top) right after
    // the syscall with rax = 0; it calls `entry(arg)`, which does not return. The parent
    // continues after the label with the result in rax; syscall clobbers only rcx and r11.
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "mov rdi, r12",
            "call r13",
            "ud2",
            "2:",
            inlateout("rax") libc::SYS_clone3 => ret,
            in("rdi") args as *const CloneArgs,
            in("rsi") std::mem::size_of::<CloneArgs>(),
            in("r12") arg,
            in("r13") entry,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

/// Elsewhere: a plain fork-like `clone3` (the page tables are copied), the child calling
/// `entry(arg)` on a copy of the caller's stack.
///
/// # Safety
/// As for the x86-64 version.
#[cfg(not(target_arch = "x86_64"))]
pub(crate) unsafe fn clone3_entry(
    args: &CloneArgs,
    entry: extern "C" fn(*mut libc::c_void) -> !,
    arg: *mut libc::c_void,
) -> i64 {
    let plain = CloneArgs {
        flags: args.flags & !((libc::CLONE_VM | libc::CLONE_VFORK) as u64),
        stack: 0,
        stack_size: 0,
        exit_signal: args.exit_signal,
        set_tid: args.set_tid,
        set_tid_size: args.set_tid_size,
        ..Default::default()
    };
    // SAFETY: as documented; without CLONE_VM the child works on copies, and the parent's
    // `errno` slot is not shared, so a failure shows as the child's exit instead.
    match unsafe { clone3(&plain) } {
        Ok(0) => entry(arg),
        Ok(pid) => i64::from(pid),
        Err(e) => -(e as i64),
    }
}

/// Steps of the child of [`spawn`], as it reports the one that failed ([`SpawnStep`]).
const STEP_SETUP: u32 = 0;
const STEP_ROOT: u32 = 1;
const STEP_IDENTITY: u32 = 2;
const STEP_EXEC: u32 = 3;
/// `STEP_FILE + i`: opening `files[i]`.
const STEP_FILE: u32 = 4;

/// The child's side of [`spawn`]: returns only when something failed, with the errno and the
/// step that failed.
fn child(
    spec: &SpawnSpec,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
    groups: &[libc::gid_t],
    ignored: u64,
) -> (i32, u32) {
    let err = |step: u32| (nix::Error::last_raw(), step);
    // SAFETY: every call below is a direct system call (async-signal-safe) on memory that was
    // prepared before the clone and stays alive; nothing allocates or takes a lock.
    unsafe {
        // Handled signals go back to their defaults at exec; an ignored one would stay
        // ignored, and the Rust runtime ignores SIGPIPE.
        let reset = ignored | 1 << (libc::SIGPIPE - 1);
        for sig in 1..=64 {
            if reset & (1 << (sig - 1)) != 0 {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        if libc::setpgid(0, 0) != 0 {
            return err(STEP_SETUP);
        }
        // The program's file above every fd the spec places, which would replace it.
        let exec_fd = match spec.exec_fd {
            Some(fd) => {
                let targets =
                    spec.fds.iter().map(|(to, _)| *to).chain(spec.files.iter().map(|f| f.fd));
                let above = targets.max().unwrap_or(0).max(2) + 1;
                let high = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, above);
                if high < 0 {
                    return err(STEP_SETUP);
                }
                Some(high)
            }
            None => None,
        };
        if !place_fds(spec) {
            return err(STEP_SETUP);
        }
        // The process count is checked against RLIMIT_NPROC when setuid below changes the
        // user (and the exec then fails if over it), so that one is lowered first, as root.
        // (The constant is a u32 with glibc and a c_int with musl.)
        #[allow(clippy::unnecessary_cast)]
        let nproc = libc::RLIMIT_NPROC as u32;
        for &(resource, soft, hard) in &spec.limits {
            if resource == nproc {
                lower_limit(resource, soft, hard);
            }
        }
        if let Some(j) = &spec.jail {
            if libc::chroot(j.root.as_ptr()) != 0 || libc::chdir(j.cwd.as_ptr()) != 0 {
                return err(STEP_ROOT);
            }
        }
        if let Some(id) = &spec.identity {
            if libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) != 0
                || libc::syscall(libc::SYS_setgid, id.gid) != 0
                || libc::syscall(libc::SYS_setuid, id.uid) != 0
            {
                return err(STEP_IDENTITY);
            }
        }
        // Limits after the identity switch: a user's process can then only lower a hard
        // limit, whatever the spec asks (the kernel refuses more), and `lower_limit` keeps
        // each one within what the process has.
        for &(resource, soft, hard) in &spec.limits {
            lower_limit(resource, soft, hard);
        }
        if spec.jail.is_none() {
            if let Some(cwd) = &spec.cwd {
                if libc::chdir(cwd.as_ptr()) != 0 {
                    libc::chdir(c"/".as_ptr());
                }
            }
        }
        // After the identity switch, which clears the parent-death signal.
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        libc::umask((spec.umask & 0o777) as libc::mode_t);
        if let Err(step) = open_files(spec) {
            return err(step);
        }
        // The daemon's signal mask must not leak into the program. Unblocked only now, so
        // that no handler of the daemon's runs in this child, which shares its memory.
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        if spec.trace && libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) != 0 {
            return err(STEP_SETUP);
        }
        match exec_fd {
            Some(fd) => {
                let empty = c"".as_ptr();
                let (argv, envp) = (argv.as_ptr(), envp.as_ptr());
                libc::syscall(libc::SYS_execveat, fd, empty, argv, envp, libc::AT_EMPTY_PATH);
            }
            None => {
                libc::execve(spec.path.as_ptr(), argv.as_ptr(), envp.as_ptr());
            }
        }
    }
    err(STEP_EXEC)
}

/// The child's fds 0 to 2 and the spec's other fds in place, everything else the caller
/// holds closed at exec; false when a `dup2` failed (errno tells why). Direct system calls
/// only (it runs in the child of [`spawn`]).
fn place_fds(spec: &SpawnSpec) -> bool {
    // SAFETY: direct system calls (async-signal-safe) on fds the spec owns and on a local
    // array; nothing allocates or takes a lock.
    unsafe {
        // Nothing the caller holds goes to the program but what the spec names (dup2 below
        // makes each target without close-on-exec).
        libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 4u32 /* CLOSE_RANGE_CLOEXEC */);
        for (fd, from) in spec.stdio.iter().enumerate() {
            let Some(from) = from else {
                libc::close(fd as i32);
                continue;
            };
            let from = from.as_raw_fd();
            if from == fd as i32 {
                libc::fcntl(from, libc::F_SETFD, 0);
            } else if libc::dup2(from, fd as i32) < 0 {
                return false;
            }
        }
        // Each source first moves above every target, so that no dup2 below lands on a
        // source still to be placed; the copies close at exec.
        let above = spec.fds.iter().map(|(to, _)| *to).max().unwrap_or(0) + 1;
        let mut high = [-1; MAX_FDS];
        for (slot, (_, from)) in high.iter_mut().zip(&spec.fds) {
            *slot = libc::fcntl(from.as_raw_fd(), libc::F_DUPFD_CLOEXEC, above);
            if *slot < 0 {
                return false;
            }
        }
        for (from, (to, _)) in high.iter().zip(&spec.fds) {
            if libc::dup2(*from, *to) < 0 {
                return false;
            }
        }
    }
    true
}

/// Opens the spec's files (`-I`/`-O`/`-E`, an I/O list) at their fds, as the process's own
/// identity; the failing step ([`STEP_FILE`] + its index) otherwise. Direct system calls
/// only (it runs in the child of [`spawn`]).
fn open_files(spec: &SpawnSpec) -> Result<(), u32> {
    // SAFETY: direct system calls (async-signal-safe) on NUL-terminated paths prepared
    // before the clone; nothing allocates or takes a lock.
    unsafe {
        for (i, f) in spec.files.iter().enumerate() {
            let opened = libc::open(f.path.as_ptr(), f.flags | libc::O_CLOEXEC, f.mode);
            if opened < 0 {
                return Err(STEP_FILE + i as u32);
            }
            if f.offset != 0 && libc::lseek(opened, f.offset, libc::SEEK_SET) < 0 {
                return Err(STEP_FILE + i as u32);
            }
            if opened == f.fd {
                libc::fcntl(opened, libc::F_SETFD, 0);
            } else {
                libc::dup2(opened, f.fd);
                libc::close(opened);
            }
        }
    }
    Ok(())
}

/// Sets limit `resource` of the calling process to `soft` and `hard`, never above the hard
/// limit it has now: a limit the node does not give is left at the node's, and a soft limit
/// above it comes down to it. Direct system calls only (it runs in the child of [`spawn`]).
fn lower_limit(resource: u32, soft: u64, hard: u64) {
    let mut now = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit read and write a live rlimit on this stack; both are
    // plain system calls, safe in a child that shares the parent's memory.
    unsafe {
        if libc::getrlimit(resource as _, &mut now) != 0 {
            return;
        }
        let max = hard.min(now.rlim_max);
        let lim = libc::rlimit { rlim_cur: soft.min(max), rlim_max: max };
        // Mostly the caller's limits are the node's: nothing to set.
        if (lim.rlim_cur, lim.rlim_max) != (now.rlim_cur, now.rlim_max) {
            libc::setrlimit(resource as _, &lim);
        }
    }
}

/// A pid namespace and its init (pid 1), which reaps orphans until it is killed. Dropping it
/// kills the init, and with it every process of the namespace.
#[derive(Debug)]
pub struct PidNamespace {
    init: i32,
    /// The write end of a pipe the init watches: it closes when this process dies, and the
    /// init then exits, which kills the namespace (a namespace's init ignores the
    /// parent-death signal, as it ignores every signal from the kernel).
    _lifeline: OwnedFd,
    /// `/proc/<init>/ns/pid`.
    ns: std::fs::File,
    /// `/proc/<init>/ns/mnt`: the node's mounts with a `/proc` of this namespace.
    mnt: std::fs::File,
    /// Requests to the init to set the namespace's last pid ([`LastPid`]).
    last_pid: std::os::unix::net::UnixStream,
}

impl PidNamespace {
    /// Creates the namespace (needs CAP_SYS_ADMIN) as a child of the calling thread's own
    /// namespace, with a mount namespace of its own where `/proc` (and `extra_proc`, a
    /// diskless root's) shows the namespace's processes under their pids there. Its init
    /// dies with the calling process.
    pub fn create(extra_proc: Option<&std::path::Path>) -> std::io::Result<PidNamespace> {
        use std::os::unix::ffi::OsStrExt;
        let extra = match extra_proc {
            Some(p) => Some(
                CString::new(p.as_os_str().as_bytes())
                    .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?,
            ),
            None => None,
        };
        let (ready_rd, ready_wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        // A thread that entered another namespace for its children goes home first.
        let home = std::fs::File::open("/proc/thread-self/ns/pid")?;
        nix::sched::setns(&home, nix::sched::CloneFlags::CLONE_NEWPID)?;
        let (rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let (ask, answer) = std::os::unix::net::UnixStream::pair()?;
        let args = CloneArgs {
            flags: libc::CLONE_NEWPID as u64,
            exit_signal: libc::SIGCHLD as u64,
            ..Default::default()
        };
        // SAFETY: the child runs `init_loop`, which makes only direct system calls on its
        // own stack and never returns.
        let pid = unsafe { clone3(&args) }?;
        if pid == 0 {
            init_loop(rd.as_raw_fd(), ready_wr.as_raw_fd(), answer.as_raw_fd(), extra.as_deref());
        }
        drop((rd, ready_wr, answer));
        // The init says when its mounts are in place (or closes the pipe, failing).
        let mut b = [0u8; 1];
        let ready = nix::unistd::read(ready_rd.as_raw_fd(), &mut b) == Ok(1);
        let opened = if ready {
            std::fs::File::open(format!("/proc/{pid}/ns/pid"))
                .and_then(|ns| Ok((ns, std::fs::File::open(format!("/proc/{pid}/ns/mnt"))?)))
        } else {
            Err(std::io::Error::other("the namespace's init could not mount its /proc"))
        };
        match opened {
            Ok((ns, mnt)) => Ok(PidNamespace { init: pid, ns, mnt, _lifeline: wr, last_pid: ask }),
            Err(e) => {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                Err(e)
            }
        }
    }

    /// The init's pid in the caller's namespace.
    pub fn init_pid(&self) -> i32 {
        self.init
    }

    /// A handle that asks the init to set the namespace's last pid (so that the next
    /// process made there gets the pid after it), usable from any thread.
    pub fn last_pid(&self) -> std::io::Result<LastPid> {
        Ok(LastPid(std::sync::Mutex::new(self.last_pid.try_clone()?)))
    }

    /// Makes the calling thread's future children start in this namespace. The thread can
    /// then no longer start threads: use a thread that only spawns.
    pub fn enter_for_children(&self) -> std::io::Result<()> {
        nix::sched::setns(&self.ns, nix::sched::CloneFlags::CLONE_NEWPID)?;
        Ok(())
    }

    /// Makes the calling thread, and what it starts, use the namespace's mounts (its own
    /// `/proc`): once for the thread instead of once per process started. The thread first
    /// takes a filesystem context (root, working directory) of its own.
    pub fn enter_mounts(&self) -> std::io::Result<()> {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS)?;
        nix::sched::setns(&self.mnt, nix::sched::CloneFlags::CLONE_NEWNS)?;
        Ok(())
    }
}

impl Drop for PidNamespace {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.init),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Sets a pid namespace's last pid through its init, which alone may: the kernel applies
/// `/proc/sys/kernel/ns_last_pid` to the writer's own namespace.
#[derive(Debug)]
pub struct LastPid(std::sync::Mutex<std::os::unix::net::UnixStream>);

impl LastPid {
    /// Makes `pid` the namespace's last pid, waiting at most `wait` for the init's answer.
    pub fn set(&self, pid: i32, wait: std::time::Duration) -> std::io::Result<()> {
        use std::io::{Read, Write};
        let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        // A late answer to an earlier request that timed out goes first.
        s.set_nonblocking(true)?;
        let mut stale = [0u8; 64];
        while matches!(s.read(&mut stale), Ok(n) if n > 0) {}
        s.set_nonblocking(false)?;
        s.set_read_timeout(Some(wait.max(std::time::Duration::from_micros(1))))?;
        s.write_all(&pid.to_ne_bytes())?;
        let mut errno = [0u8; 4];
        s.read_exact(&mut errno)?;
        match i32::from_ne_bytes(errno) {
            0 => Ok(()),
            e => Err(std::io::Error::from_raw_os_error(e)),
        }
    }
}

/// Writes `n` in decimal into `buf`, returning the length (no allocation: runs in the init).
fn decimal(mut n: u32, buf: &mut [u8; 12]) -> usize {
    let mut tmp = [0u8; 12];
    let mut len = 0;
    loop {
        tmp[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..len {
        buf[i] = tmp[len - 1 - i];
    }
    len
}

/// The namespace's init: mount its `/proc`, say so on `ready`, then reap every child and
/// answer requests on `requests` to set the last pid ([`LastPid`]); exit when `lifeline`
/// reports its writer gone.
fn init_loop(lifeline: i32, ready: i32, requests: i32, extra_proc: Option<&std::ffi::CStr>) -> ! {
    // SAFETY: direct system calls on memory prepared before the clone or on this stack.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, c"bproc-init".as_ptr());
        // A mount namespace of its own with a /proc that shows this pid namespace. Every
        // other mount stays a peer of the node's (where the node's are shared), so what a
        // job mounts the node sees, as on BProc, where a node's processes are the node's.
        let proc_flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        let null = std::ptr::null::<libc::c_char>();
        let own_proc = |at: &std::ffi::CStr| {
            libc::mount(null, at.as_ptr(), null, libc::MS_REC | libc::MS_PRIVATE, null.cast()) == 0
                && libc::mount(
                    c"proc".as_ptr(),
                    at.as_ptr(),
                    c"proc".as_ptr(),
                    proc_flags,
                    null.cast(),
                ) == 0
        };
        if libc::unshare(libc::CLONE_NEWNS) != 0 || !own_proc(c"/proc") {
            libc::_exit(1);
        }
        if let Some(p) = extra_proc {
            if !own_proc(p) {
                libc::_exit(1);
            }
        }
        libc::write(ready, [1u8].as_ptr().cast(), 1);
        // Keep the lifeline as fd 3 and close everything else of the daemon's: the
        // namespace must not hold its sockets or the lifeline's write end, nor its standard
        // streams (a daemon that went to the background must leave the terminal, or the
        // pipe of whoever started it, for good).
        // The request socket as fd 4, and ns_last_pid open as fd 5.
        if libc::dup2(lifeline, 3) < 0 || libc::dup2(requests, 4) < 0 {
            libc::_exit(1);
        }
        // (Without it, fd 5 stays closed and each request is answered EBADF.)
        let last = libc::open(c"/proc/sys/kernel/ns_last_pid".as_ptr(), libc::O_WRONLY);
        if last < 0 || libc::dup2(last, 5) < 0 {
            libc::close(5);
        }
        libc::syscall(libc::SYS_close_range, 0u32, 2u32, 0u32);
        libc::syscall(libc::SYS_close_range, 6u32, u32::MAX, 0u32);
        // SIGCHLD through a signalfd: a cloned copy of a multi-threaded daemon cannot
        // install a handler safely, and polling would wake every init of a large virtual
        // cluster for nothing.
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        let sfd = libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC);
        if sfd < 0 {
            libc::_exit(1);
        }
        let mut info = [0u8; 128];
        let mut ask = 4;
        loop {
            while libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) > 0 {}
            while libc::read(sfd, info.as_mut_ptr().cast(), info.len()) > 0 {}
            let mut pfd = [
                libc::pollfd { fd: 3, events: libc::POLLIN, revents: 0 },
                libc::pollfd { fd: sfd, events: libc::POLLIN, revents: 0 },
                libc::pollfd { fd: ask, events: libc::POLLIN, revents: 0 },
            ];
            if libc::poll(pfd.as_mut_ptr(), 3, -1) <= 0 {
                continue;
            }
            if pfd[0].revents != 0 {
                // The daemon is gone: ending the init kills the whole namespace.
                libc::_exit(0);
            }
            if pfd[2].revents & libc::POLLIN != 0 {
                let mut pid = [0u8; 4];
                if libc::read(4, pid.as_mut_ptr().cast(), 4) == 4 {
                    let mut text = [0u8; 12];
                    let len = decimal(u32::from_ne_bytes(pid), &mut text);
                    let errno = if libc::pwrite(5, text.as_ptr().cast(), len, 0) == len as isize {
                        0
                    } else {
                        *libc::__errno_location()
                    };
                    libc::write(4, errno.to_ne_bytes().as_ptr().cast(), 4);
                }
            } else if pfd[2].revents != 0 {
                // The request socket failed: the daemon is going; the lifeline says when.
                ask = -1;
            }
        }
    }
}

/// Forks a single-threaded caller (the ghost): 0 in the child, the child's pid in the parent.
pub fn fork_single_threaded() -> nix::Result<i32> {
    // SAFETY: documented for single-threaded callers only, where the child is a full copy with
    // no lock held by a vanished thread; it may then do anything.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Child => Ok(0),
        nix::unistd::ForkResult::Parent { child } => Ok(child.as_raw()),
    }
}

/// Puts every signal back to its default action (signals ignored by a launcher stay ignored
/// across `exec`; a ghost must see them all, and die by them when told to), leaving pending
/// signals pending: see [`crate::task::raw::default_signal_actions`].
pub fn default_signal_actions() {
    crate::task::raw::default_signal_actions();
}

/// Takes ownership of `fd`, inherited across `exec` under a number the environment gave, if
/// it is an open socket.
pub fn inherited_socket(fd: i32) -> Option<std::os::unix::net::UnixStream> {
    inherited_socket_fd(fd).map(std::os::unix::net::UnixStream::from)
}

/// [`inherited_socket`] for any kind of socket (a TCP listener, say).
pub fn inherited_socket_fd(fd: i32) -> Option<std::os::fd::OwnedFd> {
    inherited_fd(fd, libc::S_IFSOCK)
}

/// Takes ownership of `fd`, inherited across `exec` under a number the environment gave, if
/// it is an open pipe.
pub fn inherited_pipe(fd: i32) -> Option<std::os::fd::OwnedFd> {
    inherited_fd(fd, libc::S_IFIFO)
}

/// `pidfd_open(2)`: an fd (close-on-exec) for process `pid`, which polls readable once the
/// process ends.
pub fn pidfd_open(pid: i32) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open(2) with no flags; the result is checked.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor owned by nothing else.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// Takes ownership of `fd` if it is open and of file type `kind` (`S_IFSOCK`, ...).
fn inherited_fd(fd: i32, kind: libc::mode_t) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let st = nix::sys::stat::fstat(fd).ok()?;
    if st.st_mode & libc::S_IFMT != kind {
        return None;
    }
    // SAFETY: `fd` is open (fstat succeeded), and the caller names an fd it was handed
    // across exec for this purpose, which nothing else in the process owns.
    Some(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// [`signal_from`] run by a short-lived child of the calling thread: called from a thread
/// that makes its children in `pid`'s pid namespace (a slave's spawner thread), the sender
/// is then visible to `pid`, so the kernel keeps `sender` in `si_pid` (it clears it for a
/// signal queued from an ancestor namespace). The child only makes the call and `_exit`s
/// with its errno.
pub fn signal_from_inside(pid: i32, signal: i32, sender: i32) -> nix::Result<()> {
    // A fork by `clone3` of this crate's size, which the slave's fork filter (on the thread
    // that calls this) lets through at once.
    let args = CloneArgs { exit_signal: libc::SIGCHLD as u64, ..Default::default() };
    // SAFETY: the child makes only async-signal-safe calls (rt_sigqueueinfo through
    // signal_from, which allocates nothing, and _exit) before it exits.
    let child = unsafe { clone3(&args) }?;
    if child == 0 {
        let code = match signal_from(pid, signal, sender) {
            Ok(()) => 0,
            Err(e) => e as i32,
        };
        // SAFETY: ends the child without running the parent's exit handlers.
        unsafe { libc::_exit(code) }
    }
    let mut status = 0;
    // SAFETY: reaps the child just made.
    while unsafe { libc::waitpid(child, &mut status, 0) } < 0 {
        if nix::Error::last() != nix::Error::EINTR {
            return Err(nix::Error::last());
        }
    }
    match libc::WEXITSTATUS(status) {
        0 => Ok(()),
        e => Err(nix::Error::from_raw(e)),
    }
}

/// Sends `signal` to `pid` as coming from `sender` (a pid in the master's space, 0 for none):
/// with `sender` the target's `siginfo` names it (`si_code` `SI_QUEUE`), as BProc delivered
/// forwarded signals "as if from the original sender".
pub fn signal_from(pid: i32, signal: i32, sender: i32) -> nix::Result<()> {
    if sender <= 0 {
        let sig = nix::sys::signal::Signal::try_from(signal)?;
        return nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
    }
    let uid = nix::unistd::getuid().as_raw();
    let info = crate::task::SigInfo::new(signal, libc::SI_QUEUE, sender, uid);
    // SAFETY: `info` is a live siginfo_t in the kernel's layout, which the call only reads.
    let r = unsafe { libc::syscall(libc::SYS_rt_sigqueueinfo, pid, signal, &info) };
    if r != 0 {
        return Err(nix::Error::last());
    }
    Ok(())
}

/// Closes every fd from `first` up, except those in `keep`.
pub fn close_fds_from(first: u32, keep: &[u32]) {
    let mut keep: Vec<u32> = keep.iter().copied().filter(|k| *k >= first).collect();
    keep.sort_unstable();
    keep.dedup();
    let mut ranges = Vec::new();
    let mut lo = first;
    for k in keep {
        ranges.push((lo, k.saturating_sub(1)));
        lo = k.saturating_add(1);
    }
    if lo != 0 {
        ranges.push((lo, u32::MAX));
    }
    for (lo, hi) in ranges {
        if lo <= hi {
            // SAFETY: close_range only closes descriptors; the caller owns none of them as
            // Rust objects (it runs this before opening anything it keeps).
            unsafe { libc::syscall(libc::SYS_close_range, lo, hi, 0u32) };
        }
    }
}

/// Forks a single-threaded caller into a sibling: a child of the caller's parent (which gets
/// its SIGCHLD), as `clone(CLONE_PARENT)`. 0 in the child, its pid in the caller.
pub fn clone_sibling() -> nix::Result<i32> {
    // SAFETY: with no new stack the child runs on a copy of the caller's, as after fork; for
    // a single-threaded caller no lock can be held by a vanished thread.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (libc::CLONE_PARENT | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if r < 0 {
        Err(nix::Error::last())
    } else {
        Ok(r as i32)
    }
}
