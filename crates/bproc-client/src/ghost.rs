//! Ghosts, as a launcher makes them: before a launch, one ghost per remote process, a child
//! of the launcher in its process group, so that `wait()`, `kill`, `ps` and job control work
//! on the remote process through it. The ghost program itself is `bpghost`; the
//! master names it ([`crate::Place::ghost`]).

use std::ffi::OsString;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

pub use bproc_proto::conn::Rejoin;

/// The `comm` of a program: its file name, cut to the kernel's 15 bytes.
///
/// ```
/// assert_eq!(bproc_client::ghost::comm_of("/usr/bin/hello-world"), "hello-world");
/// ```
pub fn comm_of(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    let mut end = base.len().min(15);
    while !base.is_char_boundary(end) {
        end -= 1;
    }
    base[..end].to_owned()
}

/// Starts `n` ghosts named `[comm]` from `program` for a launch, children of the caller;
/// returns each one's pid and relay port, and the word to give them once the launch is sent
/// ([`LaunchSent`]). The program is executed once and forks the others, so a ghost costs a
/// fork of a small process. Each connects to the master itself and waits there for its
/// process. Without `relay` they have no stdio (the remote processes' I/O goes elsewhere);
/// with it (moved, rforked or launched processes whose output is forwarded), each listens
/// for its process's output connections, which present that token, and keeps the caller's
/// stdout and stderr to write it to.
pub fn spawn(
    program: &str,
    comm: &str,
    n: usize,
    relay: Option<&[u8; 16]>,
) -> std::io::Result<Made> {
    start(program, comm, n, relay)?.made()
}

/// [`spawn`] in two steps: the ghost program starts here, and its pids are read by
/// [`Starting::made`], so the caller can work meanwhile (a vector fork dumps itself while its
/// ghosts are made).
pub fn start(
    program: &str,
    comm: &str,
    n: usize,
    relay: Option<&[u8; 16]>,
) -> std::io::Result<Starting> {
    start_with(program, comm, n, relay.map_or(Io::None, Io::Relay))
}

/// Ghosts being made by [`start`].
pub struct Starting(Step);

enum Step {
    /// Known at once (none, or one ghost that is the child itself).
    Made(Made),
    /// Their pids come on `out` from the program's first process.
    Reading {
        out: std::process::ChildStdout,
        program: String,
        comm: String,
        n: usize,
        relay: bool,
        first: i32,
        sent: LaunchSent,
    },
}

impl Starting {
    /// The descriptors this process holds for the ghosts until [`Starting::made`] (which a
    /// dump meanwhile leaves out).
    pub fn fds(&self) -> Vec<std::os::fd::RawFd> {
        match &self.0 {
            Step::Made((_, sent)) => sent.iter().map(|s| s.0.as_raw_fd()).collect(),
            Step::Reading { out, sent, .. } => vec![out.as_raw_fd(), sent.0.as_raw_fd()],
        }
    }

    /// Waits for every ghost's pid, as [`spawn`] does.
    pub fn made(self) -> std::io::Result<Made> {
        match self.0 {
            Step::Made(made) => Ok(made),
            Step::Reading { out, program, comm, n, relay, first, sent } => {
                Ok((read_pids(out, &program, &comm, n, relay, first)?, Some(sent)))
            }
        }
    }
}

/// [`spawn`] for ghosts that keep the caller's stdout and stderr: a process that moves back
/// to the front end, into its ghost, then writes where the caller does (bpsh's ghosts), or,
/// with `rejoin`, to the caller's listener as the same rank.
pub fn spawn_keeping_output(
    program: &str,
    comm: &str,
    n: usize,
    rejoin: Option<&Rejoin>,
) -> std::io::Result<(Vec<i32>, Option<LaunchSent>)> {
    let (made, sent) = start_with(program, comm, n, Io::Output(rejoin))?.made()?;
    Ok((made.into_iter().map(|(pid, _)| pid).collect(), sent))
}

/// The ghosts made for a launch, each one's pid and relay port (0: none), and the word to
/// give them once the launch is sent.
pub type Made = (Vec<(i32, u16)>, Option<LaunchSent>);

/// What a new ghost keeps of the caller's stdio.
enum Io<'a> {
    /// Nothing.
    None,
    /// Stdout and stderr (and where output goes after a move back, if forwarded).
    Output(Option<&'a Rejoin>),
    /// Stdout and stderr, with a relay for connections presenting this token.
    Relay(&'a [u8; 16]),
}

/// Starts the ghosts, which watch the pipe whose write end comes back.
fn start_with(program: &str, comm: &str, n: usize, io: Io<'_>) -> std::io::Result<Starting> {
    let relay = match io {
        Io::Relay(t) => Some(t),
        _ => None,
    };
    if n == 0 {
        return Ok(Starting(Step::Made((Vec::new(), None))));
    }
    let mut cmd = Command::new(program);
    let rejoin = match &io {
        Io::Output(r) => *r,
        _ => None,
    };
    cmd.arg0(format!("[{comm}]")).env_clear().envs(ghost_env(rejoin));
    // The pipe's read end goes to the ghost program under its own number (open across the
    // exec), the write end stays here only; with it, this process's pid, which the ghosts
    // watch too (a process another thread forks meanwhile holds a copy of the write end).
    let (pipe, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let open = nix::fcntl::FdFlag::empty();
    nix::fcntl::fcntl(pipe.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFD(open))?;
    let launched = format!("{},{}", pipe.as_raw_fd(), std::process::id());
    cmd.env(bproc_ghost::ENV_LAUNCHED, launched);
    let sent = LaunchSent(w);
    if n == 1 && !matches!(io, Io::Relay(_)) {
        // One ghost is the child itself: its pid is known once it has exec'd, and the launch
        // need not wait for it to start up and say so. One that keeps the caller's output
        // gets it as stdout and stderr directly (no list of pids needs stdout's place).
        cmd.stdin(Stdio::null());
        match io {
            Io::Output(_) => {
                use std::os::fd::AsFd;
                let out = std::io::stdout().as_fd().try_clone_to_owned()?;
                cmd.stdout(Stdio::from(out)).stderr(Stdio::inherit());
            }
            _ => {
                cmd.stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        let pid = cmd.spawn()?.id() as i32;
        drop(pipe);
        return Ok(Starting(Step::Made((vec![(pid, 0)], Some(sent)))));
    }
    cmd.env("BPROC_GHOST_COUNT", n.to_string());
    match io {
        Io::Relay(_) | Io::Output(_) => {
            use std::os::fd::AsFd;
            // The pipe for the ghosts' lines takes stdout's place, so the caller's stdout,
            // where the ghosts write their processes' output, goes in as their stdin.
            let out = std::io::stdout().as_fd().try_clone_to_owned()?;
            cmd.stdin(Stdio::from(out)).stderr(Stdio::inherit());
            match relay {
                Some(token) => cmd.env("BPROC_GHOST_IO", hex::encode(token)),
                None => cmd.env("BPROC_GHOST_OUTPUT", "1"),
            };
        }
        Io::None => {
            cmd.stdin(Stdio::null()).stderr(Stdio::null());
        }
    }
    let mut first = cmd.stdout(Stdio::piped()).spawn()?;
    drop(pipe);
    let first_pid = first.id() as i32;
    Ok(Starting(match first.stdout.take() {
        Some(out) => Step::Reading {
            out,
            program: program.to_owned(),
            comm: comm.to_owned(),
            n,
            relay: relay.is_some(),
            first: first_pid,
            sent,
        },
        None => Step::Made((Vec::new(), None)),
    }))
}

/// [`spawn_keeping_output`] without executing the ghost program: the caller forks into the
/// first ghost, which makes the others as light tasks ([`bproc_ghost::light::fork`]). That
/// saves a launch the start of a program, but the first ghost's memory, which all the
/// launch's ghosts share, is a copy of the caller's: this suits a small launcher (bpsh). If
/// the fork fails, the program starts them. With the ghosts comes the word the caller gives
/// them once it has sent the launch ([`LaunchSent`]).
pub fn fork_keeping_output(
    program: &str,
    comm: &str,
    n: usize,
    rejoin: Option<&Rejoin>,
) -> std::io::Result<(Vec<i32>, Option<LaunchSent>)> {
    if n == 0 {
        return Ok((Vec::new(), None));
    }
    let env = ghost_env(rejoin)
        .into_iter()
        .filter_map(|(k, v)| {
            std::ffi::CString::new([k.as_bytes(), b"=", v.as_bytes()].concat()).ok()
        })
        .collect();
    match bproc_ghost::light::fork(std::path::Path::new(program), comm, n, env) {
        Ok((first, None, word)) => Ok((vec![first], Some(LaunchSent(word)))),
        Ok((first, Some(lines), word)) => {
            let pids = read_pids(lines, program, comm, n, false, first)?;
            Ok((pids.into_iter().map(|(pid, _)| pid).collect(), Some(LaunchSent(word))))
        }
        Err(_) => spawn_keeping_output(program, comm, n, rejoin),
    }
}

/// The pipe a launcher's light ghosts watch until it ends: told once the launch is sent
/// ([`LaunchSent::sent`]), they go on standing for their processes if the launcher is then
/// killed, as BProc's ghosts of a killed parent do; a launcher that ends before (killed as
/// it made them) takes them with it, as no process will ever start for them. Keep it until
/// the launcher ends.
#[derive(Debug)]
pub struct LaunchSent(std::os::fd::OwnedFd);

impl LaunchSent {
    /// Says that the launch is sent.
    pub fn sent(&self) {
        let _ = nix::unistd::write(&self.0, &[1]);
    }
}

/// The environment a ghost gets: the master's socket, how long it waits for a master that
/// restarts (if set), and where its rank's output rejoins (bpsh's ghosts).
fn ghost_env(rejoin: Option<&Rejoin>) -> Vec<(OsString, OsString)> {
    let mut env = vec![("BPROC_SOCKET".into(), crate::socket_path().into_os_string())];
    if let Some(grace) = std::env::var_os("BPROC_GRACE") {
        env.push(("BPROC_GRACE".into(), grace));
    }
    if let Some(r) = rejoin {
        env.push((bproc_proto::conn::ENV_REJOIN.into(), r.encode().into()));
    }
    env
}

/// Ghosts that died as they were made: someone killed them, or their maker, before the
/// launcher knew them all. The launch must not go on without them, since whoever killed
/// them meant their processes to end (an error's payload: see [`killed`]).
#[derive(Debug, thiserror::Error)]
#[error("the ghosts were killed as they were made ({made} of {of} made)")]
pub struct GhostsKilled {
    /// The ghosts whose pids came.
    pub made: usize,
    /// The ghosts asked for.
    pub of: usize,
}

/// The [`GhostsKilled`] that `e` is, when ghosts failed because they were killed (not
/// because the system would make no more, or the ghost program failed).
pub fn killed(e: &std::io::Error) -> Option<&GhostsKilled> {
    e.get_ref().and_then(|e| e.downcast_ref::<GhostsKilled>())
}

/// Reads the ghosts' `INDEX PID` lines (`INDEX PID PORT` with relays) from `out` until each
/// ghost is named, or every ghost has let go of it; the pids (and ports) in index order. If
/// one is missing, every ghost made (and `first`, the one that made them) is ended, and the
/// error says why: the errno of a maker's `! ERRNO` line (it could make no more), the ghost
/// program's failure (`first` exited), or else [`GhostsKilled`], when the ghosts named
/// `comm` that a killed maker made but never named are ended too.
fn read_pids(
    mut out: impl std::io::Read,
    program: &str,
    comm: &str,
    n: usize,
    relay: bool,
    first: i32,
) -> std::io::Result<Vec<(i32, u16)>> {
    let mut pids = vec![(0i32, 0u16); n];
    let whole = |(pid, port): &(i32, u16)| *pid != 0 && (!relay || *port != 0);
    let mut failed = None;
    // Read as the lines come, until every ghost is named (each lets go of the pipe only once
    // it runs: waiting for the last of them to start held a 64-node vector fork up by 0.4 ms
    // on average) or the pipe ends (a maker failed, or was killed).
    let (mut list, mut known) = (Vec::new(), 0);
    let mut chunk = [0u8; 4096];
    while known < n {
        let got = match out.read(&mut chunk) {
            Ok(0) => break,
            Ok(got) => got,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        list.extend_from_slice(&chunk[..got]);
        while let Some(end) = list.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = list.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line[..end]);
            let mut f = line.split(' ');
            let (Some(i), Some(pid)) = (f.next(), f.next()) else { continue };
            if i == "!" {
                failed = pid.parse::<i32>().ok();
                continue;
            }
            let port = f.next().map_or(Some(0), |p| p.parse::<u16>().ok());
            if let (Ok(i), Ok(pid), Some(port)) = (i.parse::<usize>(), pid.parse::<i32>(), port) {
                if let Some(slot) = pids.get_mut(i).filter(|s| !whole(s)) {
                    *slot = (pid, port);
                    known += usize::from(whole(slot));
                }
            }
        }
    }
    if pids.iter().all(whole) {
        // The ghosts are reaped by whoever waits for them (the caller); `first` is not
        // waited for.
        return Ok(pids);
    }
    let made = pids.iter().filter(|p| p.0 != 0).count();
    // Looked at before `discard` reaps it.
    let first_exit = first_exit_code(first);
    let by_kill = failed.is_none() && first_exit.is_none();
    // Each once: a pid reaped may be another process's by its second turn.
    let mut all: std::collections::BTreeSet<i32> =
        if by_kill { strays(first, comm).into_iter().collect() } else { Default::default() };
    all.extend(pids.iter().map(|p| p.0).chain(std::iter::once(first)));
    discard(all);
    Err(match (failed, first_exit) {
        (Some(errno), _) => {
            let e = nix::errno::Errno::from_raw(errno);
            let hint = match e {
                nix::errno::Errno::EAGAIN => " (each ghost is a process: see `ulimit -u`)",
                _ => "",
            };
            std::io::Error::new(
                std::io::Error::from(e).kind(),
                format!("{program} made {made} of {n} ghosts: {}{hint}", crate::strerror(errno)),
            )
        }
        (None, Some(code)) => std::io::Error::other(format!(
            "{program} made {made} of {n} ghosts and exited with code {code}"
        )),
        (None, None) => std::io::Error::other(GhostsKilled { made, of: n }),
    })
}

/// The caller's children named `comm` that started no earlier than `first`: the ghosts its
/// makers made, named or not (a maker killed before it wrote their lines leaves them
/// unnamed, and nothing else would end them). The caller has no other such children while
/// its ghosts are being made, before any of its ranks starts.
fn strays(first: i32, comm: &str) -> Vec<i32> {
    use bproc_sys::peer::{read_proc, Stat};
    const START: usize = 22;
    let Some(since) = Stat::read(first).and_then(|s| s.num::<u64>(START)) else {
        return Vec::new();
    };
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return Vec::new() };
    tasks
        .filter_map(|t| read_proc(t.ok()?.path().join("children")).ok())
        .flat_map(|c| {
            c.split_whitespace().filter_map(|p| p.parse::<i32>().ok()).collect::<Vec<_>>()
        })
        .filter(|&pid| {
            Stat::read(pid).is_some_and(|s| {
                s.comm() == comm && s.num::<u64>(START).is_some_and(|t| t >= since)
            })
        })
        .collect()
}

/// The exit code of `first` when it has exited (not killed), left to be reaped.
fn first_exit_code(first: i32) -> Option<i32> {
    use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
    let how = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    match waitid(Id::Pid(nix::unistd::Pid::from_raw(first)), how) {
        Ok(WaitStatus::Exited(_, code)) => Some(code),
        _ => None,
    }
}

/// Ends ghosts whose processes never started: kills and reaps each, so the caller never sees
/// them as children.
pub fn discard(ghosts: impl IntoIterator<Item = i32>) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    for g in ghosts {
        if g > 0 && kill(Pid::from_raw(g), Signal::SIGKILL).is_ok() {
            let _ = nix::sys::wait::waitpid(Pid::from_raw(g), None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A child that runs until killed.
    fn sleeper() -> i32 {
        Command::new("sleep").arg("1000").spawn().expect("sleep").id() as i32
    }

    fn gone(pid: i32) -> bool {
        // Reaped by `discard`: no longer this process's child.
        nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None).is_err()
    }

    #[test]
    fn a_maker_that_could_make_no_more_says_why() {
        let first = sleeper();
        let lines = format!("0 {first}\n! 11\n");
        let e = read_pids(lines.as_bytes(), "bpghost", "none-such", 3, false, first).unwrap_err();
        assert!(killed(&e).is_none(), "{e}");
        assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock, "{e}");
        assert!(e.to_string().contains("made 1 of 3 ghosts: Resource temporarily unavailable"));
        assert!(gone(first));
    }

    #[test]
    fn ghosts_missing_without_a_word_were_killed() {
        let (first, other) = (sleeper(), sleeper());
        let lines = format!("0 {first}\n2 {other}\n");
        let e = read_pids(lines.as_bytes(), "bpghost", "none-such", 3, false, first).unwrap_err();
        let k = killed(&e).expect("killed");
        assert_eq!((k.made, k.of), (2, 3));
        assert!(gone(first) && gone(other));
    }

    #[test]
    fn a_ghost_program_that_exited_failed() {
        use nix::sys::wait::{waitid, Id, WaitPidFlag};
        let first = Command::new("sh").args(["-c", "exit 3"]).spawn().expect("sh").id() as i32;
        // Ended, not reaped.
        let how = WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT;
        waitid(Id::Pid(nix::unistd::Pid::from_raw(first)), how).expect("waitid");
        let e = read_pids(&b""[..], "bpghost", "none-such", 2, false, first).unwrap_err();
        assert!(killed(&e).is_none(), "{e}");
        assert!(e.to_string().contains("made 0 of 2 ghosts and exited with code 3"), "{e}");
    }

    #[test]
    fn every_ghost_named_is_taken() {
        let lines = "1 200\n0 100\n";
        let pids = read_pids(lines.as_bytes(), "bpghost", "none-such", 2, false, 100).unwrap();
        assert_eq!(pids, vec![(100, 0), (200, 0)]);
    }

    #[test]
    fn comm_is_the_file_name_cut_to_15_bytes() {
        assert_eq!(comm_of("/bin/sleep"), "sleep");
        assert_eq!(comm_of("a-very-long-program-name"), "a-very-long-pro");
        assert_eq!(comm_of("/x/é-long-program-name"), "é-long-program");
        assert_eq!(comm_of("/x/aé-long-program-name"), "aé-long-progra");
    }
}
