//! Waiting for a process to end from a tokio runtime, without a thread: the process's pidfd,
//! which polls readable once the process has ended, registered with the runtime's reactor.
//! (Registering an fd is `unsafe` in tokio: the fd must stay open and the same while
//! registered, which owning it here guarantees.)

use std::os::fd::OwnedFd;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// A process whose end can be awaited.
pub struct PidWait(AsyncFd<OwnedFd>);

impl PidWait {
    /// Watches the process `pidfd` refers to (a pidfd, opened non-blocking); must be called
    /// within a tokio runtime with I/O enabled.
    pub fn new(pidfd: OwnedFd) -> std::io::Result<PidWait> {
        // SAFETY: the AsyncFd owns the OwnedFd, so the fd stays open and names the same
        // pidfd until the AsyncFd is dropped, and `as_raw_fd` always returns it.
        let fd = unsafe { AsyncFd::register_with_interest(pidfd, Interest::READABLE) }?;
        Ok(PidWait(fd))
    }

    /// Returns once the process has ended (it may not be reaped yet); at once if it has.
    pub async fn ended(&self) -> std::io::Result<()> {
        // Readiness is left set: a pidfd stays readable once its process has ended.
        self.0.readable().await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_s_end_is_awaited() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_io().build().unwrap();
        let mut child = std::process::Command::new("sleep").arg("0.1").spawn().unwrap();
        let pid = child.id() as nix::libc::c_int;
        // SAFETY: pidfd_open with a live child's pid; the result is checked and owned.
        let fd =
            unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, pid, nix::libc::O_NONBLOCK) };
        assert!(fd >= 0, "pidfd_open: {}", std::io::Error::last_os_error());
        // SAFETY: a fresh fd we own.
        let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
        rt.block_on(async {
            let w = PidWait::new(fd).unwrap();
            w.ended().await.unwrap();
            w.ended().await.unwrap();
        });
        assert!(child.try_wait().unwrap().is_some(), "the child is reapable once it has ended");
    }
}
