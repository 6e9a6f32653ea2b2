//! The raw Linux that bproc needs where no safe wrapper exists, each `unsafe` block with the
//! invariants it relies on. (Moving a process, as raw as this, is `bproc-ckpt`; the C
//! boundaries are `bproc-capi` and `bproc-nss`.)
//!
//! What needs it:
//! - Starting a remote process ([`spawn`]): `clone3` with `set_tid` (its ghost's pid in the
//!   master's pid namespace), sharing the daemon's memory until exec, then in the child the
//!   identity switch (groups, gid, uid: std cannot set supplementary groups on stable Rust),
//!   limits, root, umask and the files `bpsh -I/-O/-E` open with the caller's rights.
//! - The pid namespace and its init ([`PidNamespace`]).
//! - Giving one thread of a daemon the caller's filesystem identity for a copy
//!   ([`thread_fs_identity`]), which needs the raw `setgroups` system call.
//! - Forwarded signals that name their sender ([`signal_from`]).
//! - The ghost's process plumbing: forks, inherited fds, signal dispositions, and the light
//!   tasks that let the ghosts of one launch share one address space ([`task`]).
//!
//! - Memory of its own for a large buffer filled once ([`bigbuf`]), grown without copies.
//! - Children's state changes without a restore's traced stops ([`child_signals`]): a
//!   signalfd, or a handler, and the signal's code.
//! - Filling a restored process's memory without zeroing it first ([`uffd`]): its
//!   userfaultfd, taken with `pidfd_getfd`.
//! - The kernel's process events ([`procevents`]): the netlink subscription, its classic BPF
//!   filter, and the hub's eBPF filter and map (`bpf(2)`).
//! - Socket options nix has no wrapper for ([`defer_accept`]).
//!
//! It also reads what the kernel says about another process ([`peer`]: groups, limits,
//! umask), since that is as raw as the rest and every daemon needs it.
#![allow(unsafe_code)]
#![deny(missing_docs)]

pub mod bigbuf;
pub mod forkpid;
pub mod peer;
pub mod procevents;
mod spawn;
pub mod task;
pub mod uffd;

pub use spawn::{
    clone_sibling, close_fds_from, default_signal_actions, fork_single_threaded, inherited_pipe,
    inherited_socket, inherited_socket_fd, pidfd_open, signal_from, signal_from_inside, spawn,
    spawn_errno, CStrings, CloneArgs, InteriorNul, LastPid, PidNamespace, SpawnFailed, SpawnSpec,
    SpawnStep, MAX_FDS,
};

use std::ffi::CString;

use nix::libc;

use nix::unistd::{Gid, Uid};

/// Ends the process at once with `code`: no exit handlers, no buffers flushed (a copy of a
/// process that moved on leaves the way a failed exec's child does).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit has no preconditions.
    unsafe { libc::_exit(code) }
}

/// Raises this process's soft limit on open files to its hard limit (`setrlimit(2)`,
/// `RLIMIT_NOFILE`) and returns the limit now in force. Daemons call it at start: every
/// connection costs a descriptor, and the default soft limit (often 1024) is far below what
/// the kernel allows. The processes a slave starts take their callers' limits (from the
/// launch), not these.
pub fn raise_fd_limit() -> nix::Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(hard.max(soft))
}

/// Has listening socket `fd` hand over a connection only once its first bytes have come
/// (`TCP_DEFER_ACCEPT`), waiting up to `secs` for them: a server that reads at once then wakes
/// once per connection, not once for the connection and again for its data. nix has no
/// wrapper for it.
pub fn defer_accept(fd: std::os::fd::BorrowedFd<'_>, secs: u32) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    set_int_option(fd.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_DEFER_ACCEPT, secs as i32)
}

/// Sets socket option `name` of `level` on `fd` to the int `value` (`setsockopt(2)`), for
/// the options nix has no wrapper for.
pub(crate) fn set_int_option(
    fd: std::os::fd::RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> std::io::Result<()> {
    // SAFETY: setsockopt reads an int that lives on this stack for the call, of the size given.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Makes `cmd` start its program with no signal blocked (`sigprocmask(2)`), whatever the
/// calling thread blocks. The mask survives fork and exec, and std does not reset it, so a
/// program that blocks signals to read them from a signalfd (bpcluster's Ctrl-C) would start
/// daemons that never act on SIGTERM.
pub fn unblock_signals_in(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the hook runs in the child between fork and exec, where only async-signal-safe
    // work is allowed: it builds an empty set on the stack and calls sigprocmask, which is
    // async-signal-safe; nothing is allocated or locked.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::signal::sigprocmask(
                nix::sys::signal::SigmaskHow::SIG_SETMASK,
                Some(&nix::sys::signal::SigSet::empty()),
                None,
            )?;
            Ok(())
        });
    }
}

/// What says that a child of this process exited, was stopped by a signal or continued:
/// SIGCHLD, except for a traced child's stop (`CLD_TRAPPED`), which only the tracing thread
/// waits for. A restore traces its process through a dozen stops, and a reaper woken by each
/// would find nothing to reap.
///
/// The signal is read from a signalfd, with no handler to run, where every thread blocks it
/// (the waiting one too); a thread that takes it all the same (one that does not block it)
/// runs a handler that writes a byte to a socket, read here too.
///
/// A restore sets `SA_NOCLDSTOP` meanwhile ([`without_stop_signals`]), so that its stops
/// raise no signal at all.
///
/// A signal already pending absorbs another of its kind, so a child's end signalled while a
/// traced stop's SIGCHLD is pending wakes no one: whoever traces a child waits, once the
/// tracing is over, until that signal is taken ([`await_child_signals`]), then has the
/// reaper look.
pub struct ChildSignals {
    pending: nix::sys::signalfd::SignalFd,
    handled: std::os::unix::net::UnixStream,
}

/// Sets up [`ChildSignals`]: the signalfd, and the handler with its socket.
pub fn child_signals() -> std::io::Result<ChildSignals> {
    use nix::sys::signalfd::{SfdFlags, SignalFd};
    let mask = nix::sys::signal::SigSet::from(nix::sys::signal::Signal::SIGCHLD);
    let pending = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
    let (rx, tx) = std::os::unix::net::UnixStream::pair()?;
    tx.set_nonblocking(true)?;
    rx.set_nonblocking(true)?;
    // The handler keeps the write end open for the life of the process.
    let fd = std::os::fd::IntoRawFd::into_raw_fd(tx);
    // SAFETY: the handler only reads the signal's code and writes one byte to a non-blocking
    // socket that stays open (both async-signal-safe; the registry keeps errno).
    unsafe {
        signal_hook_registry::register_sigaction(libc::SIGCHLD, move |info: &libc::siginfo_t| {
            if info.si_code != libc::CLD_TRAPPED {
                libc::send(fd, [1u8].as_ptr().cast(), 1, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL);
            }
        })
    }?;
    Ok(ChildSignals { pending, handled: rx })
}

impl ChildSignals {
    /// Blocks until a child's change is signalled (all that came meanwhile count as one); an
    /// error when neither source can be read any more. The calling thread blocks SIGCHLD.
    pub fn wait(&mut self) -> std::io::Result<()> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use std::io::Read;
        use std::os::fd::AsFd;
        loop {
            let mut fds = [
                PollFd::new(self.pending.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.handled.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) | Err(nix::Error::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
            let mut changed = false;
            while let Ok(Some(info)) = self.pending.read_signal() {
                changed |= info.ssi_code != libc::CLD_TRAPPED;
            }
            let mut bytes = [0u8; 64];
            loop {
                match self.handled.read(&mut bytes) {
                    Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                    Ok(_) => changed = true,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            if changed {
                return Ok(());
            }
        }
    }
}

/// Runs `f` with this process's SIGCHLD raised only for its children's ends
/// (`SA_NOCLDSTOP`), not for their stops and continues, traced ones included. A restore
/// traces its process through a dozen stops, and each one's signal interrupted whichever
/// thread took SIGCHLD (a signal frame, the handler of [`child_signals`], which drops it,
/// and a wakeup) for nothing. Another child stopped or continued meanwhile raises no signal
/// either: the caller looks at its children once `f` is done.
pub fn without_stop_signals<T>(f: impl FnOnce() -> T) -> T {
    /// Puts the action back, even if `f` panics.
    struct Restore(libc::sigaction);
    impl Drop for Restore {
        fn drop(&mut self) {
            // SAFETY: `self.0` is the action sigaction returned below, set back as it was.
            unsafe { libc::sigaction(libc::SIGCHLD, &self.0, std::ptr::null_mut()) };
        }
    }
    // SAFETY: sigaction reads the current action into `old` (a sigaction struct, zeroed
    // first) and, with `quiet`, sets the same handler, mask and flags plus SA_NOCLDSTOP.
    let _restore = unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(libc::SIGCHLD, std::ptr::null(), &mut old) != 0 {
            return f();
        }
        let mut quiet = old;
        quiet.sa_flags |= libc::SA_NOCLDSTOP;
        if libc::sigaction(libc::SIGCHLD, &quiet, std::ptr::null_mut()) != 0 {
            return f();
        }
        Restore(old)
    };
    f()
}

/// Waits until no SIGCHLD is pending for this process (whoever reads [`ChildSignals`] has
/// taken each so far), for at most `limit`; false if one still is. Called from a thread that
/// blocks SIGCHLD, so that another thread takes it.
pub fn await_child_signals(limit: std::time::Duration) -> bool {
    let start = std::time::Instant::now();
    loop {
        // SAFETY: `set` is a sigset_t that sigpending fills before sigismember reads it.
        let pending = unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigpending(&mut set) == 0 && libc::sigismember(&set, libc::SIGCHLD) == 1
        };
        if !pending {
            return true;
        }
        if start.elapsed() >= limit {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_micros(50));
    }
}

/// The soft limit on open files (`getrlimit(2)`, `RLIMIT_NOFILE`).
pub fn fd_limit() -> u64 {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1024, |(soft, _)| soft)
}

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
    /// Target fd.
    pub fd: i32,
    /// Path on this machine.
    pub path: CString,
    /// `open(2)` flags.
    pub flags: i32,
    /// Mode of a created file, before the umask.
    pub mode: u32,
    /// Position to seek to after opening (0: none).
    pub offset: i64,
}

impl FdFile {
    /// `path` opened for reading onto `fd`.
    pub fn read(fd: i32, path: CString) -> FdFile {
        FdFile { fd, path, flags: libc::O_RDONLY, mode: 0, offset: 0 }
    }

    /// `path` opened for writing onto `fd`: created (0666 before the umask) or truncated.
    pub fn write(fd: i32, path: CString) -> FdFile {
        let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC;
        FdFile { fd, path, flags, mode: 0o666, offset: 0 }
    }
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

/// `limits` lowered to `ceiling`, resource by resource (a resource only one of them has is
/// kept as it is there): the limits a restored image may have at most, when the image was
/// made by the caller and the ceiling read from the caller's kernel.
pub fn cap_limits(limits: &[Limit], ceiling: &[Limit]) -> Vec<Limit> {
    let mut out: Vec<Limit> = limits
        .iter()
        .map(|&(r, soft, hard)| match ceiling.iter().find(|c| c.0 == r) {
            Some(&(_, _, top)) => {
                let hard = hard.min(top);
                (r, soft.min(hard), hard)
            }
            None => (r, soft, hard),
        })
        .collect();
    out.extend(ceiling.iter().filter(|c| !limits.iter().any(|l| l.0 == c.0)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::OwnedFd;

    fn null() -> [Option<OwnedFd>; 3] {
        let open = |w: bool| {
            OwnedFd::from(std::fs::OpenOptions::new().read(!w).write(w).open("/dev/null").unwrap())
        };
        [Some(open(false)), Some(open(true)), Some(open(true))]
    }

    fn spec(argv: &[&str], files: Vec<FdFile>, limits: Vec<Limit>) -> SpawnSpec {
        SpawnSpec {
            path: CString::new(argv[0]).unwrap(),
            argv: argv.iter().map(|a| CString::new(*a).unwrap()).collect(),
            envp: CStrings::joined([["PATH=/bin:/usr/bin"]]).unwrap(),
            cwd: Some(CString::new("/").unwrap()),
            stdio: null(),
            fds: Vec::new(),
            limits,
            jail: None,
            identity: None,
            umask: 0o027,
            files,
            set_tid: None,
            trace: false,
            exec_fd: None,
            default_signals: false,
        }
    }

    fn wait(pid: i32) -> nix::sys::wait::WaitStatus {
        nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None).unwrap()
    }

    #[test]
    fn strings_for_an_exec_are_joined_in_one_buffer_and_a_nul_is_refused() {
        let mut env = CStrings::joined([["A=", "1"]]).unwrap();
        env.push(&["B=x=y"]).unwrap();
        assert!(env.push(&["C=", "a\0b"]).is_err());
        env.push(&[""]).unwrap();
        let got: Vec<&str> = env.iter().map(|s| s.to_str().unwrap()).collect();
        assert_eq!(got, ["A=1", "B=x=y", ""]);
        assert!(CStrings::default().iter().next().is_none());
        assert_eq!(
            CStrings::joined([["A", "=", "1"], ["B=x=y", "", ""], ["", "", ""]]).unwrap(),
            env
        );
    }

    /// A start with `default_signals` gives the program the default action of each signal
    /// its caller ignores (a daemon started in the background of a script ignores SIGINT and
    /// SIGQUIT); one without leaves it ignored, as an exec does. (SIGUSR2 here: no other test
    /// of this crate's uses it, and its default action ends a process without a core.)
    #[test]
    fn ignored_signals_go_back_to_their_defaults() {
        use nix::sys::signal::{signal, SigHandler, Signal};
        use nix::sys::wait::WaitStatus;
        // SAFETY: ignoring a signal installs no handler.
        unsafe { signal(Signal::SIGUSR2, SigHandler::SigIgn) }.unwrap();
        let itself = ["/bin/sh", "-c", "kill -USR2 $$; exit 7"];
        let fresh = SpawnSpec { default_signals: true, ..spec(&itself, vec![], vec![]) };
        let reset = wait(spawn(&fresh).unwrap());
        let inherited = wait(spawn(&spec(&itself, vec![], vec![])).unwrap());
        // SAFETY: as above, the default action again.
        unsafe { signal(Signal::SIGUSR2, SigHandler::SigDfl) }.unwrap();
        assert!(matches!(reset, WaitStatus::Signaled(_, Signal::SIGUSR2, _)), "{reset:?}");
        assert!(matches!(inherited, WaitStatus::Exited(_, 7)), "{inherited:?}");
    }

    /// A process started by a thread with the fork filter waits at each fork until the
    /// listener lets it go, and the fork then runs as usual (issue 17); the thread's own
    /// `clone3` of this crate's size goes through, another size fails with `ENOSYS`.
    #[test]
    fn forks_wait_for_the_listener() {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use std::os::fd::AsFd;
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: a filter without no_new_privs needs root");
            return;
        }
        let s = spec(&["/bin/sh", "-c", "/bin/true; /bin/true; /bin/true; exit 3"], vec![], vec![]);
        // The thread that starts the process keeps the filter (and, by the parent-death
        // signal, the process): everything happens on it.
        std::thread::spawn(move || {
            let l = forkpid::install_here().unwrap();
            // Flags the kernel refuses (a thread without shared signal handlers): EINVAL if
            // the call reaches it, ENOSYS if the filter stops it.
            let bad = CloneArgs { flags: libc::CLONE_THREAD as u64, ..Default::default() };
            for (size, errno) in [(88, libc::ENOSYS), (forkpid::CLONE3_SIZE, libc::EINVAL)] {
                // SAFETY: the kernel rejects these flags, so no process or thread is made.
                let r = unsafe { libc::syscall(libc::SYS_clone3, &bad as *const CloneArgs, size) };
                assert_eq!((r, nix::Error::last_raw()), (-1, errno), "clone3 of {size} bytes");
            }
            let pid = spawn(&s).unwrap();
            let mut forks = Vec::new();
            while forks.len() < 3 {
                let mut fds = [PollFd::new(l.as_fd(), PollFlags::POLLIN)];
                assert_eq!(
                    poll(&mut fds, PollTimeout::from(5000u16)),
                    Ok(1),
                    "forks so far: {forks:?}"
                );
                let n = l.recv().unwrap();
                assert_eq!(n.pid, pid);
                l.proceed(n.id).unwrap();
                forks.push(n.nr);
            }
            assert!(forks.iter().all(|nr| [libc::SYS_clone, libc::SYS_fork, libc::SYS_vfork]
                .contains(&(*nr as libc::c_long))));
            assert_eq!(
                wait(pid),
                nix::sys::wait::WaitStatus::Exited(nix::unistd::Pid::from_raw(pid), 3)
            );
        })
        .join()
        .unwrap();
    }

    #[test]
    fn files_limits_and_umask_apply_in_the_child() {
        let dir = std::env::temp_dir().join(format!("bproc-sys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("out");
        let path = CString::new(out.to_str().unwrap()).unwrap();
        // Resource 7 is RLIMIT_NOFILE.
        let s = spec(
            &["/bin/sh", "-c", "umask; ulimit -n; echo $$ hello"],
            vec![FdFile::write(1, path)],
            vec![(7, 77, 77)],
        );
        let pid = spawn(&s).unwrap();
        assert_eq!(
            wait(pid),
            nix::sys::wait::WaitStatus::Exited(nix::unistd::Pid::from_raw(pid), 0)
        );
        assert_eq!(std::fs::read_to_string(&out).unwrap(), format!("0027\n77\n{pid} hello\n"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The slave applied a launch's limits as root before switching user, so a launcher
    /// that claimed more than it had got it. Now they are applied as the user, each kept
    /// within the hard limit the process has.
    #[test]
    fn limits_are_only_lowered_and_as_the_user() {
        use nix::sys::resource::{getrlimit, Resource};
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED: switching to another user needs root");
            return;
        }
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        let (_, cpu_hard) = getrlimit(Resource::RLIMIT_CPU).unwrap();
        let dir = std::env::temp_dir().join(format!("bproc-sys-lim-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("out");
        let path = CString::new(out.to_str().unwrap()).unwrap();
        // NOFILE asked above what this process has; CPU lowered, soft above the new hard.
        let mut s = spec(
            &["/bin/sh", "-c", "ulimit -Sn; ulimit -Hn; ulimit -St; ulimit -Ht"],
            vec![FdFile::write(1, path)],
            vec![(7, u64::MAX, u64::MAX), (0, 50, 40)],
        );
        s.identity = Some(Identity { uid: 65534, gid: 65534, groups: Vec::new() });
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .unwrap();
        let pid = spawn(&s).unwrap();
        assert!(matches!(wait(pid), nix::sys::wait::WaitStatus::Exited(_, 0)));
        let cpu = if cpu_hard < 40 { cpu_hard.to_string() } else { "40".into() };
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            format!("{hard}\n{hard}\n{cpu}\n{cpu}\n")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn image_limits_are_capped_by_the_launchers() {
        let image = [(0, 10, 100), (7, 4096, 1 << 20), (3, 8 << 20, u64::MAX)];
        let ceiling = [(0, 5, 50), (7, 512, 512), (9, 1 << 30, 1 << 30)];
        assert_eq!(
            cap_limits(&image, &ceiling),
            [(0, 10, 50), (7, 512, 512), (3, 8 << 20, u64::MAX), (9, 1 << 30, 1 << 30)]
        );
    }

    #[test]
    fn fds_land_where_asked_even_when_they_cross() {
        use std::os::fd::AsRawFd;
        let dir = std::env::temp_dir().join(format!("bproc-sys-fds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = OwnedFd::from(std::fs::File::create(dir.join("a")).unwrap());
        let b = OwnedFd::from(std::fs::File::create(dir.join("b")).unwrap());
        std::fs::write(dir.join("c"), "abcdefgh").unwrap();
        let (x, y) = (a.as_raw_fd(), b.as_raw_fd());
        let z = x.max(y) + 1;
        // Each target is the other's source; stdout is closed; the file is written at 3.
        let script =
            format!("echo toA >&{y}; echo toB >&{x}; echo XY >&{z}; echo gone; echo $? >&{y}");
        let mut s = spec(&["/bin/bash", "-c", &script], vec![], vec![]);
        s.fds = vec![(y, a), (x, b)];
        s.stdio[1] = None;
        let c = CString::new(dir.join("c").to_str().unwrap()).unwrap();
        s.files = vec![FdFile { fd: z, path: c, flags: libc::O_WRONLY, mode: 0, offset: 3 }];
        let pid = spawn(&s).unwrap();
        assert!(matches!(wait(pid), nix::sys::wait::WaitStatus::Exited(_, 0)));
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
        assert_eq!(read("a"), "toA\n1\n");
        assert_eq!(read("b"), "toB\n");
        assert_eq!(read("c"), "abcXY\ngh");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A failure in the child comes back with its errno and the step that failed, so the
    /// caller can name the file (issue "hardening", item 8).
    #[test]
    fn failures_before_exec_come_back_as_errors() {
        let failed = |e: std::io::Error| {
            let f = *e.get_ref().and_then(|r| r.downcast_ref::<SpawnFailed>()).unwrap();
            assert_eq!(spawn_errno(&e), Some(f.errno));
            assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
            f
        };
        let path = CString::new("/no/such/file/here").unwrap();
        let s = spec(&["/bin/true"], vec![FdFile::read(0, path)], vec![]);
        let f = failed(spawn(&s).unwrap_err());
        assert_eq!((f.step, f.errno), (SpawnStep::File(0), 2));
        let s = spec(&["/no/such/program"], vec![], vec![]);
        let f = failed(spawn(&s).unwrap_err());
        assert_eq!((f.step, f.errno), (SpawnStep::Exec, 2));
    }
}
