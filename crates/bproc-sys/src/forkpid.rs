//! Forks told to the slave before they happen, so that the child can take a pid chosen for
//! it (its ghost's, on the master): a seccomp filter with a user-notification listener.
//!
//! A process the slave starts in its pid namespace gets, before it execs, a filter that
//! - sends `fork`, `vfork` and `clone` without `CLONE_THREAD` (a new process) to the
//!   listener: the caller waits until the slave answers;
//! - makes `clone3` fail with `ENOSYS`, so that glibc (threads, `posix_spawn`) falls back to
//!   `clone`, whose flags a classic BPF program can read (`clone3`'s are behind a pointer);
//! - lets everything else through, threads included.
//!
//! Its children inherit the filter, and with it the one listener. The slave answers each
//! notification with [`Listener::proceed`] (`SECCOMP_USER_NOTIF_FLAG_CONTINUE`): the call
//! then runs as if nothing had stopped it. Before that, the namespace's init writes
//! `ns_last_pid` ([`crate::LastPid`], from [`crate::PidNamespace::last_pid`]), so the kernel
//! gives the child the next pid. Nothing here is a security boundary: the filter only
//! delays forks, and a process that gets past it (a `clone3` of its own with a fallback it
//! does not have) merely loses the chosen pid.
//!
//! The filter is installed by the child of [`spawn`](crate::spawn) while it is still root
//! (which needs no `no_new_privs`, so set-user-id programs keep working), and the listener
//! travels to the slave over a Unix socket (`SCM_RIGHTS`) made by [`channel`]. When no
//! process uses the filter any more, the listener polls as hung up.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::libc;

/// `AUDIT_ARCH_X86_64` of `<linux/audit.h>`.
const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;

/// Offsets in `struct seccomp_data`.
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;
const DATA_ARG0_LOW: u32 = 16;

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
static FILTER: [libc::sock_filter; 12] = [
    /* 0 */ stmt(LD_W_ABS, DATA_ARCH),
    /* 1 */ jump(JEQ_K, AUDIT_ARCH_X86_64, 0, 9), // else allow (11)
    /* 2 */ stmt(LD_W_ABS, DATA_NR),
    /* 3 */ jump(JEQ_K, libc::SYS_clone3 as u32, 5, 0), // → ENOSYS (9)
    /* 4 */ jump(JEQ_K, libc::SYS_fork as u32, 5, 0), // → notify (10)
    /* 5 */ jump(JEQ_K, libc::SYS_vfork as u32, 4, 0), // → notify (10)
    /* 6 */ jump(JEQ_K, libc::SYS_clone as u32, 0, 4), // else allow (11)
    /* 7 */ stmt(LD_W_ABS, DATA_ARG0_LOW),
    /* 8 */
    jump(JSET_K, libc::CLONE_THREAD as u32, 2, 1), // a thread: allow (11); else notify
    /* 9 */ stmt(RET_K, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
    /* 10 */ stmt(RET_K, libc::SECCOMP_RET_USER_NOTIF),
    /* 11 */ stmt(RET_K, libc::SECCOMP_RET_ALLOW),
];

/// What the child of `spawn` needs to install the filter and send the listener, prepared
/// by the parent: it only fills in the fd and makes two calls.
pub(crate) struct ChildPrep {
    prog: libc::sock_fprog,
    sock: i32,
    msg: libc::msghdr,
    iov: libc::iovec,
    byte: u8,
    /// `cmsghdr` and one fd, aligned.
    control: [u64; 4],
}

impl ChildPrep {
    /// Prepares the sending of a listener on `sock`. The result must not move once
    /// [`ChildPrep::arm`] has run (it points into itself).
    pub(crate) fn new(sock: BorrowedFd<'_>) -> ChildPrep {
        ChildPrep {
            prog: libc::sock_fprog { len: FILTER.len() as u16, filter: FILTER.as_ptr().cast_mut() },
            sock: sock.as_raw_fd(),
            // SAFETY: msghdr is plain data; all-zero is its empty value.
            msg: unsafe { std::mem::zeroed() },
            iov: libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 },
            byte: 0,
            control: [0; 4],
        }
    }

    /// Points the message at this struct's own buffers and writes the control header.
    pub(crate) fn arm(&mut self) {
        self.iov = libc::iovec { iov_base: (&mut self.byte as *mut u8).cast(), iov_len: 1 };
        self.msg.msg_iov = &mut self.iov;
        self.msg.msg_iovlen = 1;
        self.msg.msg_control = self.control.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE is arithmetic on a constant.
        self.msg.msg_controllen = unsafe { libc::CMSG_SPACE(4) } as usize;
        // SAFETY: `msg` names `control`, which is large enough for one header and an int
        // (CMSG_SPACE(4) = 24 bytes of the 32), so CMSG_FIRSTHDR is inside it.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&self.msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(4) as usize;
        }
    }

    /// In the child: installs the filter and sends its listener; on failure the child goes
    /// on without (its forks keep the pids the kernel gives).
    ///
    /// # Safety
    /// Only in the child of `spawn`, with `self` armed and alive; makes direct system calls
    /// only.
    pub(crate) unsafe fn install(&mut self) {
        // SAFETY: as documented; `prog` points at the static FILTER.
        unsafe {
            let fd = libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                libc::SECCOMP_FILTER_FLAG_NEW_LISTENER,
                &self.prog as *const libc::sock_fprog,
            );
            if fd < 0 {
                return;
            }
            let fd = fd as i32;
            let c = libc::CMSG_FIRSTHDR(&self.msg);
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<i32>(), fd);
            libc::sendmsg(self.sock, &self.msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL);
            libc::close(fd);
        }
    }
}

/// A socket pair that carries a listener from the child of `spawn` to the caller: put the
/// first in [`SpawnSpec::fork_listener`](crate::SpawnSpec::fork_listener) and take the
/// listener from the second with [`take_listener`] once `spawn` returned.
pub fn channel() -> std::io::Result<(OwnedFd, OwnedFd)> {
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    let (a, b) = socketpair(
        AddressFamily::Unix,
        SockType::Datagram,
        None,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
    )?;
    Ok((a, b))
}

/// The listener the child sent on `rx` (the second end of [`channel`]), if it sent one.
pub fn take_listener(rx: BorrowedFd<'_>) -> Option<Listener> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut byte = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!(i32);
    let msg = recvmsg::<()>(
        rx.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .ok()?;
    for c in msg.cmsgs().ok()? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            let fd = *fds.first()?;
            // SAFETY: the kernel just installed `fd` in this process for this message;
            // nothing else owns it.
            return Some(Listener(unsafe { OwnedFd::from_raw_fd(fd) }));
        }
    }
    None
}

/// A seccomp user-notification listener: the forks of one started process and its
/// descendants.
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

impl Listener {
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
