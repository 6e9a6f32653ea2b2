//! Ghosts, as a launcher makes them: before a launch, one ghost per remote process, a child
//! of the launcher in its process group, so that `wait()`, `kill`, `ps` and job control work
//! on the remote process through it (spec §5.4). The ghost program itself is `bpghost`; the
//! master names it ([`crate::Place::ghost`]).

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

/// The `comm` of a program: its file name, cut to the kernel's 15 bytes.
///
/// ```
/// assert_eq!(bproc::ghost::comm_of("/usr/bin/hello-world"), "hello-world");
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
    use std::io::Read;
    if n == 0 {
        return Ok(Vec::new());
    }
    let mut first = Command::new(program)
        .arg0(format!("[{comm}]"))
        .env_clear()
        .env("BPROC_SOCKET", crate::socket_path())
        .env("BPROC_GHOST_COUNT", n.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut list = String::new();
    if let Some(mut out) = first.stdout.take() {
        // Ends when every ghost has let go of the pipe.
        out.read_to_string(&mut list)?;
    }
    // `INDEX PID` lines, in any order.
    let mut pids = vec![0i32; n];
    for (i, pid) in list.lines().filter_map(|l| {
        let (i, p) = l.split_once(' ')?;
        Some((i.parse::<usize>().ok()?, p.parse::<i32>().ok()?))
    }) {
        if let Some(slot) = pids.get_mut(i) {
            *slot = pid;
        }
    }
    if pids.contains(&0) {
        discard(pids.iter().copied().chain(std::iter::once(first.id() as i32)));
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
