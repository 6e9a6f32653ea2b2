//! The ghost: the stand-in on the master of a process that runs on a node.
//!
//! A ghost is a real process, a child of whoever launched the remote process, so `wait()`,
//! `SIGCHLD`, process groups, `ps` and job control work on it unchanged. Its `argv` is only
//! `[prog]` and its `comm` is `prog`, so `ps` shows `[prog]` as BProc's ghosts did.
//!
//! It talks to bpmaster over the client socket: the first frame is `GhostHello`, and the
//! kernel's `SO_PEERCRED` tells the master which pid it is. Then:
//! - every catchable signal is blocked and read from a signalfd, and sent on as
//!   `GhostSignal` (SIGCHLD excepted: it reaps its own children, the ghosts of remote forks);
//! - `GhostState { stopped }` makes it stop itself with SIGSTOP, so the parent sees the stop;
//! - `GhostFork` forks a child ghost (which execs itself afresh and says hello with the fork
//!   id) and says its pid at once (`GhostForked`: a node may wait for it); `GhostExec`
//!   re-execs itself under the new name, keeping its pid and connection;
//! - `GhostRfork` (its process, on a node, rforks) forks a child ghost that relays the
//!   rforked child's output to this ghost's stdout and stderr and says its relay's port;
//! - `ProcExit` ends it with the remote status: the same exit code, or death by the same
//!   signal (with core dumps off, so the core flag stays clear).
//!
//! - `GhostRestore` (its process moves back to the front end) makes it restore the process's
//!   image into itself, so the process is back under its own pid and parent.
//! - `GhostSpawn` (its process, a launcher on a node, launched a rank on the front end,
//!   `bpsh 1 bpsh master cmd`): it starts the rank as its own child ([`spawn`]), with the
//!   user's rights it has, answers `RankSpawned` with the pid, and `ProcExit` when the child
//!   ends.
//!
//! The ghost of a moved or rforked process also relays that process's output ([`relay`]).
//!
//! The ghosts of one launch share one address space ([`light`]): each does the above for
//! signals, stops and the end itself, and for anything else becomes a full ghost by
//! executing this program again.
//!
//! SIGKILL cannot be caught: the master sees the ghost's connection close while the remote
//! process still runs, and kills that process.
//!
//! A ghost outlives its master: when the connection ends it connects again and says hello
//! (the signals it receives meanwhile wait), so a master that restarts finds it and goes on
//! following its process. Only if no master answers within the grace period (`BPROC_GRACE`
//! seconds, default 60, the master's default `graceperiod`) does it kill itself with SIGKILL,
//! BProc's "violent death": by then the nodes have ended its process.
#![deny(missing_docs)]

pub mod light;
pub mod relay;
pub mod spawn;

use std::ffi::{CString, OsString};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::process::ExitCode;

use bproc_proto::{ExitStatus, Header, Message, HEADER_LEN};
use bproc_sys::task::raw;
use nix::libc;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::unistd::Pid;

/// Environment variable naming an inherited control fd (a ghost that re-execs itself).
pub const ENV_FD: &str = "BPROC_GHOST_FD";
/// Environment variable naming the fork a new child ghost answers.
pub const ENV_FORK: &str = "BPROC_GHOST_FORK";
/// Environment variable asking for this many ghosts in all (see [`main`]).
pub const ENV_COUNT: &str = "BPROC_GHOST_COUNT";
/// Environment variable: which of the launch's ghosts this one is (a light ghost that
/// becomes a full one, see [`light`]); 0 when not set.
pub const ENV_INDEX: &str = "BPROC_GHOST_INDEX";
/// Environment variable: `STOP,CONT`, the stop signal a ghost forwarded last and whether a
/// SIGCONT was forwarded since (a light ghost that becomes a full one).
pub const ENV_STATE: &str = "BPROC_GHOST_STATE";
/// Environment variable: `FD,PID`, an inherited fd, the pipe a launcher's ghosts watch until
/// it says that it sent the launch (see [`light::fork`]), which a light ghost that becomes a
/// full one hands on, and the launcher's pid, which they watch with it through a pidfd (0 or
/// left out: not known).
pub const ENV_LAUNCHED: &str = "BPROC_GHOST_LAUNCHED";
/// Set by a launcher that gives its ghosts its stdout (as their stdin, since stdout carries
/// the pid list) and stderr: the ghost keeps them as its fds 1 and 2, so a process that moves
/// back to the front end into its ghost writes where its launcher does.
pub const ENV_OUTPUT: &str = "BPROC_GHOST_OUTPUT";
use bproc_proto::DEFAULT_SOCKET;
/// Environment variable: seconds a ghost waits for its master to come back.
pub const ENV_GRACE: &str = "BPROC_GRACE";
/// The wait when `BPROC_GRACE` is not set: the master's default `graceperiod`.
const DEFAULT_GRACE: std::time::Duration = std::time::Duration::from_secs(60);

/// How long to wait for a master that went away.
fn grace() -> std::time::Duration {
    std::env::var(ENV_GRACE)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(DEFAULT_GRACE, std::time::Duration::from_secs)
}

/// Runs a ghost; `argv0` is `[name]`. Returns only on a setup failure.
///
/// With `BPROC_GHOST_COUNT=N` it first makes N − 1 more ghosts, as siblings (children of its
/// own parent, the launcher), and the N pids are written to stdout as `INDEX PID` lines (in
/// no particular order) before every ghost takes `/dev/null` as stdout. A launcher so pays one
/// `exec` for a whole launch, and each further ghost costs a fork of this small process.
pub fn main(argv0: OsString) -> ExitCode {
    let name = name_of(argv0.as_bytes()).to_vec();
    if let Ok(c) = CString::new(name.clone()) {
        let _ = nix::sys::prctl::set_name(&c);
    }
    // Hold nothing of the launcher's but the control socket a re-exec passes on: a ghost
    // that kept a pipe open would keep its reader waiting.
    let fd_of = |name| std::env::var(name).ok().and_then(|v| v.parse::<u32>().ok());
    let (launched_fd, launcher) = launched_env();
    let keep = [fd_of(ENV_FD), launched_fd].into_iter().flatten();
    let conns = relay::inherited_conns().into_iter().map(|(fd, _)| fd);
    bproc_sys::close_fds_from(
        3,
        &keep.chain(relay::inherited_fd()).chain(conns).collect::<Vec<_>>(),
    );
    let launched = launched_fd.and_then(|fd| bproc_sys::inherited_pipe(fd as i32));
    let all = SigSet::all();
    bproc_sys::default_signal_actions();
    if sigprocmask(SigmaskHow::SIG_SETMASK, Some(&all), None).is_err() {
        return ExitCode::from(255);
    }
    let mut relay = None;
    let mut index = std::env::var(ENV_INDEX).ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    if let Some(count) = std::env::var(ENV_COUNT).ok().and_then(|v| v.parse::<usize>().ok()) {
        // The ghosts share one address space; if that cannot be had, each is a fork.
        if count > 1 {
            // The launcher's pipe above a relaying light ghost's listener (fd 3), open
            // across the exec that makes one a full ghost.
            let above = nix::fcntl::FcntlArg::F_DUPFD(light::LISTENER + 1);
            let watched =
                launched.as_ref().and_then(|l| nix::fcntl::fcntl(l.as_raw_fd(), above).ok());
            light::start(count, argv0.as_bytes(), watched.unwrap_or(-1), launcher);
            if let Some(w) = watched {
                let _ = nix::unistd::close(w);
            }
        }
        let (me, made, failed) = make_siblings(count);
        index = me;
        if let Some(r) = relay::Relay::from_env() {
            // Each ghost has its own listener, so each writes its own line, with the port.
            let line = match &r {
                Ok(r) => format!("{me} {} {}\n", std::process::id(), r.port()),
                Err(_) => format!("{me} {} 0\n", std::process::id()),
            };
            let _ = nix::unistd::write(std::io::stdout(), line.as_bytes());
            relay = r.ok();
        }
        let mut lines = light::Lines::new();
        if relay.is_none() {
            for (i, pid) in made {
                lines.add(i, pid, None);
            }
        }
        if let Some(e) = failed {
            lines.failed(e);
        }
        lines.flush();
        // Only the launcher's reader had use for stdout: let it see the end. A relay writes
        // its process's output to the launcher's stdout, which came in as stdin (the pipe
        // took the place of stdout); the ghost reads nothing.
        if let Ok(null) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null") {
            let null = std::os::fd::AsRawFd::as_raw_fd(&null);
            if relay.is_some() || std::env::var_os(ENV_OUTPUT).is_some() {
                let _ = nix::unistd::dup2(0, 1);
                let _ = nix::unistd::dup2(null, 0);
            } else {
                let _ = nix::unistd::dup2(null, 1);
            }
        }
    }
    if let Some(l) = &launched {
        let _ = close_on_exec(l.as_raw_fd(), true);
    }
    let sfd = match SignalFd::with_flags(&all, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("bpghost: signalfd: {e}");
            return ExitCode::from(255);
        }
    };
    if relay.is_none() {
        relay = relay::Relay::from_env().and_then(Result::ok);
    }
    // A launcher's ghost (not an rforked child's) learns where its rank's output rejoins.
    let forked = std::env::var(ENV_FORK).is_ok_and(|v| v != "0");
    if let (false, Some(r)) = (forked, std::env::var(bproc_proto::conn::ENV_REJOIN).ok()) {
        if let Some(r) = bproc_proto::conn::Rejoin::decode(&r) {
            if let Some(&rank) = r.ranks.get(index) {
                let _ = REJOIN.set((r, rank));
            }
        }
    }
    let mut ctl = match control() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bpghost: cannot reach bpmaster: {e}");
            return ExitCode::from(255);
        }
    };
    // The ghost of an rforked child (forked by its caller's ghost) says where it relays.
    if let (true, Some(r)) = (forked, &relay) {
        let msg = Message::GhostRelayPort { port: r.port() };
        if ctl.write_all(&bproc_proto::encode(0, &msg)).is_err() {
            violent_death();
        }
    }
    // A light ghost that became this one says where it was.
    let state = std::env::var(ENV_STATE).unwrap_or_default();
    let (stop, cont) = state.split_once(',').unwrap_or(("0", "0"));
    STOP_SIGNAL.store(stop.parse().unwrap_or(0), std::sync::atomic::Ordering::Relaxed);
    let launched = launched.and_then(|pipe| Watched::new(pipe, launcher));
    serve(sfd, ctl, relay, cont == "1", launched)
}

/// The launcher's pipe's fd and the launcher's pid (0: not known) from [`ENV_LAUNCHED`].
fn launched_env() -> (Option<u32>, i32) {
    let v = std::env::var(ENV_LAUNCHED).unwrap_or_default();
    let (fd, pid) = v.split_once(',').unwrap_or((&v, "0"));
    (fd.parse().ok(), pid.parse().unwrap_or(0))
}

/// What a full ghost watches until its launcher ends: the launcher's pipe, and a pidfd of the
/// launcher, as a light ghost does (see [`light::launcher_pidfd`]).
struct Watched {
    pipe: std::os::fd::OwnedFd,
    /// The pidfd (close-on-exec), where the kernel has them and the pid is known.
    launcher: Option<std::os::fd::OwnedFd>,
    /// The launcher's pid, handed on with the pipe.
    pid: i32,
}

impl Watched {
    /// Watches `pipe` and the launcher `pid`; `None` once the launcher ended with its word
    /// that it sent the launch in the pipe (the ghost ends if it is not there).
    fn new(pipe: std::os::fd::OwnedFd, pid: i32) -> Option<Watched> {
        match light::launcher_pidfd(pid) {
            Ok(launcher) => Some(Watched { pipe, launcher, pid }),
            Err(()) => {
                light::end_unless_sent(pipe.as_raw_fd());
                None
            }
        }
    }
}

/// Ghosts a maker makes itself; beyond, it hands half of its range to a sibling that makes
/// those in parallel (a launcher's two cores fork twice as many).
const SPLIT: usize = 64;

/// Makes ghosts 0..count as siblings of this one (ghost 0); returns this process's index,
/// the (index, pid) pairs it made, itself included, and the errno that stopped it making
/// more, if one did (the launcher sees fewer pids, and why). A sibling that takes over a
/// range returns its own.
fn make_siblings(count: usize) -> (usize, Vec<(usize, i32)>, Option<nix::errno::Errno>) {
    let (mut lo, mut hi) = (0, count.max(1));
    while hi - lo > SPLIT {
        let mid = lo + (hi - lo) / 2;
        match bproc_sys::clone_sibling() {
            Ok(0) => lo = mid, // this process is ghost `mid` and makes `mid..hi`
            Ok(_) => hi = mid,
            Err(_) => break, // this one makes the whole range, one at a time
        }
    }
    let mut made = vec![(lo, std::process::id() as i32)];
    for i in lo + 1..hi {
        match bproc_sys::clone_sibling() {
            Ok(0) => return (i, Vec::new(), None),
            Ok(pid) => made.push((i, pid)),
            Err(e) => return (lo, made, Some(e)),
        }
    }
    (lo, made, None)
}

/// `prog` from `[prog]`.
fn name_of(argv0: &[u8]) -> &[u8] {
    argv0.strip_prefix(b"[").and_then(|n| n.strip_suffix(b"]")).unwrap_or(argv0)
}

/// The connection to the master: inherited across a re-exec, or opened and introduced.
fn control() -> std::io::Result<UnixStream> {
    if let Some(fd) = std::env::var(ENV_FD).ok().and_then(|v| v.parse::<i32>().ok()) {
        let s = bproc_sys::inherited_socket(fd)
            .ok_or_else(|| std::io::Error::other(format!("fd {fd} is not the master's socket")))?;
        close_on_exec(s.as_raw_fd(), true)?;
        return Ok(s);
    }
    let fork = std::env::var(ENV_FORK).ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    hello(fork)
}

/// A new connection to the master, introduced as ghost of fork `fork` (0: none).
fn hello(fork: u64) -> std::io::Result<UnixStream> {
    let path = socket_path();
    let mut s = UnixStream::connect(path)?;
    s.write_all(&bproc_proto::encode(0, &Message::GhostHello { fork }))?;
    Ok(s)
}

/// The master went away: connects again once it is back, and sends it the signals that came
/// meanwhile. None if it does not come back within the grace period.
fn reconnect(sfd: &SignalFd, cont_pending: &mut bool) -> Option<UnixStream> {
    let deadline = std::time::Instant::now() + grace();
    let mut waiting = Vec::new();
    loop {
        waiting.extend(read_signals(sfd, cont_pending));
        if let Ok(mut s) = hello(0) {
            let sent = waiting.iter().all(|m| s.write_all(&bproc_proto::encode(0, m)).is_ok());
            if sent {
                return Some(s);
            }
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return None;
        }
        // Wake for a signal as well, so it is read (and a child ghost reaped) at once.
        let mut fds = [PollFd::new(sfd.as_fd(), PollFlags::POLLIN)];
        let wait = left.min(std::time::Duration::from_millis(100)).as_millis() as u16;
        let _ = poll(&mut fds, PollTimeout::from(wait));
    }
}

/// The signals pending on `sfd` as messages for the master (child ghosts are reaped, not
/// forwarded).
fn read_signals(sfd: &SignalFd, cont_pending: &mut bool) -> Vec<Message> {
    let mut out = Vec::new();
    while let Ok(Some(info)) = sfd.read_signal() {
        let sig = info.ssi_signo as i32;
        if sig == Signal::SIGCHLD as i32 {
            out.extend(reap());
            continue;
        }
        if is_stop(sig) {
            *cont_pending = false;
            STOP_SIGNAL.store(sig, std::sync::atomic::Ordering::Relaxed);
        } else if sig == Signal::SIGCONT as i32 {
            *cont_pending = true;
        }
        out.push(Message::GhostSignal { signal: sig, sender: info.ssi_pid as i32 });
    }
    out
}

fn read_frame(s: &mut UnixStream) -> Option<Message> {
    let mut head = [0u8; HEADER_LEN];
    s.read_exact(&mut head).ok()?;
    let h = Header::parse(&head).ok()?;
    let mut body = vec![0u8; h.len as usize];
    s.read_exact(&mut body).ok()?;
    bproc_proto::decode_body(&h, &body).ok()
}

/// The stop signal this ghost forwarded last (SIGTSTP, SIGTTIN, SIGTTOU), which it stops
/// itself with when its process stops, so its parent's `waitpid` sees the signal a local
/// process would have stopped on; 0 for none (a stop on the node: SIGSTOP).
static STOP_SIGNAL: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// Stops this ghost as its process stopped: with `sig`, the stop signal it forwarded last
/// (SIGTSTP, SIGTTIN, SIGTTOU), or else SIGSTOP. The signal is blocked (read from the
/// signalfd), so it is raised and let through for the moment it takes to stop; the ghost
/// goes on here once continued. Direct system calls only: a light ghost calls it too.
pub(crate) fn stop_as(sig: i32) {
    let me = raw::getpid();
    if !is_stop(sig) {
        let _ = raw::kill(me, libc::SIGSTOP);
        return;
    }
    let _ = raw::kill(me, sig);
    // The pending signal is delivered (its default action stops this process) on unblocking.
    let _ = raw::sigprocmask(libc::SIG_UNBLOCK, Some(bit(sig)));
    let _ = raw::sigprocmask(libc::SIG_BLOCK, Some(bit(sig)));
    // In an orphaned process group the kernel drops it instead; a ghost that stopped was
    // continued by a SIGCONT, which waits in the signalfd.
    if raw::sigpending().is_ok_and(|p| p & bit(libc::SIGCONT) == 0) {
        let _ = raw::kill(me, libc::SIGSTOP);
    }
}

/// Signal `sig`'s bit in the kernel's mask.
fn bit(sig: i32) -> u64 {
    if (1..=64).contains(&sig) {
        1 << (sig - 1)
    } else {
        0
    }
}

/// Signals that stop a process by default; forwarding one asks for a stop.
pub(crate) fn is_stop(sig: i32) -> bool {
    [Signal::SIGTSTP, Signal::SIGTTIN, Signal::SIGTTOU].iter().any(|s| *s as i32 == sig)
}

/// How long a ghost waits for its process's last output.
const DRAIN: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves the master and the signals until the process ends. `cont_pending`: a SIGCONT was
/// forwarded since the last stop request or notice, so a stop notice that comes after it is
/// stale (Ctrl-Z then at once `fg`; or this ghost was stopped by a SIGSTOP of its own, which
/// the master passed on, and continued since). `launched`: the launcher's pipe and the
/// launcher, watched as a light ghost watches them (see [`light::fork`]).
fn serve(
    sfd: SignalFd,
    mut ctl: UnixStream,
    mut relay: Option<relay::Relay>,
    mut cont_pending: bool,
    mut launched: Option<Watched>,
) -> ExitCode {
    loop {
        let mut fds = vec![
            PollFd::new(sfd.as_fd(), PollFlags::POLLIN),
            PollFd::new(ctl.as_fd(), PollFlags::POLLIN),
        ];
        if let Some(r) = &relay {
            fds.extend(r.poll_fds().into_iter().map(|f| PollFd::new(f, PollFlags::POLLIN)));
        }
        let relayed = fds.len() - 2;
        // Only its end wakes the ghost (a hang-up is always reported), or the launcher's.
        if let Some(l) = &launched {
            fds.push(PollFd::new(l.pipe.as_fd(), PollFlags::empty()));
            if let Some(p) = &l.launcher {
                fds.push(PollFd::new(p.as_fd(), PollFlags::POLLIN));
            }
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::Error::EINTR) => continue,
            Err(_) => violent_death(),
        }
        let ready: Vec<bool> =
            fds.iter().map(|f| f.revents().is_some_and(|r| !r.is_empty())).collect();
        let sig_ready = fds[0].revents().is_some_and(|r| r.contains(PollFlags::POLLIN));
        drop(fds);
        let ctl_ready = ready[1];
        // The launcher's end first, as a light ghost takes it.
        if ready.get(2 + relayed..).is_some_and(|r| r.contains(&true)) {
            if let Some(l) = launched.take() {
                light::end_unless_sent(l.pipe.as_raw_fd());
            }
        }
        if let Some(r) = &mut relay {
            r.on_ready(&ready[2..2 + relayed]);
        }
        if sig_ready {
            let msgs = read_signals(&sfd, &mut cont_pending);
            if !msgs.iter().all(|m| ctl.write_all(&bproc_proto::encode(0, m)).is_ok()) {
                // Lost with the connection; the master that comes back is sent the rest.
                match reconnect(&sfd, &mut cont_pending) {
                    Some(c) => ctl = c,
                    None => violent_death(),
                }
            }
        }
        if !ctl_ready {
            continue;
        }
        match read_frame(&mut ctl) {
            None => match reconnect(&sfd, &mut cont_pending) {
                Some(c) => ctl = c,
                None => violent_death(),
            },
            Some(msg) => {
                let conn = (&mut ctl, launched.as_ref());
                if let Some(code) = on_message(msg, conn, &mut relay, &mut cont_pending) {
                    return code;
                }
            }
        }
    }
}

/// Serves one message from the master on `ctl` (with the launcher's pipe, while watched);
/// the ghost's exit code when it is to end.
fn on_message(
    msg: Message,
    (ctl, launched): (&mut UnixStream, Option<&Watched>),
    relay: &mut Option<relay::Relay>,
    cont_pending: &mut bool,
) -> Option<ExitCode> {
    match msg {
        Message::ProcExit { status, .. } => {
            if let Some(r) = relay {
                r.drain(DRAIN);
            }
            die(status)
        }
        Message::GhostRestore { image, token } => {
            let code = take_back(image, token, ctl, relay);
            let msg = Message::GhostRestored { code };
            if ctl.write_all(&bproc_proto::encode(0, &msg)).is_err() {
                violent_death()
            }
        }
        Message::GhostSpawn { launch, rank, spec } => {
            let pid = spawn::start(launch, rank, &spec);
            let msg = Message::RankSpawned { launch, rank, pid };
            if ctl.write_all(&bproc_proto::encode(0, &msg)).is_err() {
                // The master went away; the child runs and its end is sent to the next.
                return None;
            }
        }
        Message::GhostState { stopped } => {
            if stopped && !*cont_pending {
                stop_as(STOP_SIGNAL.swap(0, std::sync::atomic::Ordering::Relaxed));
            }
            *cont_pending = false;
        }
        Message::GhostFork { fork, comm } => return fork_ghost(fork, &comm, ctl),
        Message::GhostRfork { fork, comm, token } => return rfork_ghost(fork, &comm, &token),
        Message::GhostExec { comm } => {
            let fd = ctl.as_raw_fd();
            let _ = close_on_exec(fd, false);
            // The stop state goes along: a stop signal forwarded just before the exec names
            // the stop that comes after it.
            let stop = STOP_SIGNAL.load(std::sync::atomic::Ordering::Relaxed);
            let state = format!("{stop},{}", u8::from(*cont_pending));
            let mut env = vec![(ENV_FD, fd.to_string()), (ENV_STATE, state)];
            // So does the relay, with the output it has yet to copy, and the launcher's pipe.
            env.extend(relay.as_ref().map(relay::Relay::hand_over).unwrap_or_default());
            let pid = launched.map_or(0, |l| l.pid);
            let launched = launched.map(|l| l.pipe.as_raw_fd());
            if let Some(l) = launched.filter(|l| close_on_exec(*l, false).is_ok()) {
                env.push((ENV_LAUNCHED, format!("{l},{pid}")));
            }
            reexec(&comm, &env);
            let _ = close_on_exec(fd, true);
            if let Some(l) = launched {
                let _ = close_on_exec(l, true);
            }
        }
        _ => {}
    }
    None
}

/// Forks this ghost for the process's fork `fork` (named `comm`) and tells the master the
/// new ghost's pid on `ctl`; the child's exit code, should its re-exec fail.
fn fork_ghost(fork: u64, comm: &str, ctl: &mut UnixStream) -> Option<ExitCode> {
    let forked = bproc_sys::fork_single_threaded();
    if let Some(pid) = forked.ok().filter(|p| *p > 0) {
        // Told at once: a node waits with the fork until it knows this pid, which its child
        // then takes. (A connection that failed is found so by the next read.)
        let msg = Message::GhostForked { fork, pid };
        let _ = ctl.write_all(&bproc_proto::encode(0, &msg));
    }
    if forked == Ok(0) {
        // A fork's ghost holds nothing of the launcher's output: a pipe it kept open would
        // keep its reader waiting for as long as the ghost lives.
        if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
            let null = std::os::fd::AsRawFd::as_raw_fd(&null);
            let _ = nix::unistd::dup2(null, 1);
            let _ = nix::unistd::dup2(null, 2);
        }
        // The child's copies of the signalfd and connection close on exec.
        reexec(comm, &[(ENV_FORK, fork.to_string())]);
        violent_death()
    }
    None
}

/// Forks this ghost for the process's rfork `fork` (named `comm`, its output relayed with
/// `token`); the child's exit code, should its re-exec fail.
fn rfork_ghost(fork: u64, comm: &str, token: &[u8; 16]) -> Option<ExitCode> {
    if bproc_sys::fork_single_threaded() == Ok(0) {
        // Keeps this ghost's stdout and stderr: the rforked child's output is written where
        // its caller's would be on the front end.
        let io = relay::env_value(token, None);
        reexec(comm, &[(ENV_FORK, fork.to_string()), (relay::ENV_IO, io)]);
        violent_death()
    }
    None
}

/// Where this ghost's rank's forwarded output rejoins its launcher, and the rank.
static REJOIN: std::sync::OnceLock<(bproc_proto::conn::Rejoin, u32)> = std::sync::OnceLock::new();

/// Before the process moves back in: its forwarded stdout and stderr become connections to
/// the launcher again, as the same rank, opened while its copy on the node still runs, so the
/// launcher reads them after that copy's streams end and what the node wrote comes out first.
/// A stream that cannot connect is left as it was (the launcher's stdout or stderr itself).
fn rejoin_launcher() {
    let Some((r, rank)) = REJOIN.get() else { return };
    for &fd in &r.fds {
        let opened =
            std::net::TcpStream::connect_timeout(&r.addr.into(), DRAIN).and_then(|mut s| {
                s.set_nodelay(true)?;
                s.write_all(&bproc_proto::conn::header(&r.token, *rank, fd))?;
                Ok(s)
            });
        match opened {
            Ok(s) => {
                let _ = nix::unistd::dup2(s.as_raw_fd(), i32::from(fd));
            }
            Err(e) => eprintln!("bpghost: cannot reach the launcher at {}: {e}", r.addr),
        }
    }
}

/// Becomes the process again: restores its image, fetched from `image`, into this process.
/// Returns only on failure, with the errno to report (this ghost goes on as before).
fn take_back(
    image: bproc_proto::Endpoint,
    token: [u8; 16],
    ctl: &mut UnixStream,
    relay: &mut Option<relay::Relay>,
) -> i32 {
    let addr =
        std::net::SocketAddrV4::new(image.ip.unwrap_or(std::net::Ipv4Addr::LOCALHOST), image.port);
    let opened = std::net::TcpStream::connect_timeout(&addr.into(), DRAIN).and_then(|mut s| {
        use bproc_proto::conn;
        s.write_all(&conn::header(&token, 0, conn::IMAGE))?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
        // The mover asks which of its files the front end has: those it names, not sends.
        let bad = |e: bproc_proto::DecodeError| std::io::Error::other(e.to_string());
        let mut head = [0u8; 4];
        s.read_exact(&mut head)?;
        let mut body = vec![0u8; conn::probe_len(head).map_err(bad)?];
        s.read_exact(&mut body)?;
        let here = |f: &conn::FileId| bproc_ckpt::restore::same_file(&f.path, f.size, f.mtime);
        s.write_all(&conn::answer(&body, here).map_err(bad)?)?;
        Ok(s)
    });
    let s = match opened {
        Ok(s) => s,
        Err(e) => {
            eprintln!("bpghost: cannot fetch the image from {addr}: {e}");
            return e.raw_os_error().unwrap_or(nix::libc::EIO);
        }
    };
    let reader = std::io::BufReader::with_capacity(1 << 20, s);
    if relay.is_none() {
        rejoin_launcher();
    }
    // Runs in the restore's helper, with the process restored but held: the master is told
    // (so the copy on the node may end), and what that copy wrote comes out first.
    // The process finds the master's socket where it is now.
    let socket = socket_path();
    let note = socket.as_bytes().to_vec();
    let e = bproc_ckpt::restore::restore_in_place(reader, 1, Some(&note), &mut || {
        let ok = bproc_proto::encode(0, &Message::GhostRestored { code: 0 });
        ctl.write_all(&ok)
            .map_err(|e| bproc_ckpt::CkptError::Busy(format!("the master went away: {e}")))?;
        if let Some(r) = relay {
            r.drain(DRAIN);
        }
        Ok(())
    });
    eprintln!("bpghost: cannot take the process back: {e}");
    e.errno()
}

/// Reaps ended children: child ghosts, and the ranks it started, whose ends go to the
/// master as [`Message::ProcExit`].
fn reap() -> Vec<Message> {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let mut ends = Vec::new();
    while let Ok(st) = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
        let (pid, status) = match st {
            WaitStatus::StillAlive => break,
            WaitStatus::Exited(p, c) => (p, ExitStatus::Code(c)),
            WaitStatus::Signaled(p, sig, _) => (p, ExitStatus::Signal(sig as i32)),
            _ => continue,
        };
        if let Some((launch, rank)) = spawn::ended(pid.as_raw()) {
            ends.push(Message::ProcExit { launch, rank, status });
        }
    }
    ends
}

/// The master's socket, as the environment names it.
fn socket_path() -> OsString {
    std::env::var_os("BPROC_SOCKET").unwrap_or_else(|| DEFAULT_SOCKET.into())
}

/// `NAME=VALUE` for each of `names` the environment has: what the ghost program keeps when
/// it runs again.
fn kept_env(names: &[&str]) -> Vec<CString> {
    let kv = |k: &&str| Some([k.as_bytes(), b"=", std::env::var_os(k)?.as_bytes()].concat());
    names.iter().filter_map(kv).filter_map(|v| CString::new(v).ok()).collect()
}

/// Runs this ghost program again as `[comm]`, with `env` added to a minimal environment.
/// Returns only if the exec failed.
fn reexec(comm: &str, env: &[(&str, String)]) {
    let Ok(exe) = CString::new("/proc/self/exe") else { return };
    let Ok(arg0) = CString::new(format!("[{comm}]")) else { return };
    let mut envp: Vec<CString> =
        env.iter().filter_map(|(k, v)| CString::new(format!("{k}={v}")).ok()).collect();
    envp.extend(kept_env(&["BPROC_SOCKET", ENV_GRACE]));
    // The process's output still rejoins its launcher as its rank (a ghost of a fork ignores
    // it: it is not a launcher's).
    if let Some((r, rank)) = REJOIN.get() {
        let mine = bproc_proto::conn::Rejoin { ranks: vec![*rank], ..r.clone() };
        let kv = format!("{}={}", bproc_proto::conn::ENV_REJOIN, mine.encode());
        envp.extend(CString::new(kv));
    }
    let _ = nix::unistd::execve(&exe, &[arg0], &envp);
}

/// Whether `fd` closes when this process executes a program (`on`), or stays open for it.
pub(crate) fn close_on_exec(fd: std::os::fd::RawFd, on: bool) -> nix::Result<()> {
    let flag = if on { nix::fcntl::FdFlag::FD_CLOEXEC } else { nix::fcntl::FdFlag::empty() };
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFD(flag)).map(drop)
}

/// Ends the ghost as the remote process ended: dies by its signal, or exits with its code.
/// Direct system calls only: a light ghost calls it too.
pub(crate) fn die(status: ExitStatus) -> ! {
    match status {
        ExitStatus::Code(c) => raw::exit_group(c & 0xff),
        ExitStatus::Signal(s) => {
            // No core file, so the parent sees the signal with the core flag clear.
            raw::no_core();
            let _ = raw::kill(raw::getpid(), s);
            let _ = raw::sigprocmask(libc::SIG_UNBLOCK, Some(bit(s)));
            // A signal whose default is not to end a process: end with the shell's code.
            raw::exit_group(128 + (s & 0x7f))
        }
        ExitStatus::NodeLost => violent_death(),
    }
}

/// The master did not come back or the node was lost: die as BProc's ghosts did, by SIGKILL.
pub(crate) fn violent_death() -> ! {
    let _ = raw::kill(raw::getpid(), libc::SIGKILL);
    raw::exit_group(137)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(name_of(b"[sleep]"), b"sleep");
        assert_eq!(name_of(b"plain"), b"plain");
    }
}
