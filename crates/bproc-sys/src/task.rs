//! Light tasks: processes that share their maker's address space.
//!
//! A task is made by `clone3(CLONE_VM | CLONE_PARENT)`: not a thread (it has its own pid,
//! signals, fd table, and its parent waits for it like any child) and not a fork (no page
//! tables, no memory of its own but the stack it runs on). That makes it cost a kernel task
//! and little else, which is what a front end holding thousands of ghosts needs.
//!
//! A task shares its maker's heap and thread-local storage (glibc's `errno` included) while
//! running its own code at the same time, so it may touch neither: it allocates nothing,
//! takes no lock and calls no libc function. [`raw`] holds the system calls it makes, which
//! return the kernel's error directly. It leaves the shared space by `execve` or by exiting.
//!
//! Elsewhere than x86-64 a task is a plain fork-like child (its own copy of memory), so the
//! same code runs, without the saving.

use std::ffi::{c_void, CStr};
use std::os::fd::RawFd;
use std::ptr::NonNull;

use nix::errno::Errno;
use nix::libc;

use crate::CloneArgs;

/// Stack of one task. Its code runs no recursion and a few KiB deep (a frame buffer, the
/// decoding of a small message, an `execve`'s arrays), so this leaves ample room.
const STACK: usize = 64 << 10;
/// The unmapped page below the stacks.
const GUARD: usize = 4096;

/// Stacks for up to `n` tasks, one after another in one mapping. Never unmapped: tasks run on
/// them until they exit or exec, and the mapping goes with the last of them.
///
/// There is no guard page between two stacks: each would split the mapping, and the kernel
/// walks every mapping of an address space each time a process that uses it exits (process
/// accounting), so thousands of tasks would each pay for thousands of mappings. The mapping
/// has a guard page below it, so that the lowest stack's overflow faults.
pub struct TaskStacks {
    base: NonNull<c_void>,
    n: usize,
    used: usize,
}

impl TaskStacks {
    /// Maps stacks for `n` tasks (address space only: a stack's pages are used as touched).
    pub fn new(n: usize) -> nix::Result<TaskStacks> {
        use nix::sys::mman::{mmap_anonymous, mprotect, MapFlags, ProtFlags};
        let len = n.checked_mul(STACK).and_then(|l| l.checked_add(GUARD));
        let len = len.and_then(std::num::NonZeroUsize::new).ok_or(Errno::EINVAL)?;
        let flags = MapFlags::MAP_PRIVATE | MapFlags::MAP_NORESERVE | MapFlags::MAP_STACK;
        // SAFETY: a fresh anonymous mapping at an address the kernel picks overlaps nothing.
        let base = unsafe {
            mmap_anonymous(None, len, ProtFlags::PROT_READ | ProtFlags::PROT_WRITE, flags)?
        };
        // SAFETY: the guard page is the mapping's first, which nothing uses yet; making it
        // inaccessible affects no Rust object.
        if let Err(e) = unsafe { mprotect(base, GUARD, ProtFlags::PROT_NONE) } {
            // SAFETY: the mapping is ours and nothing runs on it yet.
            let _ = unsafe { nix::sys::mman::munmap(base, len.get()) };
            return Err(e);
        }
        // SAFETY: the stacks start right above the guard page, inside the mapping.
        let base = unsafe { base.byte_add(GUARD) };
        Ok(TaskStacks { base, n, used: 0 })
    }

    /// The last `k` stacks, for another maker of tasks; None if they are not free.
    pub fn split_off(&mut self, k: usize) -> Option<TaskStacks> {
        let keep = self.n.checked_sub(k).filter(|keep| *keep >= self.used)?;
        // SAFETY: slot `keep` lies inside the mapping (or just past it when `k` is 0).
        let base = unsafe { self.base.byte_add(keep * STACK) };
        self.n = keep;
        Some(TaskStacks { base, n: k, used: 0 })
    }

    /// Starts a task on the next free stack, as a sibling of the caller (a child of its
    /// parent, which gets its `SIGCHLD`): it runs `data.run()`. Returns its pid.
    pub fn spawn_sibling<T: Task>(&mut self, data: &'static mut T) -> nix::Result<i32> {
        if self.used == self.n {
            return Err(Errno::ENOMEM);
        }
        // SAFETY: slot `used` lies inside the mapping and no task runs on it yet.
        let slot = unsafe { self.base.as_ptr().cast::<u8>().add(self.used * STACK) };
        let args = CloneArgs {
            // Not CLONE_SIGHAND: a signalfd waits on its handler table, and a signal to one
            // task would wake every task that shares it.
            flags: (libc::CLONE_VM | libc::CLONE_PARENT) as u64,
            // With CLONE_PARENT the task gets the caller's own exit signal (clone3 refuses
            // one given here).
            exit_signal: 0,
            // The stack grows down from the slot's end (16-byte aligned) to its start.
            stack: slot as u64,
            stack_size: STACK as u64,
            ..Default::default()
        };
        let data: *mut T = data;
        // SAFETY: the stack is valid and used by this task only; `task_entry` never returns,
        // and what it runs keeps to direct system calls (the promise of `Task`).
        let pid = unsafe { crate::spawn::clone3_entry(&args, task_entry::<T>, data.cast()) };
        if pid < 0 {
            return Err(Errno::from_raw(-pid as i32));
        }
        self.used += 1;
        Ok(pid as i32)
    }
}

/// Forks the caller into a child that runs `data.run()`: a plain fork (memory of its own,
/// copied on write; the caller is its parent and gets its `SIGCHLD`) whose only code is the
/// task's. A task's promise (direct system calls only, no heap, no locks) is what makes such
/// a fork safe in a process with other threads, whatever they held at that moment. With
/// `title`, the child shows as `title` in `/proc/PID/cmdline` (and so in `ps`), written over
/// its copy of the caller's arguments.
pub fn fork_task<T: Task>(data: &'static mut T, title: Option<&CStr>) -> nix::Result<i32> {
    let area = match title {
        Some(t) => Some((ArgArea::of_self()?, t)),
        None => None,
    };
    let args = CloneArgs { exit_signal: libc::SIGCHLD as u64, ..Default::default() };
    // SAFETY: without CLONE_VM the child works on its own copy of memory and runs only what
    // follows, direct system calls and copies into its own arguments.
    match unsafe { crate::spawn::clone3(&args) } {
        Ok(0) => {
            if let Some((area, title)) = area {
                area.set_title(title.to_bytes());
            }
            data.run()
        }
        r => r,
    }
}

/// Where a process's argument strings lie: what `/proc/PID/cmdline` reads.
#[derive(Clone, Copy)]
struct ArgArea {
    start: usize,
    end: usize,
}

impl ArgArea {
    /// This process's, from `/proc/self/stat` (its fields 48 and 49).
    fn of_self() -> nix::Result<ArgArea> {
        let stat = crate::peer::read_proc("/proc/self/stat").ok();
        let stat = stat.as_deref().and_then(crate::peer::Stat::parse).ok_or(Errno::EIO)?;
        match (stat.num::<usize>(48), stat.num::<usize>(49)) {
            (Some(start), Some(end)) if end > start => Ok(ArgArea { start, end }),
            _ => Err(Errno::EIO),
        }
    }

    /// Writes `title` over the arguments, cut to fit, and ends it with a NUL. The last byte
    /// of the area is made non-NUL, which tells the kernel that the area holds a title
    /// (`setproctitle`): `cmdline` then reads up to the title's NUL, not the old arguments.
    fn set_title(self, title: &[u8]) {
        let len = self.end - self.start;
        let n = title.len().min(len - 1);
        let p = self.start as *mut u8;
        // SAFETY: called only in a child just forked by `fork_task`, which runs one thread
        // and never reads its arguments: `start..end` is its own copy of the argument
        // strings the kernel placed on the main stack, mapped and writable for the process's
        // life, and nothing holds a reference into it.
        unsafe {
            std::ptr::copy_nonoverlapping(title.as_ptr(), p, n);
            p.add(n).write(0);
            if n + 1 < len {
                p.add(len - 1).write(b' ');
            }
        }
    }
}

/// What a light task runs.
///
/// # Safety
/// `run` and everything it calls must use only [`raw`] system calls, the task's own data and
/// stack, and memory nothing frees or changes while tasks run: no heap, no thread-local
/// storage (glibc's `errno` included), no locks, no libc, no panics.
pub unsafe trait Task: 'static {
    /// The task's life; it ends by `execve` or by exiting.
    fn run(&'static mut self) -> !;
}

extern "C" fn task_entry<T: Task>(arg: *mut c_void) -> ! {
    // SAFETY: `arg` is the `&'static mut T` handed to `spawn_sibling`, whose exclusive use
    // passed to this task.
    let data = unsafe { &mut *arg.cast::<T>() };
    data.run()
}

/// A `siginfo_t` as `rt_sigqueueinfo` reads it: the leading fields of the kernel's layout on
/// 64-bit Linux (signo, errno, code, padding, then the sender's pid and uid); the rest zero.
#[repr(C)]
pub(crate) struct SigInfo {
    signo: i32,
    errno: i32,
    code: i32,
    pad: i32,
    pid: i32,
    uid: u32,
    rest: [u64; 13],
}

impl SigInfo {
    /// Signal `signo` with `code`, from `pid` (uid `uid`).
    pub(crate) fn new(signo: i32, code: i32, pid: i32, uid: u32) -> SigInfo {
        SigInfo { signo, errno: 0, code, pad: 0, pid, uid, rest: [0; 13] }
    }
}

/// The system calls a task makes: no libc, no `errno`, the kernel's error as returned.
pub mod raw {
    use super::*;

    /// One system call with up to six arguments.
    #[cfg(target_arch = "x86_64")]
    fn call(n: libc::c_long, a: [usize; 6]) -> Result<usize, Errno> {
        let r: isize;
        // SAFETY: each wrapper below passes arguments its system call reads or writes only
        // within the memory it was handed; `syscall` clobbers rcx and r11 only.
        unsafe {
            std::arch::asm!(
                "syscall",
                inlateout("rax") n as isize => r,
                in("rdi") a[0], in("rsi") a[1], in("rdx") a[2],
                in("r10") a[3], in("r8") a[4], in("r9") a[5],
                lateout("rcx") _, lateout("r11") _,
                options(nostack),
            );
        }
        if (-4095..0).contains(&r) {
            Err(Errno::from_raw(-r as i32))
        } else {
            Ok(r as usize)
        }
    }

    /// Elsewhere a task has memory of its own (see the module's note), so libc will do.
    #[cfg(not(target_arch = "x86_64"))]
    fn call(n: libc::c_long, a: [usize; 6]) -> Result<usize, Errno> {
        // SAFETY: as for the x86-64 version.
        let r = unsafe { libc::syscall(n, a[0], a[1], a[2], a[3], a[4], a[5]) };
        if r < 0 {
            Err(Errno::last())
        } else {
            Ok(r as usize)
        }
    }

    /// `read(2)`.
    pub fn read(fd: RawFd, buf: &mut [u8]) -> Result<usize, Errno> {
        call(libc::SYS_read, [fd as usize, buf.as_mut_ptr() as usize, buf.len(), 0, 0, 0])
    }

    /// Fills `buf`; false if the stream ended first.
    pub fn read_exact(fd: RawFd, mut buf: &mut [u8]) -> Result<bool, Errno> {
        while !buf.is_empty() {
            match read(fd, buf) {
                Ok(0) => return Ok(false),
                Ok(n) => buf = &mut buf[n..],
                Err(Errno::EINTR) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Writes all of `buf`.
    pub fn write_all(fd: RawFd, mut buf: &[u8]) -> Result<(), Errno> {
        while !buf.is_empty() {
            let a = [fd as usize, buf.as_ptr() as usize, buf.len(), 0, 0, 0];
            match call(libc::SYS_write, a) {
                Ok(n) => buf = &buf[n..],
                Err(Errno::EINTR) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Waits for `buf.len()` bytes on a stream socket and copies them without taking them;
    /// fewer only if the stream ends.
    pub fn peek_exact(fd: RawFd, buf: &mut [u8]) -> Result<usize, Errno> {
        let flags = (libc::MSG_PEEK | libc::MSG_WAITALL) as usize;
        loop {
            let a = [fd as usize, buf.as_mut_ptr() as usize, buf.len(), flags, 0, 0];
            match call(libc::SYS_recvfrom, a) {
                Err(Errno::EINTR) => {}
                r => return r,
            }
        }
    }

    /// `ppoll(2)` with no timeout and no mask change: waits until one of `fds` is ready.
    pub fn poll(fds: &mut [libc::pollfd]) -> Result<usize, Errno> {
        call(libc::SYS_ppoll, [fds.as_mut_ptr() as usize, fds.len(), 0, 0, 0, 0])
    }

    /// [`poll`] for at most `ms` milliseconds; 0 when none became ready in that time.
    pub fn poll_for(fds: &mut [libc::pollfd], ms: u32) -> Result<usize, Errno> {
        let t = libc::timespec {
            tv_sec: (ms / 1000) as libc::time_t,
            tv_nsec: ((ms % 1000) * 1_000_000) as libc::c_long,
        };
        let a = [fds.as_mut_ptr() as usize, fds.len(), &t as *const _ as usize, 0, 0, 0];
        call(libc::SYS_ppoll, a)
    }

    /// The next connection waiting on listener `fd` (blocking, kept across exec), if any: the
    /// listener is non-blocking, so `EAGAIN` says there is none.
    pub fn accept(fd: RawFd) -> Result<RawFd, Errno> {
        loop {
            match call(libc::SYS_accept4, [fd as usize, 0, 0, 0, 0, 0]) {
                Err(Errno::EINTR) => {}
                r => return r.map(|c| c as RawFd),
            }
        }
    }

    /// Sets how long a read on socket `fd` waits (`SO_RCVTIMEO`; 0: for ever).
    pub fn set_read_timeout(fd: RawFd, secs: u32) -> Result<(), Errno> {
        let tv = libc::timeval { tv_sec: secs as libc::time_t, tv_usec: 0 };
        let len = std::mem::size_of::<libc::timeval>();
        let a = [
            fd as usize,
            libc::SOL_SOCKET as usize,
            libc::SO_RCVTIMEO as usize,
            &tv as *const _ as usize,
            len,
            0,
        ];
        call(libc::SYS_setsockopt, a).map(drop)
    }

    /// `close(2)`.
    pub fn close(fd: RawFd) {
        let _ = call(libc::SYS_close, [fd as usize, 0, 0, 0, 0, 0]);
    }

    /// Closes every fd from `first` up.
    pub fn close_from(first: RawFd) {
        close_range(first, RawFd::MAX);
    }

    /// Closes every fd from `first` to `last`, both included.
    pub fn close_range(first: RawFd, last: RawFd) {
        let _ = call(libc::SYS_close_range, [first as usize, last as u32 as usize, 0, 0, 0, 0]);
    }

    /// Makes `new` a copy of `old`.
    pub fn dup2(old: RawFd, new: RawFd) -> Result<(), Errno> {
        if old == new {
            return Ok(());
        }
        call(libc::SYS_dup3, [old as usize, new as usize, 0, 0, 0, 0]).map(drop)
    }

    /// How many bytes wait to be read on `fd` (`FIONREAD`).
    pub fn readable(fd: RawFd) -> Result<usize, Errno> {
        let mut n: libc::c_int = 0;
        let a =
            [fd as usize, libc::FIONREAD as usize, &mut n as *mut libc::c_int as usize, 0, 0, 0];
        call(libc::SYS_ioctl, a).map(|_| n.max(0) as usize)
    }

    /// This process's pid.
    pub fn getpid() -> i32 {
        call(libc::SYS_getpid, [0; 6]).map_or(0, |p| p as i32)
    }

    /// `kill(2)`.
    pub fn kill(pid: i32, sig: i32) -> Result<(), Errno> {
        call(libc::SYS_kill, [pid as usize, sig as usize, 0, 0, 0, 0]).map(drop)
    }

    /// Queues `sig` to this process again as `sender` (uid `uid`, code `code`) sent it: a
    /// signal read from a signalfd that could not be passed on waits for whoever runs next.
    pub fn requeue_self(sig: i32, code: i32, sender: i32, uid: u32) -> Result<(), Errno> {
        let info = SigInfo::new(sig, code, sender, uid);
        let me = getpid() as usize;
        let a = [me, sig as usize, &info as *const SigInfo as usize, 0, 0, 0];
        call(libc::SYS_rt_sigqueueinfo, a).map(drop)
    }

    /// `rt_sigprocmask(2)` with the kernel's 64-bit mask (bit `n - 1` for signal `n`); the
    /// mask before.
    pub fn sigprocmask(how: libc::c_int, set: Option<u64>) -> Result<u64, Errno> {
        let mut old = 0u64;
        let set_ptr = set.as_ref().map_or(0, |s| s as *const u64 as usize);
        let a = [how as usize, set_ptr, &mut old as *mut u64 as usize, 8, 0, 0];
        call(libc::SYS_rt_sigprocmask, a).map(|_| old)
    }

    /// The signals pending (blocked and waiting), as a mask.
    pub fn sigpending() -> Result<u64, Errno> {
        let mut set = 0u64;
        call(libc::SYS_rt_sigpending, [&mut set as *mut u64 as usize, 8, 0, 0, 0, 0]).map(|_| set)
    }

    /// A non-blocking, close-on-exec signalfd for the signals in `mask`.
    pub fn signalfd(mask: u64) -> Result<RawFd, Errno> {
        let flags = (libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) as usize;
        let a = [usize::MAX, &mask as *const u64 as usize, 8, flags, 0, 0];
        call(libc::SYS_signalfd4, a).map(|fd| fd as RawFd)
    }

    /// The next signal on signalfd `fd`, None if there is none.
    pub fn read_signal(fd: RawFd) -> Result<Option<libc::signalfd_siginfo>, Errno> {
        // SAFETY: signalfd_siginfo is plain old data; all zeroes is a valid value.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let len = std::mem::size_of::<libc::signalfd_siginfo>();
        let a = [fd as usize, &mut info as *mut _ as usize, len, 0, 0, 0];
        match call(libc::SYS_read, a) {
            Ok(n) if n == len => Ok(Some(info)),
            Ok(_) | Err(Errno::EAGAIN) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A stream socket connected to the Unix socket at `path`. It stays open across exec:
    /// a task hands its connection on to the program it becomes.
    pub fn connect_unix(path: &[u8]) -> Result<RawFd, Errno> {
        // SAFETY: sockaddr_un is plain old data; all zeroes is a valid value.
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        if path.len() >= addr.sun_path.len() {
            return Err(Errno::ENAMETOOLONG);
        }
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (d, s) in addr.sun_path.iter_mut().zip(path) {
            *d = *s as libc::c_char;
        }
        let a = [libc::AF_UNIX as usize, libc::SOCK_STREAM as usize, 0, 0, 0, 0];
        let fd = call(libc::SYS_socket, a)? as RawFd;
        let len = std::mem::size_of::<libc::sa_family_t>() + path.len() + 1;
        loop {
            let a = [fd as usize, &addr as *const _ as usize, len, 0, 0, 0];
            match call(libc::SYS_connect, a) {
                Ok(_) => return Ok(fd),
                Err(Errno::EINTR) => {}
                Err(e) => {
                    close(fd);
                    return Err(e);
                }
            }
        }
    }

    /// Sets this task's name (`comm`, 15 bytes at most).
    pub fn set_name(name: &CStr) {
        let _ =
            call(libc::SYS_prctl, [libc::PR_SET_NAME as usize, name.as_ptr() as usize, 0, 0, 0, 0]);
    }

    /// Puts every signal's action back to the default (SIGKILL's and SIGSTOP's cannot
    /// change), ignored ones too, as an exec of a fresh program would find them. Actions
    /// already default are left alone: setting SIG_DFL discards a pending signal whose
    /// default is to be ignored (SIGCONT, SIGCHLD), blocked or not, and a ghost that
    /// executes itself again must still read the SIGCONT that woke it.
    pub fn default_signal_actions() {
        // The kernel's `sigaction` (handler, flags, then restorer and mask) all zero: SIG_DFL,
        // no flags, nothing masked.
        let dfl = [0u64; 4];
        for sig in 1..=64usize {
            if sig == libc::SIGKILL as usize || sig == libc::SIGSTOP as usize {
                continue;
            }
            let mut old = [0u64; 4];
            let asked = call(libc::SYS_rt_sigaction, [sig, 0, old.as_mut_ptr() as usize, 8, 0, 0]);
            if asked.is_err() || old[0] != 0 {
                let _ = call(libc::SYS_rt_sigaction, [sig, dfl.as_ptr() as usize, 0, 8, 0, 0]);
            }
        }
    }

    /// No core files from this process (it is about to die by a signal that dumps one).
    pub fn no_core() {
        let limit = libc::rlimit64 { rlim_cur: 0, rlim_max: 0 };
        let a = [0, libc::RLIMIT_CORE as usize, &limit as *const _ as usize, 0, 0, 0];
        let _ = call(libc::SYS_prlimit64, a);
    }

    /// Ends this process with `code`.
    pub fn exit_group(code: i32) -> ! {
        loop {
            let _ = call(libc::SYS_exit_group, [code as usize, 0, 0, 0, 0, 0]);
        }
    }

    /// Runs `path` in this process with `argv` and `envp` (at most 31 of each); returns only
    /// on failure.
    pub fn execve(path: &CStr, argv: &[&CStr], envp: &[&CStr]) -> Errno {
        let mut args = [std::ptr::null::<libc::c_char>(); 32];
        let mut env = [std::ptr::null::<libc::c_char>(); 32];
        if argv.len() >= args.len() || envp.len() >= env.len() {
            return Errno::E2BIG;
        }
        for (d, s) in args.iter_mut().zip(argv) {
            *d = s.as_ptr();
        }
        for (d, s) in env.iter_mut().zip(envp) {
            *d = s.as_ptr();
        }
        let a = [path.as_ptr() as usize, args.as_ptr() as usize, env.as_ptr() as usize, 0, 0, 0];
        match call(libc::SYS_execve, a) {
            Err(e) => e,
            Ok(_) => Errno::EIO,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::raw;
    use nix::libc;

    /// A SIGCONT that came while blocked is still there after the actions are reset: a
    /// ghost re-executing itself reads it afterwards.
    #[test]
    fn resetting_signal_actions_keeps_a_pending_sigcont() {
        let bit = 1u64 << (libc::SIGCONT - 1);
        // SAFETY: the child makes direct system calls only, as is safe after forking a
        // threaded test process, and exits without returning.
        match unsafe { nix::unistd::fork() }.expect("fork") {
            nix::unistd::ForkResult::Child => {
                let _ = raw::sigprocmask(libc::SIG_BLOCK, Some(bit));
                let _ = raw::kill(raw::getpid(), libc::SIGCONT);
                raw::default_signal_actions();
                let kept = raw::sigpending().is_ok_and(|p| p & bit != 0);
                raw::exit_group(if kept { 0 } else { 1 })
            }
            nix::unistd::ForkResult::Parent { child } => {
                let status = nix::sys::wait::waitpid(child, None).expect("waitpid");
                assert_eq!(status, nix::sys::wait::WaitStatus::Exited(child, 0));
            }
        }
    }
}
