//! Making one machine look like many nodes: each virtual node's slave gets its own host name
//! (UTS namespace) and its own `/tmp` (mount namespace), so processes on different nodes see
//! different machines, as on a real cluster.
//!
//! As root this is `unshare(CLONE_NEWUTS | CLONE_NEWNS)`. As a normal user it first enters a
//! new user namespace mapping the user to root inside it, where the kernel allows that. Must be
//! called while the process is single-threaded (before the runtime starts).

use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};
use thiserror::Error;

/// Why a node could not be given its own namespaces.
#[derive(Debug, Error)]
pub enum IsolateError {
    /// A namespace or mount call failed.
    #[error("cannot give the node its own {what}: {source} (run as root, or enable unprivileged user namespaces)")]
    Sys {
        /// What was attempted.
        what: &'static str,
        /// The errno.
        #[source]
        source: nix::Error,
    },
}

fn sys<T>(what: &'static str, r: nix::Result<T>) -> Result<T, IsolateError> {
    r.map_err(|source| IsolateError::Sys { what, source })
}

/// Enters new UTS and mount namespaces, sets the host name and mounts a private `/tmp`.
pub fn isolate(hostname: &str) -> Result<(), IsolateError> {
    let uid = nix::unistd::getuid();
    let gid = nix::unistd::getgid();
    if uid.is_root() {
        sys("namespaces", unshare(CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWNS))?;
    } else {
        sys(
            "user namespace",
            unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWNS),
        )?;
        let write = |path: &str, text: String| {
            std::fs::write(path, text).map_err(|e| IsolateError::Sys {
                what: "user namespace mapping",
                source: nix::Error::from_raw(e.raw_os_error().unwrap_or(0)),
            })
        };
        write("/proc/self/setgroups", "deny".into())?;
        write("/proc/self/uid_map", format!("0 {uid} 1"))?;
        write("/proc/self/gid_map", format!("0 {gid} 1"))?;
    }
    sys("host name", nix::unistd::sethostname(hostname))?;
    // Keep our mounts from propagating back to the host.
    sys(
        "mount namespace",
        mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>),
    )?;
    sys(
        "/tmp",
        mount(
            Some("tmpfs"),
            "/tmp",
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=1777"),
        ),
    )?;
    Ok(())
}
