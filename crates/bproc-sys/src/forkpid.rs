//! Forks told to the slave before they happen, so that the child can take a pid chosen for
//! it (its ghost's, on the master): a seccomp filter with a user-notification listener.
//!
//! The slave's spawner thread installs, once, a filter that
//! - sends `fork`, `vfork` and `clone` without `CLONE_THREAD` (a new process) to the
//!   listener: the caller waits until the slave answers;
//! - makes `clone3` fail with `ENOSYS`, so that glibc (threads, `posix_spawn`) falls back to
//!   `clone`, whose flags a classic BPF program can read (`clone3`'s are behind a pointer),
//!   unless its size argument is [`CLONE3_SIZE`]: the size this crate's own `clone3` calls
//!   pass ([`CloneArgs`](crate::CloneArgs) is padded to it), which no C library uses;
//! - lets everything else through, threads included.
//!
//! Every process the thread starts or restores inherits the filter, and with it the one
//! listener, as do their children: one filter made once, where a filter per process cost
//! each start a compiled program, a listener passed over a socket and two wakeups of the
//! slave's forks thread, and each end the freeing of that program (about a tenth of a
//! 1024-node launch). The slave answers each notification with [`Listener::proceed`]
//! (`SECCOMP_USER_NOTIF_FLAG_CONTINUE`): the call then runs as if nothing had stopped it.
//! Before that, the namespace's init writes `ns_last_pid` ([`crate::LastPid`], from
//! [`crate::PidNamespace::last_pid`]), so the kernel gives the child the next pid. Nothing
//! here is a security boundary: the filter only delays forks, and a process that gets past
//! it (a `clone3` of the size above, or of its own with a fallback it does not have) merely
//! loses the chosen pid.
//!
//! The thread installs it as root (CAP_SYS_ADMIN needs no `no_new_privs`, so set-user-id
//! programs keep working under it).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::libc;

/// `AUDIT_ARCH_X86_64` of `<linux/audit.h>`.
const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;

/// The size argument of this crate's `clone3` calls, which the filter lets through: larger
/// than the kernel's `struct clone_args` (88 bytes), the rest zero, which the kernel accepts.
pub const CLONE3_SIZE: usize = 96;

/// Offsets in `struct seccomp_data`.
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;
const DATA_ARG0_LOW: u32 = 16;
const DATA_ARG1_LOW: u32 = 24;

const fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt: 0, jf: 0, k }
}

const fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const JSET_K: u16 = (libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K) as u16;
const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;

/// The filter (x86-64 system call numbers; another architecture's calls go through).
static FILTER: [libc::sock_filter; 14] = [
    /* 0 */ stmt(LD_W_ABS, DATA_ARCH),
    /* 1 */ jump(JEQ_K, AUDIT_ARCH_X86_64, 0, 11), // else allow (13)
    /* 2 */ stmt(LD_W_ABS, DATA_NR),
    /* 3 */ jump(JEQ_K, libc::SYS_clone3 as u32, 0, 2), // else (6)
    /* 4 */ stmt(LD_W_ABS, DATA_ARG1_LOW),
    /* 5 */ jump(JEQ_K, CLONE3_SIZE as u32, 7, 5), // ours: allow (13); else ENOSYS (11)
    /* 6 */ jump(JEQ_K, libc::SYS_fork as u32, 5, 0), // → notify (12)
    /* 7 */ jump(JEQ_K, libc::SYS_vfork as u32, 4, 0), // → notify (12)
    /* 8 */ jump(JEQ_K, libc::SYS_clone as u32, 0, 4), // else allow (13)
    /* 9 */ stmt(LD_W_ABS, DATA_ARG0_LOW),
    /* 10 */
    jump(JSET_K, libc::CLONE_THREAD as u32, 2, 1), // a thread: allow (13); else notify
    /* 11 */ stmt(RET_K, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
    /* 12 */ stmt(RET_K, libc::SECCOMP_RET_USER_NOTIF),
    /* 13 */ stmt(RET_K, libc::SECCOMP_RET_ALLOW),
];

/// Installs the filter on the calling thread (not its process's other threads) and returns
/// its listener. Needs CAP_SYS_ADMIN. Everything the thread starts from then on inherits the
/// filter; the thread's own `clone3` calls must pass [`CLONE3_SIZE`].
///
/// A fork waiting for the slave is interrupted by any signal that comes meanwhile, and then
/// fails with `EINTR` unless the handler restarts calls (dash's SIGCHLD handler does not: the
/// first child of `echo a | cat` ended while the second fork waited, and the shell said
/// "Cannot fork"). Where the kernel has it (Linux 5.19), the fork waits unmoved by signals
/// once the slave has taken it (`SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV`), which leaves only
/// the moment before the slave's `fork-taker` thread reads it, which
/// [`Listener::hurry_reader`] keeps short.
pub fn install_here() -> std::io::Result<Listener> {
    let prog = libc::sock_fprog { len: FILTER.len() as u16, filter: FILTER.as_ptr().cast_mut() };
    let install = |flags: libc::c_ulong| {
        // SAFETY: `prog` points at the static FILTER, which the kernel copies; the call
        // installs a filter on this thread and returns a new fd, or fails.
        unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                flags,
                &prog as *const libc::sock_fprog,
            )
        }
    };
    let new_listener = libc::SECCOMP_FILTER_FLAG_NEW_LISTENER;
    let mut fd = install(new_listener | libc::SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV);
    if fd < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
        fd = install(new_listener);
    }
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just made `fd` for this call; nothing else owns it.
    Ok(Listener(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
}

/// How [`Listener::hurry_reader`] left the calling thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hurry {
    /// Real-time (`SCHED_FIFO`, its lowest priority): it runs as soon as it wakes, before
    /// any ordinary thread, on the core the kernel picks for it.
    RealTime,
    /// The most favoured ordinary thread (nice −20), woken on the forking task's core where
    /// the kernel can do that; elsewhere only when real-time was refused.
    Nice,
}

/// Makes the calling thread (not its process's others) real-time, or if `want` is
/// [`Hurry::Nice`] or real-time is refused, nice −20; neither is passed on to children
/// (`SCHED_RESET_ON_FORK`). Needs CAP_SYS_NICE; the error when refused.
fn hurry_this_thread(want: Hurry) -> std::io::Result<Hurry> {
    if want == Hurry::RealTime {
        let param = libc::sched_param { sched_priority: 1 };
        // SAFETY: `param` is a live sched_param; pid 0 is the calling thread.
        let r = unsafe {
            libc::sched_setscheduler(0, libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK, &param)
        };
        if r == 0 {
            return Ok(Hurry::RealTime);
        }
    }
    let tid = nix::unistd::gettid().as_raw() as libc::id_t;
    // SAFETY: plain system call on this thread's id.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, -20) } == 0 {
        return Ok(Hurry::Nice);
    }
    Err(std::io::Error::last_os_error())
}

/// A seccomp user-notification listener: the forks of the processes a thread with the
/// filter started, and of their descendants.
#[derive(Debug)]
pub struct Listener(OwnedFd);

/// One fork waiting for the slave's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Notification {
    /// The kernel's id, for the answer.
    pub id: u64,
    /// The caller's pid in the reader's pid namespace.
    pub pid: i32,
    /// The system call (`fork`, `vfork` or `clone`).
    pub nr: i32,
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// `SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP` of `<linux/seccomp.h>` (Linux 6.6).
const USER_NOTIF_FD_SYNC_WAKE_UP: libc::c_ulong = 1;

impl Listener {
    /// Makes the calling thread, the one that reads this listener, run as soon as a fork
    /// comes, so that it reads the notification before a signal can interrupt the fork
    /// (see [`install_here`]). Where the kernel can wake it on the forking task's own core
    /// (`SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP`, Linux 6.6), which is free the moment the fork
    /// starts to wait, where waking another core can take a while (an idle core of a
    /// virtual machine first has to be run by its host), it becomes an ordinary thread at
    /// nice −20: the kernel wakes only ordinary threads so. Elsewhere it runs real-time, on
    /// whichever core. The thread must only ever block on the listener: a real-time thread
    /// that spins holds a core (the kernel's real-time throttling still leaves the others 5%).
    pub fn hurry_reader(&self) -> std::io::Result<Hurry> {
        let want = match self.wake_on_callers_cpu() {
            Ok(()) => Hurry::Nice,
            Err(_) => Hurry::RealTime,
        };
        hurry_this_thread(want)
    }

    /// Has a fork wake the thread waiting on this listener on the forking task's own core
    /// (`EINVAL` before Linux 6.6).
    fn wake_on_callers_cpu(&self) -> std::io::Result<()> {
        // SAFETY: this ioctl takes its flags as its argument, not through a pointer.
        let r = unsafe {
            libc::ioctl(
                self.0.as_raw_fd(),
                libc::SECCOMP_IOCTL_NOTIF_SET_FLAGS as _,
                USER_NOTIF_FD_SYNC_WAKE_UP,
            )
        };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Reads the next notification (`SECCOMP_IOCTL_NOTIF_RECV`, seccomp_unotify(2)); blocks
    /// until there is one, so poll first. `ENOENT`: the caller went away meanwhile.
    pub fn recv(&self) -> std::io::Result<Notification> {
        // SAFETY: seccomp_notif is plain data; the kernel wants it zeroed.
        let mut n: libc::seccomp_notif = unsafe { std::mem::zeroed() };
        // SAFETY: the ioctl writes one `seccomp_notif` into `n`, which is that size.
        let r =
            unsafe { libc::ioctl(self.0.as_raw_fd(), libc::SECCOMP_IOCTL_NOTIF_RECV as _, &mut n) };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Notification { id: n.id, pid: n.pid as i32, nr: n.data.nr })
    }

    /// Lets the call of notification `id` run as it would have
    /// (`SECCOMP_USER_NOTIF_FLAG_CONTINUE`). `ENOENT`: the caller went away meanwhile.
    pub fn proceed(&self, id: u64) -> std::io::Result<()> {
        let mut resp = libc::seccomp_notif_resp {
            id,
            val: 0,
            error: 0,
            flags: libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32,
        };
        // SAFETY: the ioctl reads one `seccomp_notif_resp` from `resp`.
        let r = unsafe {
            libc::ioctl(self.0.as_raw_fd(), libc::SECCOMP_IOCTL_NOTIF_SEND as _, &mut resp)
        };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_jump_lands_inside_the_filter() {
        for (i, ins) in FILTER.iter().enumerate() {
            if ins.code & 0x07 == libc::BPF_JMP as u16 {
                assert!(i + 1 + (ins.jt as usize) < FILTER.len(), "jt of {i}");
                assert!(i + 1 + (ins.jf as usize) < FILTER.len(), "jf of {i}");
            }
        }
        assert_eq!(FILTER.last().map(|i| i.code), Some(RET_K));
    }
}
