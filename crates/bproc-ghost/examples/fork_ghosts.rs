//! Makes N ghosts the way bpsh makes a launch's ghosts (a fork of the caller that makes the
//! others as light tasks, `bproc_ghost::light::fork`), for `bench/ghosts.sh`: prints their
//! `INDEX PID` lines, closes its stdout, and reaps them as they end (they wait for their
//! processes at the master of `BPROC_SOCKET`), so that none is left a zombie.
//!
//!     fork_ghosts N GHOST_PROGRAM
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd};
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1);
    let program = args.next().unwrap_or_else(|| "bpghost".into());
    // The ghosts keep the caller's stdout: give them /dev/null, and write the lines to a copy
    // of the real one (above fd 2, so the ghosts close it).
    let mut out = match std::io::stdout().as_fd().try_clone_to_owned() {
        Ok(fd) => std::fs::File::from(fd),
        Err(e) => return fail(&e),
    };
    let null = match std::fs::OpenOptions::new().write(true).open("/dev/null") {
        Ok(f) => f,
        Err(e) => return fail(&e),
    };
    if let Err(e) = nix::unistd::dup2(null.as_raw_fd(), 1) {
        return fail(&e.into());
    }
    let program = std::path::Path::new(&program);
    // Held until the ghosts end: no launch is sent for them, and they would end with it.
    let _word = match bproc_ghost::light::fork(program, "sleep", n, Vec::new()) {
        Ok((first, None, word)) => {
            let _ = writeln!(out, "0 {first}");
            word
        }
        Ok((_, Some(mut lines), word)) => {
            if let Err(e) = std::io::copy(&mut lines, &mut out) {
                return fail(&e);
            }
            word
        }
        Err(e) => return fail(&e),
    };
    drop(out);
    while nix::sys::wait::wait().is_ok() {}
    ExitCode::SUCCESS
}

fn fail(e: &std::io::Error) -> ExitCode {
    eprintln!("fork_ghosts: {e}");
    ExitCode::FAILURE
}
