//! Filling another process's empty anonymous memory without zeroing it first: a userfaultfd
//! of that process, taken from it with `pidfd_getfd`, and its copy (`UFFDIO_COPY`), which
//! gives each missing page a new page holding the bytes. Written through
//! `process_vm_writev`, a page is first faulted in zeroed (a huge page at a time where huge
//! pages were asked for) and then overwritten: twice the writes to memory the kernel has
//! just handed out, which on a virtual machine is the dearest kind.
//!
//! The descriptor is made by the process itself (a restorer injects the system call): a
//! userfaultfd serves the memory of the process that created it. It is made for faults
//! from user mode only (`UFFD_USER_MODE_ONLY`, which needs no privilege), and nothing waits
//! on it: a range is registered only while the filler writes it, and a write into a
//! registered page that is still missing, other than by [`Uffd::copy`], fails (`EFAULT`).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::libc;

/// `UFFD_USER_MODE_ONLY`: the flag a process gives `userfaultfd(2)` for a descriptor that
/// traps its user-mode faults only, which any process may create (Linux 5.11).
pub const USER_MODE_ONLY: u64 = 1;

const UFFD_API: u64 = 0xAA;
const REGISTER_MODE_MISSING: u64 = 1;

#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioRange {
    start: u64,
    len: u64,
}

#[repr(C)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

/// The kernel's userfaultfd requests (`_IOWR(0xAA, nr, struct)` and one `_IOR`).
mod ioctls {
    use super::{UffdioApi, UffdioCopy, UffdioRange, UffdioRegister};
    nix::ioctl_readwrite!(uffdio_api, 0xAA, 0x3F, UffdioApi);
    nix::ioctl_readwrite!(uffdio_register, 0xAA, 0x00, UffdioRegister);
    nix::ioctl_read!(uffdio_unregister, 0xAA, 0x01, UffdioRange);
    nix::ioctl_readwrite!(uffdio_copy, 0xAA, 0x03, UffdioCopy);
}
use ioctls::{uffdio_api, uffdio_copy, uffdio_register, uffdio_unregister};

/// Whether this kernel gives a process a userfaultfd for its user-mode faults (found by
/// making one here once, and closing it), and `BPROC_NO_USERFAULTFD` is not set (which
/// leaves a restore its other way of writing pages, to test or compare it).
pub fn available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        if std::env::var_os("BPROC_NO_USERFAULTFD").is_some() {
            return false;
        }
        // SAFETY: userfaultfd(2) with flags only; a descriptor it returns is closed at once.
        let fd = unsafe {
            libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC as u64 | USER_MODE_ONLY)
        };
        if fd < 0 {
            return false;
        }
        // SAFETY: the fresh descriptor, owned here alone, closed by the drop.
        drop(unsafe { OwnedFd::from_raw_fd(fd as i32) });
        true
    })
}

/// A userfaultfd of another process, ready for its ranges to be registered and filled.
pub struct Uffd(OwnedFd);

impl Uffd {
    /// Takes descriptor `fd` of process `pid` (which the caller traces, so that the pid
    /// cannot pass to another process meanwhile), a userfaultfd that process made, and
    /// completes its handshake. The caller's own memory must not be what it serves:
    /// [`Uffd::copy`] writes into that memory.
    pub fn take(pid: i32, fd: i32) -> io::Result<Uffd> {
        let pidfd = crate::pidfd_open(pid)?;
        // SAFETY: pidfd_getfd(2) with a pidfd we hold and no flags; the result is checked
        // and is a new descriptor (close-on-exec) that we own from here.
        let got = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
        if got < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: as above, a fresh descriptor owned by nothing else.
        let uffd = Uffd(unsafe { OwnedFd::from_raw_fd(got as i32) });
        let mut api = UffdioApi { api: UFFD_API, features: 0, ioctls: 0 };
        // SAFETY: UFFDIO_API on our descriptor with a struct of the kernel's layout.
        unsafe { uffdio_api(uffd.0.as_raw_fd(), &mut api) }?;
        Ok(uffd)
    }

    /// Registers `[start, start + len)` of the process's memory (whole pages of private
    /// anonymous mappings) for its missing pages.
    pub fn register(&self, start: u64, len: u64) -> io::Result<()> {
        let mut r = UffdioRegister {
            range: UffdioRange { start, len },
            mode: REGISTER_MODE_MISSING,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_REGISTER on our descriptor with a struct of the kernel's layout;
        // it names the other process's memory, which the kernel checks.
        unsafe { uffdio_register(self.0.as_raw_fd(), &mut r) }?;
        Ok(())
    }

    /// Ends a registration made by [`Uffd::register`].
    pub fn unregister(&self, start: u64, len: u64) -> io::Result<()> {
        let mut r = UffdioRange { start, len };
        // SAFETY: UFFDIO_UNREGISTER on our descriptor with a struct of the kernel's layout.
        unsafe { uffdio_unregister(self.0.as_raw_fd(), &mut r) }?;
        Ok(())
    }

    /// Writes `data` at `dst` in the process, whose pages there (whole, registered) must be
    /// missing. Returns how many bytes were written before a failure, and the failure
    /// (`EEXIST` where a page is there already).
    pub fn copy(&self, dst: u64, data: &[u8]) -> Result<(), (usize, nix::errno::Errno)> {
        let mut done = 0usize;
        while done < data.len() {
            let mut c = UffdioCopy {
                dst: dst + done as u64,
                src: data[done..].as_ptr() as u64,
                len: (data.len() - done) as u64,
                mode: 0,
                copy: 0,
            };
            // SAFETY: UFFDIO_COPY reads `len` bytes at `src`, within `data`, which we
            // borrow; it writes only the other process's memory (see `take`).
            match unsafe { uffdio_copy(self.0.as_raw_fd(), &mut c) } {
                Ok(_) => done += c.copy.max(0) as usize,
                Err(nix::errno::Errno::EAGAIN) if c.copy > 0 => done += c.copy as usize,
                Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => {}
                Err(e) => return Err((done + c.copy.max(0) as usize, e)),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A child makes a userfaultfd and maps empty memory; this process takes the descriptor
    /// and fills the memory; the child checks what it reads there.
    #[test]
    fn another_process_s_memory_is_filled() {
        const LEN: usize = 4 << 20;
        let (rd, wr) = nix::unistd::pipe().unwrap();
        let (back_rd, back_wr) = nix::unistd::pipe().unwrap();
        // SAFETY: the child only makes system calls and exits; it allocates nothing.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                // SAFETY: plain system calls on our own memory; the mapping is only read.
                unsafe {
                    let fd = libc::syscall(
                        libc::SYS_userfaultfd,
                        libc::O_CLOEXEC as u64 | USER_MODE_ONLY,
                    );
                    let p = libc::mmap(
                        std::ptr::null_mut(),
                        LEN,
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                        -1,
                        0,
                    );
                    let msg = [fd as u64, p as u64];
                    libc::write(wr.as_raw_fd(), msg.as_ptr().cast(), 16);
                    let mut go = 0u8;
                    libc::read(back_rd.as_raw_fd(), (&mut go as *mut u8).cast(), 1);
                    // Its own descriptor goes before it reads: should the test have failed
                    // with the memory registered, the registration ends with the last
                    // descriptor and the reads below find zeroes rather than wait forever.
                    libc::close(fd as i32);
                    let mem = std::slice::from_raw_parts(p as *const u8, LEN);
                    let ok = mem.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8);
                    libc::_exit(if ok { 0 } else { 1 });
                }
            }
            nix::unistd::ForkResult::Parent { child } => {
                // Killed and reaped should an assertion fail first.
                struct Reap(nix::unistd::Pid, bool);
                impl Drop for Reap {
                    fn drop(&mut self) {
                        if !self.1 {
                            let _ = nix::sys::signal::kill(self.0, nix::sys::signal::SIGKILL);
                            let _ = nix::sys::wait::waitpid(self.0, None);
                        }
                    }
                }
                let mut reap = Reap(child, false);
                drop((wr, back_rd));
                let mut msg = [0u8; 16];
                nix::unistd::read(rd.as_raw_fd(), &mut msg).unwrap();
                let fd = u64::from_ne_bytes(msg[..8].try_into().unwrap()) as i32;
                let at = u64::from_ne_bytes(msg[8..].try_into().unwrap());
                let data: Vec<u8> = (0..LEN).map(|i| (i % 251) as u8).collect();
                let uffd = Uffd::take(child.as_raw(), fd).unwrap();
                uffd.register(at, LEN as u64).unwrap();
                uffd.copy(at, &data[..LEN / 2]).unwrap();
                uffd.copy(at + LEN as u64 / 2, &data[LEN / 2..]).unwrap();
                // A page that is there already is refused, and said so.
                assert_eq!(uffd.copy(at, &data[..4096]), Err((0, nix::errno::Errno::EEXIST)));
                uffd.unregister(at, LEN as u64).unwrap();
                nix::unistd::write(&back_wr, b"g").unwrap();
                let status = nix::sys::wait::waitpid(child, None).unwrap();
                reap.1 = true;
                assert_eq!(status, nix::sys::wait::WaitStatus::Exited(child, 0));
            }
        }
    }
}
