//! Ghosts, as a launcher makes them: before a launch, one ghost per remote process, a child
//! of the launcher in its process group, so that `wait()`, `kill`, `ps` and job control work
//! on the remote process through it (spec §5.4). The ghost program itself is `bpghost`; the
//! master names it ([`crate::Place::ghost`]).

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

/// The `comm` of a program: its file name, cut to the kernel's 15 bytes.
pub fn comm_of(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    let mut end = base.len().min(15);
    while !base.is_char_boundary(end) {
        end -= 1;
    }
    base[..end].to_owned()
}

/// Starts a ghost named `[comm]` from `program`, with no stdio (the remote process's I/O
/// goes elsewhere). It connects to the master itself and waits there for its process.
pub fn spawn(program: &str, comm: &str) -> std::io::Result<Child> {
    Command::new(program)
        .arg0(format!("[{comm}]"))
        .env_clear()
        .env("BPROC_SOCKET", crate::socket_path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
}

/// Ends ghosts whose processes never started: kills and reaps each, so the caller never sees
/// them as children.
pub fn discard(ghosts: impl IntoIterator<Item = Child>) {
    for mut g in ghosts {
        let _ = g.kill();
        let _ = g.wait();
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
