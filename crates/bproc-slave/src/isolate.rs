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

/// Where a diskless node keeps its files: `root` is what its processes see as `/` (a tmpfs
/// holding `/proc`, `/dev`, `/tmp` and what launches staged), `cache` holds staged files by
/// content hash, on the same filesystem so that installing one is a hard link.
#[derive(Debug, Clone)]
pub struct Diskless {
    /// The processes' root.
    pub root: std::path::PathBuf,
    /// The content-addressed cache.
    pub cache: std::path::PathBuf,
}

/// Builds a diskless node's filesystem under `base` (which must be on a private tmpfs: the
/// node's own `/tmp` after [`isolate`]). Needs root.
pub fn diskless(base: &std::path::Path) -> Result<Diskless, IsolateError> {
    let d = Diskless { root: base.join("root"), cache: base.join("cache") };
    let mk = |p: std::path::PathBuf| {
        std::fs::create_dir_all(&p).map_err(|e| IsolateError::Sys {
            what: "diskless root",
            source: nix::Error::from_raw(e.raw_os_error().unwrap_or(0)),
        })
    };
    for dir in ["proc", "dev", "tmp"] {
        mk(d.root.join(dir))?;
    }
    mk(d.cache.clone())?;
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(d.root.join("tmp"), std::fs::Permissions::from_mode(0o1777));
    sys(
        "diskless /proc",
        mount(Some("proc"), &d.root.join("proc"), Some("proc"), MsFlags::empty(), None::<&str>),
    )?;
    sys(
        "diskless /dev",
        mount(
            Some("/dev"),
            &d.root.join("dev"),
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        ),
    )?;
    crate::info::DISKLESS.store(true, std::sync::atomic::Ordering::Relaxed);
    Ok(d)
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
    // Huge pages where the kernel offers them: writing a large file into a tmpfs of small
    // pages costs a page allocation per 4 KiB and runs at a fraction of memory speed.
    let tmp = |opts: &str| {
        mount(
            Some("tmpfs"),
            "/tmp",
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(opts),
        )
    };
    sys("/tmp", tmp("mode=1777,huge=within_size").or_else(|_| tmp("mode=1777")))?;
    // Shared within the node: the namespace its processes run in (with their own /proc)
    // then sees the node's mounts, and the node sees theirs.
    sys(
        "mount propagation",
        mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_SHARED, None::<&str>),
    )?;
    Ok(())
}
