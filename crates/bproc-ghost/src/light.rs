//! Light ghosts: the ghosts of one launch as tasks that share one address space.
//!
//! A forked ghost costs its own page tables and the pages it writes, about 120 KiB on the
//! front end; a launch of thousands of ranks makes thousands. The ghosts of one launch are
//! instead made as light tasks ([`bproc_sys::task`]): each is still a process of its own (its
//! pid, its signals, its connection to the master, a child of the launcher) but they share
//! the first ghost's memory, so a ghost costs a kernel task and a few pages of stack.
//!
//! A light ghost does the common part of a ghost's life itself, with direct system calls and
//! no allocation (it shares the heap and thread-local storage it must not touch): it forwards
//! signals, stops and continues with its process, relays its output (a vector fork's ghosts,
//! each with a listener the maker opened), and ends with its status. Anything else
//! the master asks (a fork, an exec, a move back, a rank to start) or a connection that
//! breaks, and it becomes a full ghost: it executes the ghost program again, which gets the
//! connection (with the request still unread on it), its index, its stop state and its
//! relay's listener and connections in the environment, and takes over with its own memory.

use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;

use bproc_proto::{ExitStatus, Header, Message, HEADER_LEN};
use bproc_sys::task::{raw, Task};
use nix::errno::Errno;
use nix::libc;

/// What every ghost of the launch shares, prepared before the first task starts.
struct Launch {
    /// The ghost program a light ghost executes to become a full one.
    program: CString,
    /// `[prog]`.
    argv0: CString,
    /// The environment a full ghost keeps (`KEY=VALUE`).
    env: Vec<CString>,
    /// The master's socket.
    socket: Vec<u8>,
    /// The `GhostHello` frame.
    hello: Vec<u8>,
    /// `/dev/null`, open.
    null: RawFd,
    /// The launcher's stdout came in as stdin (see [`crate::ENV_OUTPUT`]).
    keep_output: bool,
    /// The blocked signals, which the signalfd reads.
    blocked: u64,
    /// Message types a light ghost serves itself.
    proc_exit: u16,
    ghost_state: u16,
    /// The token a relaying ghost's output connections present (see [`crate::relay`]).
    relay: Option<[u8; 16]>,
    /// The launcher's word that it sent the launch (see [`fork`]), or -1.
    launched: RawFd,
    /// A pidfd of the launcher, watched with `launched` (-1: none; else at 5 or above, and
    /// above `launched`), and its pid (0: not known).
    launcher: RawFd,
    launcher_pid: i32,
}

/// Output connections a light ghost relays at once; one more and it becomes a full ghost
/// (a process that moved on from node to node may have several until the old ones end).
const CONNS: usize = 8;

/// The fd a relaying light ghost keeps its listener at.
pub(crate) const LISTENER: RawFd = 3;

/// The fd a ghost of a launch that says when it is sent keeps that word at, if it relays
/// nothing (a relaying one keeps it where the ghost program put it, above its listener).
const LAUNCHED: RawFd = 3;

/// One light ghost's own state; only its task touches it.
pub struct Ghost {
    launch: &'static Launch,
    index: usize,
    /// Room for the frames it sends (a `GhostSignal`), allocated before it starts.
    out: Vec<u8>,
    stop_signal: i32,
    cont_pending: bool,
    /// Its relay's listener (-1: it relays nothing), and the listener's port.
    listener: RawFd,
    port: u16,
    /// Its relay's output connections, each with the fd it feeds (-1: a free slot).
    conns: [(RawFd, i32); CONNS],
    /// The launcher's word that it sent the launch, watched until the launcher ends (-1: not
    /// watched).
    launched: RawFd,
    /// The launch's pidfd of the launcher, watched with `launched` (-1: none).
    launcher: RawFd,
}

/// Launches at least this big are made by two makers, one a core.
const SPLIT: usize = 128;

/// Makes the launch's `count` ghosts as light tasks, siblings of this process, and becomes
/// ghost 0; each maker writes `INDEX PID` lines for the launcher on stdout. Returns only if
/// it could not start, before any ghost was made; it makes fewer if the system runs out of
/// processes. `launched`: the launcher's pipe the ghosts watch (see [`fork`]; above fd 3,
/// where a relaying ghost keeps its listener), or -1; `launcher`: the launcher's pid (0: not
/// known).
pub fn start(count: usize, argv0: &[u8], launched: RawFd, launcher: i32) -> Errno {
    // Relaying ghosts write their processes' output where the launcher's stdout went.
    let relay = std::env::var(crate::relay::ENV_IO).ok().and_then(|v| {
        let mut t = [0u8; 16];
        hex::decode_to_slice(&v, &mut t).ok().map(|()| t)
    });
    let how = Launcher {
        program: c"/proc/self/exe".into(),
        env: crate::kept_env(&["BPROC_SOCKET", crate::ENV_GRACE, bproc_proto::conn::ENV_REJOIN]),
        keep_output: relay.is_some() || std::env::var_os(crate::ENV_OUTPUT).is_some(),
        blocked: match raw::sigprocmask(libc::SIG_BLOCK, None) {
            Ok(b) => b,
            Err(e) => return e,
        },
        relay,
        launched,
        launcher,
    };
    match prepare(count, argv0, how) {
        Ok((first, second)) => split(first, second),
        Err(e) => e,
    }
}

/// Forks the caller, a launcher that is not the ghost program (bpsh), into the first of
/// `count` ghosts for processes named `comm`, which makes the others as light tasks: no
/// program is executed for them. `program` is the ghost program, which a ghost executes if
/// it has to become a full one, with `env` added (`KEY=VALUE`). The ghosts keep the caller's
/// stdout and stderr, and read `/dev/null`. Returns the first ghost's pid; when there are
/// others, the pipe the makers write every ghost's `INDEX PID` line to (see [`start`]); and
/// the write end of a pipe the ghosts watch until the caller ends. The caller writes a byte
/// there once it has sent the launch, and keeps it open as long as it runs: a ghost that sees
/// the caller end without that byte ends too, as no process will ever start for it. (The
/// ghosts watch the caller itself too, through a pidfd: a process another thread forks
/// meanwhile holds a copy of the write end.)
///
/// The first ghost's memory is a copy of the caller's, which its tasks share; so this suits
/// a small launcher, and a launcher whose memory is large uses the ghost program instead.
pub fn fork(
    program: &std::path::Path,
    comm: &str,
    count: usize,
    env: Vec<CString>,
) -> std::io::Result<(i32, Option<std::fs::File>, std::os::fd::OwnedFd)> {
    let err = |e: Errno| std::io::Error::from_raw_os_error(e as i32);
    let cstr = |b: &[u8]| CString::new(b).map_err(|_| err(Errno::EINVAL));
    let program = cstr(program.as_os_str().as_bytes())?;
    let argv0 = format!("[{comm}]");
    // The pipe the ghosts watch for the launcher's word that it sent the launch, or its end.
    let (watched, word) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(err)?;
    let (watched, word) = (above_stdio(watched)?, above_stdio(word)?);
    let launched = std::os::fd::AsRawFd::as_raw_fd(&watched);
    let launcher = std::process::id() as i32;
    let how = Launcher {
        program,
        env,
        keep_output: true,
        blocked: u64::MAX,
        relay: None,
        launched,
        launcher,
    };
    let (first, second) = prepare(count, argv0.as_bytes(), how).map_err(err)?;
    let (null, pidfd) = (first.ghosts[0].launch.null, first.ghosts[0].launch.launcher);
    let lines = match count {
        0 | 1 => None,
        _ => {
            let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(err)?;
            Some((above_stdio(r)?, above_stdio(w)?))
        }
    };
    let child = Box::leak(Box::new(Forked {
        first,
        second,
        comm: cstr(comm.as_bytes())?,
        lines: lines.as_ref().map(|(_, w)| std::os::fd::AsRawFd::as_raw_fd(w)),
    }));
    let argv0 = cstr(argv0.as_bytes())?;
    let forked = bproc_sys::task::fork_task(child, Some(&argv0));
    raw::close(null);
    raw::close(pidfd);
    let pid = forked.map_err(err)?;
    Ok((pid, lines.map(|(r, _)| std::fs::File::from(r)), word))
}

/// `fd`, or a copy of it numbered 3 or more: a launcher without stdin or stdout gets its new
/// files under those numbers, which the ghosts' own take.
fn above_stdio(fd: std::os::fd::OwnedFd) -> std::io::Result<std::os::fd::OwnedFd> {
    if std::os::fd::AsRawFd::as_raw_fd(&fd) < 3 {
        fd.try_clone()
    } else {
        Ok(fd)
    }
}

/// How the ghosts' process started, which they take after.
struct Launcher {
    program: CString,
    env: Vec<CString>,
    keep_output: bool,
    blocked: u64,
    relay: Option<[u8; 16]>,
    launched: RawFd,
    launcher: i32,
}

/// The launch's ghosts, and the stacks of all but the first.
struct Maker {
    ghosts: &'static mut [Ghost],
    stacks: bproc_sys::task::TaskStacks,
}

/// Everything the ghosts use, allocated before any task starts; with a second maker for the
/// upper half of a big launch.
#[allow(clippy::type_complexity)]
fn prepare(
    count: usize,
    argv0: &[u8],
    how: Launcher,
) -> Result<(&'static mut Maker, Option<&'static mut Maker>), Errno> {
    let mut stacks = bproc_sys::task::TaskStacks::new(count.saturating_sub(1).max(1))?;
    let null = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null");
    let errno = |e: std::io::Error| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO));
    let null = above_stdio(null.map_err(errno)?.into()).map_err(errno)?;
    let launcher = match how.launched {
        -1 => -1,
        launched => watched_launcher(how.launcher, launched).map_err(errno)?,
    };
    let socket = crate::socket_path();
    let exit = Message::ProcExit { launch: 0, rank: 0, status: ExitStatus::Code(0) };
    let launch: &'static Launch = Box::leak(Box::new(Launch {
        program: how.program,
        argv0: CString::new(argv0).map_err(|_| Errno::EINVAL)?,
        env: how.env,
        socket: socket.as_bytes().to_vec(),
        hello: bproc_proto::encode(0, &Message::GhostHello { fork: 0 }),
        null: null.into_raw_fd(),
        keep_output: how.keep_output,
        blocked: how.blocked,
        proc_exit: exit.msg_type(),
        ghost_state: Message::GhostState { stopped: false }.msg_type(),
        relay: how.relay,
        launched: how.launched,
        launcher,
        launcher_pid: how.launcher,
    }));
    let mut ghosts = Vec::with_capacity(count.max(1));
    for index in 0..count.max(1) {
        // A relaying ghost's listener is open before the maker says its port.
        let (listener, port) = match launch.relay {
            Some(_) => listen().map_err(errno)?,
            None => (-1, 0),
        };
        ghosts.push(Ghost {
            launch,
            index,
            out: Vec::with_capacity(64),
            stop_signal: 0,
            cont_pending: false,
            listener,
            port,
            conns: [(-1, 0); CONNS],
            launched: -1,
            launcher: -1,
        });
    }
    let ghosts: &'static mut [Ghost] = Box::leak(ghosts.into_boxed_slice());
    let n = ghosts.len();
    // The second maker's stack is one of the first's; its half's are its own.
    let theirs = if n >= SPLIT { stacks.split_off(n - n / 2 - 1) } else { None };
    let (low, high) = ghosts.split_at_mut(if theirs.is_some() { n / 2 } else { n });
    let second = theirs.map(|stacks| Box::leak(Box::new(Maker { ghosts: high, stacks })));
    Ok((Box::leak(Box::new(Maker { ghosts: low, stacks })), second))
}

/// A non-blocking listener on any address and port for a relay's output connections: its
/// fd (every ghost's task gets a copy; each keeps its own) and port.
fn listen() -> std::io::Result<(RawFd, u16)> {
    let l = std::net::TcpListener::bind("0.0.0.0:0")?;
    l.set_nonblocking(true)?;
    let port = l.local_addr()?.port();
    Ok((l.into_raw_fd(), port))
}

/// Starts the second maker, if any, then makes the first's ghosts.
fn split(first: &'static mut Maker, second: Option<&'static mut Maker>) -> ! {
    // Every task copies the maker's fds and closes those it does not keep: a launch that
    // relays nothing keeps only stdio and /dev/null, so the rest (a launcher's connections,
    // whatever its shell left open) are closed once here, not copied into each task.
    if let Some(l) = first.ghosts.first().map(|g| g.launch).filter(|l| l.relay.is_none()) {
        let mut keep = [l.null, l.launched, l.launcher];
        keep.sort_unstable();
        let mut from = 3;
        for fd in keep {
            if fd >= from {
                if fd > from {
                    raw::close_range(from, fd - 1);
                }
                from = fd + 1;
            }
        }
        raw::close_from(from);
    }
    if let Some(second) = second {
        let _ = first.stacks.spawn_sibling(second);
    }
    make(first)
}

/// The first ghost of a launch that [`fork`] made: it takes the ghost's signal state, name
/// and fds, then makes the others (or is the only one).
struct Forked {
    first: &'static mut Maker,
    second: Option<&'static mut Maker>,
    comm: CString,
    /// The pipe for the `INDEX PID` lines, when there are other ghosts.
    lines: Option<RawFd>,
}

// SAFETY: as for `Maker`: what it uses was made before the fork and is not changed.
#[allow(unsafe_code)]
unsafe impl Task for Forked {
    fn run(&'static mut self) -> ! {
        // Signals are read from a signalfd, and a ghost dies of its process's signal by
        // the default action.
        let Forked { first, second, comm, lines } = self;
        let _ = raw::sigprocmask(libc::SIG_SETMASK, Some(u64::MAX));
        raw::default_signal_actions();
        raw::set_name(comm);
        // The launcher's stdout goes in as stdin, as a launcher hands it to the program
        // (/dev/null if it has none).
        if raw::dup2(1, 0).is_err() {
            let _ = raw::dup2(first.ghosts[0].launch.null, 0);
        }
        match *lines {
            Some(w) => {
                let _ = raw::dup2(w, 1);
                split(first, second.take())
            }
            None => run(&mut first.ghosts[0]),
        }
    }
}

// SAFETY: a maker keeps to `raw` system calls, its stack and what `prepare` made before any
// task started, which nothing frees or changes: it makes tasks (direct system calls), writes
// lines formatted on its stack, then is a ghost.
#[allow(unsafe_code)]
unsafe impl Task for Maker {
    fn run(&'static mut self) -> ! {
        make(self)
    }
}

// SAFETY: a ghost keeps to `raw` system calls, its own state and what `prepare` made before
// any task started: no allocation (`out` has room for every frame it encodes, and decoding
// the two messages it serves allocates nothing), no thread-local storage, no locks.
#[allow(unsafe_code)]
unsafe impl Task for Ghost {
    fn run(&'static mut self) -> ! {
        run(self)
    }
}

/// Makes the maker's ghosts but its first, says their pids, then is that first ghost.
fn make(m: &'static mut Maker) -> ! {
    let ghosts = std::mem::take(&mut m.ghosts);
    let Some((first, rest)) = ghosts.split_first_mut() else { raw::exit_group(255) };
    let mut lines = Lines::new();
    let port = |g: &Ghost| g.launch.relay.map(|_| g.port);
    lines.add(first.index, raw::getpid(), port(first));
    for g in rest {
        let (index, port) = (g.index, port(g));
        match m.stacks.spawn_sibling(g) {
            Ok(pid) => lines.add(index, pid, port),
            Err(e) => {
                // The launcher sees fewer pids, and why: made no more, not killed.
                lines.failed(e);
                break;
            }
        }
    }
    lines.flush();
    run(first)
}

/// `INDEX PID` lines for the launcher on stdout, written in whole lines of at most PIPE_BUF
/// bytes, so that several makers' writes interleave only between lines. Formatted on the
/// stack: a light ghost's maker may not allocate.
pub(crate) struct Lines {
    buf: [u8; 4000],
    len: usize,
}

impl Lines {
    pub(crate) fn new() -> Lines {
        Lines { buf: [0; 4000], len: 0 }
    }

    /// Adds ghost `index`'s line: its pid, and its relay's port if it relays.
    pub(crate) fn add(&mut self, index: usize, pid: i32, port: Option<u16>) {
        match port {
            Some(p) => self.push(format_args!("{index} {pid} {p}")),
            None => self.push(format_args!("{index} {pid}")),
        }
    }

    /// Says that the maker could make no more ghosts, and the errno why: a `! ERRNO` line.
    pub(crate) fn failed(&mut self, e: Errno) {
        self.push(format_args!("! {}", e as i32));
    }

    /// Adds one line, formatted on the stack.
    fn push(&mut self, text: std::fmt::Arguments<'_>) {
        use std::fmt::Write;
        let mut line = Line::new();
        let mut w = Cursor { buf: &mut line.buf, len: 0 };
        if writeln!(w, "{text}").is_err() {
            return;
        }
        let n = w.len;
        if self.len + n > self.buf.len() {
            self.flush();
        }
        if let (Some(to), Some(from)) =
            (self.buf.get_mut(self.len..self.len + n), line.buf.get(..n))
        {
            to.copy_from_slice(from);
            self.len += n;
        }
    }

    pub(crate) fn flush(&mut self) {
        let _ = raw::write_all(1, self.buf.get(..self.len).unwrap_or_default());
        self.len = 0;
    }
}

/// A light ghost's life, from its own fds to its end.
pub fn run(g: &'static mut Ghost) -> ! {
    let l = g.launch;
    // Only the launcher's reader had use for stdout (the pid list): let it see the end. A
    // ghost that keeps the launcher's output got it as stdin.
    if l.keep_output {
        let _ = raw::dup2(0, 1);
        let _ = raw::dup2(l.null, 0);
    } else {
        let _ = raw::dup2(l.null, 1);
    }
    // Its relay's listener at a number of its own, the launch's other listeners closed; or
    // the launcher's word that it sent the launch.
    // (The launch's pidfd of the launcher is above both, where it was.)
    if g.listener >= 0 && raw::dup2(g.listener, LISTENER).is_ok() {
        g.listener = LISTENER;
        if l.launched > LISTENER {
            (g.launched, g.launcher) = (l.launched, l.launcher);
            raw::close_range(LISTENER + 1, l.launched - 1);
            close_above(l.launched, l.launcher);
        } else {
            raw::close_from(LISTENER + 1);
        }
    } else if l.launched >= 0 && raw::dup2(l.launched, LAUNCHED).is_ok() {
        g.listener = -1;
        (g.launched, g.launcher) = (LAUNCHED, l.launcher);
        close_above(LAUNCHED, l.launcher);
    } else {
        g.listener = -1;
        raw::close_from(3);
    }
    let Ok(sfd) = raw::signalfd(l.blocked) else { raw::exit_group(255) };
    let ctl = match raw::connect_unix(&l.socket) {
        Ok(fd) => fd,
        Err(e) => {
            say(&[b"bpghost: cannot reach bpmaster: ", e.desc().as_bytes(), b"\n"]);
            raw::exit_group(255)
        }
    };
    if raw::write_all(ctl, &l.hello).is_err() {
        become_full(g, ctl);
    }
    loop {
        let idle = libc::pollfd { fd: -1, events: libc::POLLIN, revents: 0 };
        let mut fds = [idle; 5 + CONNS];
        fds[0].fd = sfd;
        fds[1].fd = ctl;
        // Only its end wakes the ghost (a hang-up is always reported), or the launcher's.
        fds[2] = libc::pollfd { fd: g.launched, events: 0, revents: 0 };
        fds[3].fd = g.launcher;
        let n = relay_fds(g, &mut fds[4..]);
        match raw::poll(&mut fds[..4 + n]) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => crate::violent_death(),
        }
        // The launcher's end first: without its word that it sent the launch, nothing the
        // master says (a connection it closed among it) concerns a process.
        if fds[2].revents != 0 || fds[3].revents != 0 {
            launcher_ended(g);
        }
        // Output next, as a full ghost relays it: what came before a signal or an end.
        relay_ready(g, ctl, &fds[4..4 + n], false);
        if fds[0].revents & libc::POLLIN != 0 {
            forward_signals(g, sfd, ctl);
        }
        if fds[1].revents != 0 {
            take_frame(g, ctl);
        }
    }
}

/// The launcher ended (its end of the pipe closed, or the launcher itself). If it had said
/// that it sent the launch (a byte waits in the pipe), the ghost goes on standing for its
/// process, as BProc's ghosts of a killed parent do; if not, no process will ever start for
/// it (the launcher was killed as it made its ghosts), and it ends. Before, such a ghost
/// waited for the master's sweep of ghosts without a process, at least 35 s.
fn launcher_ended(g: &mut Ghost) {
    end_unless_sent(g.launched);
    raw::close(g.launched);
    raw::close(g.launcher);
    g.launched = -1;
    g.launcher = -1;
}

/// Ends this process unless the launcher said in its pipe `launched` that it sent the launch
/// (a byte waits there): once the launcher is gone, no process will ever start for a ghost
/// without that word.
pub(crate) fn end_unless_sent(launched: RawFd) {
    if !matches!(raw::readable(launched), Ok(n) if n > 0) {
        crate::violent_death();
    }
}

/// Closes every fd above `kept` but `launcher` (-1: none), which is above it.
fn close_above(kept: RawFd, launcher: RawFd) {
    if launcher > kept {
        raw::close_range(kept + 1, launcher - 1);
        raw::close_from(launcher + 1);
    } else {
        raw::close_from(kept + 1);
    }
}

/// A pidfd of the launcher `pid`, this process's parent or this process itself, which says
/// when the launcher ends even while its pipe stays open: a process it forked as it made its
/// ghosts (another thread's fork) holds a copy of the pipe's write end until it executes a
/// program or ends. `None` where the kernel has no pidfds or the pid is not known; `Err` if
/// the launcher is gone already (this process is no longer its child).
pub(crate) fn launcher_pidfd(pid: i32) -> Result<Option<OwnedFd>, ()> {
    if pid <= 0 {
        return Ok(None);
    }
    match bproc_sys::pidfd_open(pid) {
        // The pid is the launcher's only while this process is its child (or it).
        Ok(fd) if nix::unistd::getppid().as_raw() == pid || std::process::id() as i32 == pid => {
            Ok(Some(fd))
        }
        Err(e) if e.raw_os_error() != Some(libc::ESRCH) => Ok(None),
        _ => Err(()),
    }
}

/// The launch's pidfd of the launcher `pid` (see [`launcher_pidfd`]), at 5 or above and above
/// `launched` (where [`run`] keeps it), or -1. If the launcher is gone, this process ends
/// unless the launcher said in `launched` that it sent the launch.
fn watched_launcher(pid: i32, launched: RawFd) -> std::io::Result<RawFd> {
    let fd = match launcher_pidfd(pid) {
        Ok(Some(fd)) => fd,
        Ok(None) => return Ok(-1),
        Err(()) => {
            end_unless_sent(launched);
            return Ok(-1);
        }
    };
    let at = nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC((LAUNCHED + 2).max(launched + 1));
    Ok(nix::fcntl::fcntl(fd.as_raw_fd(), at)?)
}

/// Fills `fds` with the relay's listener and connections; how many it filled.
fn relay_fds(g: &Ghost, fds: &mut [libc::pollfd]) -> usize {
    if g.listener < 0 {
        return 0;
    }
    fds[0].fd = g.listener;
    let mut n = 1;
    for (fd, _) in g.conns.iter().filter(|(fd, _)| *fd >= 0) {
        fds[n].fd = *fd;
        n += 1;
    }
    n
}

/// Serves what `poll` found ready on the relay's fds (as [`relay_fds`] filled them): copies
/// each connection's output to its fd, then takes new connections.
fn relay_ready(g: &mut Ghost, ctl: RawFd, fds: &[libc::pollfd], ending: bool) {
    let Some((listener, conns)) = fds.split_first() else { return };
    for p in conns.iter().filter(|p| p.revents != 0) {
        if let Some(slot) = g.conns.iter_mut().find(|(fd, _)| *fd == p.fd) {
            if !pump(*slot) {
                raw::close(slot.0);
                *slot = (-1, 0);
            }
        }
    }
    if listener.revents != 0 {
        accept_conns(g, ctl, ending);
    }
}

/// Takes the output connections waiting on the listener: each presents the launch's token
/// and which of fds 1 and 2 it feeds, or is closed. With no room for one more, the ghost
/// becomes a full one, which takes the connection; or, at its end (`ending`: the message
/// that ends it is read), leaves it.
fn accept_conns(g: &mut Ghost, ctl: RawFd, ending: bool) {
    let Some(token) = g.launch.relay else { return };
    loop {
        if g.conns.iter().all(|(fd, _)| *fd >= 0) {
            if ending {
                return;
            }
            become_full(g, ctl);
        }
        let Ok(c) = raw::accept(g.listener) else { return };
        let mut head = [0u8; bproc_proto::conn::HEADER_LEN];
        let ok = raw::set_read_timeout(c, HEADER_SECS).is_ok()
            && raw::read_exact(c, &mut head) == Ok(true)
            && raw::set_read_timeout(c, 0).is_ok();
        let (t, _, which) = bproc_proto::conn::parse(&head);
        match g.conns.iter_mut().find(|(fd, _)| *fd < 0) {
            Some(slot) if ok && t == token && (which == 1 || which == 2) => {
                *slot = (c, i32::from(which));
            }
            _ => raw::close(c),
        }
    }
}

/// How long a new output connection may take to send its header, in seconds.
const HEADER_SECS: u32 = 2;

/// Copies what connection `c` has to its fd; false at its end. Output nobody reads any more
/// (a closed pipe) is dropped, so the remote process is never held up by it. Never inlined:
/// its buffer would make the ghost's loop touch four pages of stack in every light ghost,
/// relaying or not.
#[inline(never)]
fn pump(c: (RawFd, i32)) -> bool {
    let mut buf = [0u8; 16384];
    match raw::read(c.0, &mut buf) {
        Ok(0) => false,
        Ok(n) => {
            let _ = raw::write_all(c.1, &buf[..n]);
            true
        }
        Err(e) => e == Errno::EINTR || e == Errno::EAGAIN,
    }
}

/// Relays until every output connection has ended (or none has had anything for
/// [`DRAIN_IDLE_MS`]): the process's last output comes before its end.
fn drain(g: &mut Ghost, ctl: RawFd) {
    if g.listener < 0 {
        return;
    }
    accept_conns(g, ctl, true);
    while g.conns.iter().any(|(fd, _)| *fd >= 0) {
        let idle = libc::pollfd { fd: -1, events: libc::POLLIN, revents: 0 };
        let mut fds = [idle; 1 + CONNS];
        let n = relay_fds(g, &mut fds);
        match raw::poll_for(&mut fds[..n], DRAIN_IDLE_MS) {
            Ok(0) => return,
            Ok(_) | Err(Errno::EINTR) => relay_ready(g, ctl, &fds[..n], true),
            Err(_) => return,
        }
    }
}

/// How long a draining relay waits for output that does not come.
const DRAIN_IDLE_MS: u32 = 10_000;

/// Sends the master the signals that came (SIGCHLD aside: a light ghost has no children).
fn forward_signals(g: &mut Ghost, sfd: RawFd, ctl: RawFd) {
    while let Ok(Some(info)) = raw::read_signal(sfd) {
        let sig = info.ssi_signo as i32;
        if sig == libc::SIGCHLD {
            continue;
        }
        if crate::is_stop(sig) {
            g.cont_pending = false;
            g.stop_signal = sig;
        } else if sig == libc::SIGCONT {
            g.cont_pending = true;
        }
        let msg = Message::GhostSignal { signal: sig, sender: info.ssi_pid as i32 };
        bproc_proto::encode_into(&mut g.out, 0, &msg);
        if raw::write_all(ctl, &g.out).is_err() {
            // The master went away: the full ghost waits for it, with this signal pending.
            let _ = raw::requeue_self(sig, info.ssi_code, info.ssi_pid as i32, info.ssi_uid);
            become_full(g, ctl);
        }
    }
}

/// Serves the next frame from the master if it is one a light ghost serves (the process
/// ended, stopped or continued); else leaves it unread and becomes a full ghost.
fn take_frame(g: &mut Ghost, ctl: RawFd) {
    let mut buf = [0u8; HEADER_LEN + 64];
    let mut head = [0u8; HEADER_LEN];
    if raw::peek_exact(ctl, &mut head) != Ok(HEADER_LEN) {
        become_full(g, ctl); // it finds the connection ended and waits for the master
    }
    let Ok(h) = Header::parse(&head) else { become_full(g, ctl) };
    let total = HEADER_LEN + h.len as usize;
    let l = g.launch;
    if ![l.proc_exit, l.ghost_state].contains(&h.msg_type) || total > buf.len() {
        become_full(g, ctl);
    }
    let frame = &mut buf[..total];
    if raw::peek_exact(ctl, frame) != Ok(total) {
        become_full(g, ctl);
    }
    let msg = bproc_proto::decode_body(&h, &frame[HEADER_LEN..]);
    if msg.is_err() || raw::read_exact(ctl, frame) != Ok(true) {
        become_full(g, ctl);
    }
    match msg {
        Ok(Message::ProcExit { status, .. }) => {
            drain(g, ctl);
            crate::die(status)
        }
        Ok(Message::GhostState { stopped }) => {
            if stopped && !g.cont_pending {
                crate::stop_as(std::mem::take(&mut g.stop_signal));
            }
            g.cont_pending = false;
        }
        _ => become_full(g, ctl),
    }
}

/// Executes the ghost program again in this process, handing it the connection `ctl`, this
/// ghost's index and its stop state; it takes over with memory of its own.
fn become_full(g: &mut Ghost, ctl: RawFd) -> ! {
    let l = g.launch;
    let mut fd = Line::new();
    let mut index = Line::new();
    let mut state = Line::new();
    let mut io = Line::new();
    let mut conns = Line::new();
    let mut launched = Line::new();
    let mut env: [&CStr; 10] = [c""; 10];
    let mut n = 0;
    // The relay's fds, and the launcher's pipe, which the full ghost watches in turn.
    let relayed = match l.relay {
        Some(token) if g.listener >= 0 => [io.relay(&token, g.listener), conns.conns(&g.conns)],
        _ => [c"", c""],
    };
    let watched = match g.launched {
        -1 => c"",
        fd => launched.var(crate::ENV_LAUNCHED, fd.into(), Some(l.launcher_pid.into())),
    };
    for v in l
        .env
        .iter()
        .map(CString::as_c_str)
        .chain([
            fd.var(crate::ENV_FD, ctl as i64, None),
            index.var(crate::ENV_INDEX, g.index as i64, None),
            state.var(crate::ENV_STATE, g.stop_signal.into(), Some(g.cont_pending.into())),
        ])
        .chain(relayed.into_iter().chain([watched]).filter(|v| !v.is_empty()))
    {
        if let Some(slot) = env.get_mut(n) {
            *slot = v;
            n += 1;
        }
    }
    let e = raw::execve(&l.program, &[&l.argv0], &env[..n]);
    say(&[b"bpghost: cannot run the ghost program again: ", e.desc().as_bytes(), b"\n"]);
    crate::violent_death()
}

/// Writes `parts` to stderr.
fn say(parts: &[&[u8]]) {
    for p in parts {
        let _ = raw::write_all(2, p);
    }
}

/// `KEY=N` or `KEY=N,M` for an environment, formatted on the stack.
struct Line {
    buf: [u8; 128],
}

impl Line {
    fn new() -> Line {
        Line { buf: [0; 128] }
    }

    /// The relay's token and listener, as [`crate::relay::ENV_IO`] hands them over.
    fn relay(&mut self, token: &[u8; 16], listener: RawFd) -> &CStr {
        use std::fmt::Write;
        let mut hex = [0u8; 32];
        let _ = hex::encode_to_slice(token, &mut hex);
        let hex = std::str::from_utf8(&hex).unwrap_or_default();
        let mut w = Cursor { buf: &mut self.buf, len: 0 };
        let ok = write!(w, "{}={hex}:{listener}\0", crate::relay::ENV_IO).is_ok();
        let len = if ok { w.len } else { 0 };
        CStr::from_bytes_with_nul(&self.buf[..len]).unwrap_or(c"")
    }

    /// The relay's open connections, as [`crate::relay::ENV_CONNS`] hands them over.
    fn conns(&mut self, conns: &[(RawFd, i32)]) -> &CStr {
        use std::fmt::Write;
        let mut w = Cursor { buf: &mut self.buf, len: 0 };
        let mut ok = write!(w, "{}=", crate::relay::ENV_CONNS).is_ok();
        for (i, (fd, which)) in conns.iter().filter(|(fd, _)| *fd >= 0).enumerate() {
            let sep = if i == 0 { "" } else { "," };
            ok &= write!(w, "{sep}{fd}:{which}").is_ok();
        }
        ok &= w.write_char('\0').is_ok();
        let len = if ok { w.len } else { 0 };
        CStr::from_bytes_with_nul(&self.buf[..len]).unwrap_or(c"")
    }

    fn var(&mut self, key: &str, n: i64, m: Option<i64>) -> &CStr {
        use std::fmt::Write;
        let mut w = Cursor { buf: &mut self.buf, len: 0 };
        let ok = match m {
            Some(m) => write!(w, "{key}={n},{m}\0"),
            None => write!(w, "{key}={n}\0"),
        };
        let len = if ok.is_ok() { w.len } else { 0 };
        CStr::from_bytes_with_nul(&self.buf[..len]).unwrap_or(c"")
    }
}

/// `fmt::Write` into a fixed buffer.
struct Cursor<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl std::fmt::Write for Cursor<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        self.buf.get_mut(self.len..end).ok_or(std::fmt::Error)?.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}
