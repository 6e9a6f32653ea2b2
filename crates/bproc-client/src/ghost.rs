//! Ghosts, as a launcher makes them: before a launch, one ghost per remote process, a child
//! of the launcher in its process group, so that `wait()`, `kill`, `ps` and job control work
//! on the remote process through it. The ghost program itself is `bpghost`; the
//! master names it ([`crate::Place::ghost`]).

use std::ffi::OsString;
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

/// Starts `n` ghosts named `[comm]` from `program`, children of the caller with no stdio
/// (the remote processes' I/O goes elsewhere); returns their pids. The program is executed
/// once and forks the others, so a ghost costs a fork of a small process. Each connects to
/// the master itself and waits there for its process.
pub fn spawn(program: &str, comm: &str, n: usize) -> std::io::Result<Vec<i32>> {
    Ok(spawn_with(program, comm, n, Io::None)?.into_iter().map(|(pid, _)| pid).collect())
}

/// [`spawn`] for ghosts that keep the caller's stdout and stderr: a process that moves back
/// to the front end, into its ghost, then writes where the caller does (bpsh's ghosts), or,
/// with `rejoin`, to the caller's listener as the same rank.
pub fn spawn_keeping_output(
    program: &str,
    comm: &str,
    n: usize,
    rejoin: Option<&Rejoin>,
) -> std::io::Result<Vec<i32>> {
    Ok(spawn_with(program, comm, n, Io::Output(rejoin))?.into_iter().map(|(pid, _)| pid).collect())
}

/// What a new ghost keeps of the caller's stdio.
enum Io<'a> {
    /// Nothing.
    None,
    /// Stdout and stderr (and where output goes after a move back, if forwarded).
    Output(Option<&'a Rejoin>),
    /// Stdout and stderr, with a relay for connections presenting this token.
    Relay(&'a [u8; 16]),
}

/// [`spawn`] for processes whose output their ghosts relay (moved or rforked ones): each
/// ghost listens for its process's output connections, which present `token`, and keeps
/// the caller's stdout and stderr to write it to. Returns each ghost's pid and port.
pub fn spawn_relays(
    program: &str,
    comm: &str,
    n: usize,
    token: &[u8; 16],
) -> std::io::Result<Vec<(i32, u16)>> {
    spawn_with(program, comm, n, Io::Relay(token))
}

fn spawn_with(program: &str, comm: &str, n: usize, io: Io<'_>) -> std::io::Result<Vec<(i32, u16)>> {
    let relay = match io {
        Io::Relay(t) => Some(t),
        _ => None,
    };
    if n == 0 {
        return Ok(Vec::new());
    }
    let mut cmd = Command::new(program);
    let rejoin = match &io {
        Io::Output(r) => *r,
        _ => None,
    };
    cmd.arg0(format!("[{comm}]")).env_clear().envs(ghost_env(rejoin));
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
        return Ok(vec![(cmd.spawn()?.id() as i32, 0)]);
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
    let first_pid = first.id() as i32;
    match first.stdout.take() {
        Some(out) => read_pids(out, program, n, relay.is_some(), first_pid),
        None => Ok(Vec::new()),
    }
}

/// [`spawn_keeping_output`] without executing the ghost program: the caller forks into the
/// first ghost, which makes the others as light tasks ([`bproc_ghost::light::fork`]). That
/// saves a launch the start of a program, but the first ghost's memory, which all the
/// launch's ghosts share, is a copy of the caller's: this suits a small launcher (bpsh). If
/// the fork fails, the program starts them.
pub fn fork_keeping_output(
    program: &str,
    comm: &str,
    n: usize,
    rejoin: Option<&Rejoin>,
) -> std::io::Result<Vec<i32>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let env = ghost_env(rejoin)
        .into_iter()
        .filter_map(|(k, v)| {
            std::ffi::CString::new([k.as_bytes(), b"=", v.as_bytes()].concat()).ok()
        })
        .collect();
    match bproc_ghost::light::fork(std::path::Path::new(program), comm, n, env) {
        Ok((first, None)) => Ok(vec![first]),
        Ok((first, Some(lines))) => {
            let pids = read_pids(lines, program, n, false, first)?;
            Ok(pids.into_iter().map(|(pid, _)| pid).collect())
        }
        Err(_) => spawn_keeping_output(program, comm, n, rejoin),
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

/// Reads the ghosts' `INDEX PID` lines (`INDEX PID PORT` with relays) from `out` until every
/// ghost has let go of it; the pids (and ports) in index order. If one is missing, every
/// ghost made (and `first`, the one that made them) is ended.
fn read_pids(
    mut out: impl std::io::Read,
    program: &str,
    n: usize,
    relay: bool,
    first: i32,
) -> std::io::Result<Vec<(i32, u16)>> {
    let mut list = String::new();
    out.read_to_string(&mut list)?;
    let mut pids = vec![(0i32, 0u16); n];
    for (i, pid, port) in list.lines().filter_map(|l| {
        let mut f = l.split(' ');
        let i = f.next()?.parse::<usize>().ok()?;
        let pid = f.next()?.parse::<i32>().ok()?;
        let port = f.next().map_or(Some(0), |p| p.parse::<u16>().ok())?;
        Some((i, pid, port))
    }) {
        if let Some(slot) = pids.get_mut(i) {
            *slot = (pid, port);
        }
    }
    if pids.iter().any(|(pid, port)| *pid == 0 || (relay && *port == 0)) {
        let all = pids.iter().map(|p| p.0).chain(std::iter::once(first));
        discard(all);
        return Err(std::io::Error::other(format!(
            "{program} made {} of {n} ghosts",
            list.lines().count()
        )));
    }
    // The ghosts are reaped by whoever waits for them (the caller); `first` is not waited for.
    Ok(pids)
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

    #[test]
    fn comm_is_the_file_name_cut_to_15_bytes() {
        assert_eq!(comm_of("/bin/sleep"), "sleep");
        assert_eq!(comm_of("a-very-long-program-name"), "a-very-long-pro");
        assert_eq!(comm_of("/x/é-long-program-name"), "é-long-program");
        assert_eq!(comm_of("/x/aé-long-program-name"), "aé-long-progra");
    }
}
