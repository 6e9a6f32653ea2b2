//! Restores a process image (from `ckpt_demo` or `bproc_dump`) as a child with this
//! program's stdio, waits for it and exits as it did; prints the restore time (until the
//! process runs) to stderr as `restore_ms N`. Usage: `ckpt_restore IMAGE`.

use bproc_sys::restore::{restore, RestoreSpec};

fn main() {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: ckpt_restore IMAGE");
        std::process::exit(2);
    };
    use std::os::fd::AsFd;
    let stdio = [
        std::io::stdin().as_fd().try_clone_to_owned().ok(),
        std::io::stdout().as_fd().try_clone_to_owned().ok(),
        std::io::stderr().as_fd().try_clone_to_owned().ok(),
    ];
    let file = std::fs::File::open(&path).unwrap_or_else(|e| {
        eprintln!("ckpt_restore: {path}: {e}");
        std::process::exit(2)
    });
    let t0 = std::time::Instant::now();
    let spec = RestoreSpec { stdio, set_tid: None, identity: None, value: 1 };
    let pid = restore(std::io::BufReader::with_capacity(1 << 20, file), spec).unwrap_or_else(|e| {
        eprintln!("ckpt_restore: {path}: {e}");
        std::process::exit(1)
    });
    eprintln!("restore_ms {:.3}", t0.elapsed().as_secs_f64() * 1e3);
    match nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None) {
        Ok(nix::sys::wait::WaitStatus::Exited(_, code)) => std::process::exit(code),
        other => {
            eprintln!("ckpt_restore: the restored process ended: {other:?}");
            std::process::exit(1)
        }
    }
}
