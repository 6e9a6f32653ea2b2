//! The raw Linux that bproc needs where no safe wrapper exists. All of the workspace's
//! `unsafe` code lives here, each block with the invariants it relies on.
//!
//! Two things need it. Starting a remote process as the caller: `std::process::Command` can
//! set a uid and gid but not supplementary groups on stable Rust, and it drops groups itself
//! when it changes the uid, so the whole switch (groups, then gid, then uid) is done here in a
//! `pre_exec` hook, followed by the umask and the files that `bpsh -I/-O/-E` open on the node
//! with the caller's rights. And giving one thread of a daemon the caller's filesystem identity
//! for a copy ([`thread_fs_identity`]), which needs the raw `setgroups` system call.
#![allow(unsafe_code)]
#![deny(missing_docs)]

mod spawn;

pub use spawn::{
    clone_sibling, close_fds_from, default_signal_actions, fork_single_threaded, inherited_socket,
    signal_from, spawn, PidNamespace, SpawnSpec,
};

use std::ffi::CString;
use std::os::unix::process::CommandExt;
use std::process::Command;

use nix::fcntl::{open, OFlag};
use nix::sys::stat::{umask, Mode};
use nix::unistd::{close, dup2, setgid, setgroups, setuid, Gid, Uid};

/// Who a child runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
}

/// A file the child opens onto one of its fds after taking its identity.
#[derive(Debug, Clone)]
pub struct FdFile {
    /// Target fd (0, 1 or 2).
    pub fd: i32,
    /// Path on this machine.
    pub path: CString,
    /// Open for writing (create, truncate, mode 0666 before umask) rather than reading.
    pub write: bool,
}

/// A root to confine the child to (a diskless node's filesystem) and its working directory
/// inside it. Applied before the identity switch, since `chroot` needs privilege.
#[derive(Debug, Clone)]
pub struct Jail {
    /// The new root.
    pub root: CString,
    /// Working directory inside it.
    pub cwd: CString,
}

/// A resource limit for the child: (resource number as in `<sys/resource.h>`, soft, hard),
/// `u64::MAX` meaning unlimited.
pub type Limit = (u32, u64, u64);

/// Makes `cmd`'s child take the caller's resource `limits` (before the identity switch, so that
/// a root slave can raise them to the caller's values), enter its `jail`, take `identity` (when given: groups, gid, uid, in that order, so the
/// switch cannot be undone), set `mask` as its umask, open `files` onto their fds, and die
/// with SIGKILL when the thread that started it exits (so no process outlives its slave
/// daemon), in the child, just before `exec`. A failure aborts the spawn with the errno,
/// which `Command::spawn` returns.
pub fn prepare_child(
    cmd: &mut Command,
    limits: Vec<Limit>,
    jail: Option<Jail>,
    identity: Option<Identity>,
    mask: u32,
    files: Vec<FdFile>,
) {
    // Everything the hook needs is built here, before fork: the hook must not allocate.
    let ids = identity.map(|i| {
        let groups: Vec<Gid> = i.groups.iter().map(|g| Gid::from_raw(*g)).collect();
        (Uid::from_raw(i.uid), Gid::from_raw(i.gid), groups)
    });
    let mode = Mode::from_bits_truncate(mask & 0o777);
    let hook = move || -> std::io::Result<()> {
        for &(resource, soft, hard) in &limits {
            let rlim = nix::libc::rlimit { rlim_cur: soft, rlim_max: hard };
            // A limit this node cannot grant (a non-root slave raising a hard limit) is left
            // as the node has it rather than failing the launch.
            // SAFETY: setrlimit is async-signal-safe; `rlim` is a valid, initialised struct
            // on this stack frame, and an unknown resource number only returns EINVAL.
            let _ = unsafe { nix::libc::setrlimit(resource as _, &rlim) };
        }
        if let Some(j) = &jail {
            nix::unistd::chroot(j.root.as_c_str())?;
            nix::unistd::chdir(j.cwd.as_c_str())?;
        }
        if let Some((uid, gid, groups)) = &ids {
            setgroups(groups)?;
            setgid(*gid)?;
            setuid(*uid)?;
        }
        // After the identity switch, which clears the parent-death signal.
        nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
        umask(mode);
        for f in &files {
            let flags = if f.write {
                OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_TRUNC
            } else {
                OFlag::O_RDONLY
            };
            let opened = open(f.path.as_c_str(), flags, Mode::from_bits_truncate(0o666))?;
            if opened != f.fd {
                dup2(opened, f.fd)?;
                close(opened)?;
            }
        }
        Ok(())
    };
    // SAFETY: the hook runs in the child between fork and exec, where only async-signal-safe
    // work is allowed. It makes only direct system calls (setrlimit, chroot, chdir,
    // setgroups, setgid, setuid, prctl, umask, open, dup2, close) through nix wrappers that do not allocate: the group list, the mode
    // and the NUL-terminated paths were all built before the fork and are only borrowed, and
    // errors are returned as plain errno values. It takes no locks and touches no state
    // shared with other threads.
    unsafe {
        cmd.pre_exec(hook);
    }
}

/// Makes the calling thread, and only it, open and create files as `id`: its supplementary
/// groups, then its filesystem gid and uid. The rest of the process keeps its identity, so a
/// root daemon can serve each user's copy on its own thread. From root, the kernel also drops
/// the thread's filesystem capabilities, so permission checks apply as they would to the user.
///
/// Call it on a thread that does nothing else afterwards (the change cannot be undone safely).
pub fn thread_fs_identity(id: &Identity) -> nix::Result<()> {
    let groups: Vec<nix::libc::gid_t> = id.groups.clone();
    // SAFETY: the raw system call (not glibc's setgroups, which changes every thread of the
    // process) reads `groups.len()` gids from a live, correctly typed buffer and changes only
    // the calling thread's credentials.
    let r = unsafe { nix::libc::syscall(nix::libc::SYS_setgroups, groups.len(), groups.as_ptr()) };
    if r != 0 {
        return Err(nix::Error::last());
    }
    nix::unistd::setfsgid(Gid::from_raw(id.gid));
    nix::unistd::setfsuid(Uid::from_raw(id.uid));
    // setfs[ug]id report the previous value, never an error: ask again to see what took.
    if nix::unistd::setfsuid(Uid::from_raw(id.uid)).as_raw() != id.uid
        || nix::unistd::setfsgid(Gid::from_raw(id.gid)).as_raw() != id.gid
    {
        return Err(nix::Error::EPERM);
    }
    Ok(())
}

/// The supplementary groups of process `pid`, from `/proc/<pid>/status` (the kernel's
/// `SO_PEERCRED` gives only the uid and gid); empty when the process is gone.
pub fn groups_of(pid: i32) -> Vec<u32> {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return Vec::new();
    };
    text.lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| g.split_whitespace().filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Stdio;

    #[test]
    fn files_and_umask_apply_in_the_child() {
        let dir = std::env::temp_dir().join(format!("bproc-sys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("out");
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "umask; ulimit -n; echo hello"]).stdout(Stdio::null());
        let path = CString::new(out.to_str().unwrap()).unwrap();
        prepare_child(
            &mut cmd,
            vec![(7, 77, 77)],
            None,
            None,
            0o027,
            vec![FdFile { fd: 1, path, write: true }],
        );
        assert!(cmd.status().unwrap().success());
        // Resource 7 is RLIMIT_NOFILE.
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "0027\n77\nhello\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_input_file_fails_the_spawn() {
        let mut cmd = Command::new("/bin/true");
        let path = CString::new("/no/such/file/here").unwrap();
        prepare_child(
            &mut cmd,
            vec![],
            None,
            None,
            0o022,
            vec![FdFile { fd: 0, path, write: false }],
        );
        let err = cmd.spawn().unwrap_err();
        assert_eq!(err.raw_os_error(), Some(2));
    }
}
