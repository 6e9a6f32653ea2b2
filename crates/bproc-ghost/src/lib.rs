//! The ghost: the stand-in on the master of a process that runs on a node (spec §5.4).
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
//!   id), `GhostExec` re-execs itself under the new name, keeping its pid and connection;
//! - `ProcExit` ends it with the remote status: the same exit code, or death by the same
//!   signal (with core dumps off, so the core flag stays clear).
//!
//! SIGKILL cannot be caught: the master sees the ghost's connection close while the remote
//! process still runs, and kills that process. If the master goes away, the ghost kills itself
//! with SIGKILL, BProc's "violent death".
#![deny(missing_docs)]

use std::ffi::{CString, OsString};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::process::ExitCode;

use bproc_proto::{ExitStatus, Header, Message, HEADER_LEN};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, raise, sigprocmask, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::unistd::Pid;

/// Environment variable naming an inherited control fd (a ghost that re-execs itself).
pub const ENV_FD: &str = "BPROC_GHOST_FD";
/// Environment variable naming the fork a new child ghost answers.
pub const ENV_FORK: &str = "BPROC_GHOST_FORK";
/// Environment variable asking for this many ghosts in all (see [`main`]).
pub const ENV_COUNT: &str = "BPROC_GHOST_COUNT";
/// bpmaster's client socket when `BPROC_SOCKET` is not set.
const DEFAULT_SOCKET: &str = "/run/bproc/master.sock";

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
    let keep = std::env::var(ENV_FD).ok().and_then(|v| v.parse::<u32>().ok());
    bproc_sys::close_fds_from(3, keep);
    let all = SigSet::all();
    bproc_sys::default_signal_actions();
    if sigprocmask(SigmaskHow::SIG_SETMASK, Some(&all), None).is_err() {
        return ExitCode::from(255);
    }
    if let Some(count) = std::env::var(ENV_COUNT).ok().and_then(|v| v.parse::<usize>().ok()) {
        let made = make_siblings(count);
        // Whole lines, at most PIPE_BUF bytes a write: writes of several makers interleave
        // only between lines.
        let mut chunk = String::new();
        for (i, pid) in made {
            let line = format!("{i} {pid}\n");
            if chunk.len() + line.len() > 4000 {
                let _ = nix::unistd::write(std::io::stdout(), chunk.as_bytes());
                chunk.clear();
            }
            chunk.push_str(&line);
        }
        if !chunk.is_empty() {
            let _ = nix::unistd::write(std::io::stdout(), chunk.as_bytes());
        }
        // Only the launcher's reader had use for stdout: let it see the end.
        if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
            let _ = nix::unistd::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), 1);
        }
    }
    let sfd = match SignalFd::with_flags(&all, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("bpghost: signalfd: {e}");
            return ExitCode::from(255);
        }
    };
    let ctl = match control() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bpghost: cannot reach bpmaster: {e}");
            return ExitCode::from(255);
        }
    };
    serve(sfd, ctl)
}

/// Ghosts a maker makes itself; beyond, it hands half of its range to a sibling that makes
/// those in parallel (a launcher's two cores fork twice as many).
const SPLIT: usize = 64;

/// Makes ghosts 0..count as siblings of this one (ghost 0); returns the (index, pid) pairs
/// this process made, itself included. A sibling that takes over a range returns its own.
fn make_siblings(count: usize) -> Vec<(usize, i32)> {
    let (mut lo, mut hi) = (0, count.max(1));
    while hi - lo > SPLIT {
        let mid = lo + (hi - lo) / 2;
        match bproc_sys::clone_sibling() {
            Ok(0) => lo = mid, // this process is ghost `mid` and makes `mid..hi`
            Ok(_) => hi = mid,
            Err(_) => break,
        }
    }
    let mut made = vec![(lo, std::process::id() as i32)];
    for i in lo + 1..hi {
        match bproc_sys::clone_sibling() {
            Ok(0) => return Vec::new(),
            Ok(pid) => made.push((i, pid)),
            Err(_) => break, // the launcher sees fewer pids and runs those ranks without
        }
    }
    made
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
        nix::fcntl::fcntl(
            s.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )?;
        return Ok(s);
    }
    let path = std::env::var_os("BPROC_SOCKET").unwrap_or_else(|| DEFAULT_SOCKET.into());
    let mut s = UnixStream::connect(path)?;
    let fork = std::env::var(ENV_FORK).ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    s.write_all(&bproc_proto::encode(0, &Message::GhostHello { fork }))?;
    Ok(s)
}

fn read_frame(s: &mut UnixStream) -> Option<Message> {
    let mut head = [0u8; HEADER_LEN];
    s.read_exact(&mut head).ok()?;
    let h = Header::parse(&head).ok()?;
    let mut body = vec![0u8; h.len as usize];
    s.read_exact(&mut body).ok()?;
    bproc_proto::decode_body(&h, &body).ok()
}

/// Signals that stop a process by default; forwarding one asks for a stop.
fn is_stop(sig: i32) -> bool {
    [Signal::SIGTSTP, Signal::SIGTTIN, Signal::SIGTTOU].iter().any(|s| *s as i32 == sig)
}

fn serve(sfd: SignalFd, mut ctl: UnixStream) -> ExitCode {
    // A SIGCONT forwarded since the last stop request or notice: a stop notice that comes
    // after it is stale (Ctrl-Z then at once `fg`; or this ghost was stopped by a SIGSTOP of
    // its own, which the master passed on, and continued since).
    let mut cont_pending = false;
    loop {
        let mut fds = [
            PollFd::new(sfd.as_fd(), PollFlags::POLLIN),
            PollFd::new(ctl.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::Error::EINTR) => continue,
            Err(_) => return violent_death(),
        }
        let sig_ready = fds[0].revents().is_some_and(|r| r.contains(PollFlags::POLLIN));
        let ctl_ready = fds[1].revents().is_some_and(|r| !r.is_empty());
        if sig_ready {
            while let Ok(Some(info)) = sfd.read_signal() {
                let sig = info.ssi_signo as i32;
                if sig == Signal::SIGCHLD as i32 {
                    reap();
                    continue;
                }
                if is_stop(sig) {
                    cont_pending = false;
                } else if sig == Signal::SIGCONT as i32 {
                    cont_pending = true;
                }
                let msg = Message::GhostSignal { signal: sig, sender: info.ssi_pid as i32 };
                if ctl.write_all(&bproc_proto::encode(0, &msg)).is_err() {
                    return violent_death();
                }
            }
        }
        if !ctl_ready {
            continue;
        }
        match read_frame(&mut ctl) {
            None => return violent_death(),
            Some(Message::ProcExit { status, .. }) => return die(status),
            Some(Message::GhostState { stopped }) => {
                if stopped && !cont_pending {
                    let _ = raise(Signal::SIGSTOP);
                }
                cont_pending = false;
            }
            Some(Message::GhostFork { fork, comm }) => {
                if bproc_sys::fork_single_threaded() == Ok(0) {
                    // The child's copies of the signalfd and connection close on exec.
                    reexec(&comm, &[(ENV_FORK, fork.to_string())]);
                    return violent_death();
                }
            }
            Some(Message::GhostExec { comm }) => {
                let fd = ctl.as_raw_fd();
                let _ = nix::fcntl::fcntl(
                    fd,
                    nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
                );
                reexec(&comm, &[(ENV_FD, fd.to_string())]);
                let _ = nix::fcntl::fcntl(
                    fd,
                    nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
                );
            }
            Some(_) => {}
        }
    }
}

/// Reaps ended child ghosts.
fn reap() {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    while let Ok(st) = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
        if st == WaitStatus::StillAlive {
            break;
        }
    }
}

/// Runs this ghost program again as `[comm]`, with `env` added to a minimal environment.
/// Returns only if the exec failed.
fn reexec(comm: &str, env: &[(&str, String)]) {
    let Ok(exe) = CString::new("/proc/self/exe") else { return };
    let Ok(arg0) = CString::new(format!("[{comm}]")) else { return };
    let mut envp: Vec<CString> =
        env.iter().filter_map(|(k, v)| CString::new(format!("{k}={v}")).ok()).collect();
    if let Some(sock) = std::env::var_os("BPROC_SOCKET") {
        let mut kv = b"BPROC_SOCKET=".to_vec();
        kv.extend_from_slice(sock.as_bytes());
        envp.extend(CString::new(kv));
    }
    let _ = nix::unistd::execve(&exe, &[arg0], &envp);
}

/// Ends the ghost as the remote process ended: dies by its signal, or returns its code.
fn die(status: ExitStatus) -> ExitCode {
    match status {
        ExitStatus::Code(c) => ExitCode::from((c & 0xff) as u8),
        ExitStatus::Signal(s) => {
            if let Ok(sig) = Signal::try_from(s) {
                // No core file, so the parent sees the signal with the core flag clear.
                let _ =
                    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0);
                let mut one = SigSet::empty();
                one.add(sig);
                let _ = kill(Pid::this(), sig);
                let _ = sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&one), None);
            }
            // A signal whose default is not to end a process: end with the shell's code.
            ExitCode::from((128 + (s & 0x7f)) as u8)
        }
        ExitStatus::NodeLost => violent_death(),
    }
}

/// The master is gone or the node was lost: die as BProc's ghosts did, by SIGKILL.
fn violent_death() -> ExitCode {
    let _ = kill(Pid::this(), Signal::SIGKILL);
    ExitCode::from(137)
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
