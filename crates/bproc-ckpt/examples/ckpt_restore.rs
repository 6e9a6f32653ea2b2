//! Restores a process image (from `ckpt_demo` or `bproc_dump`) as a child with this
//! program's stdio, waits for it and exits as it did; prints the restore time (until the
//! process runs) to stderr as `restore_ms N`. Usage: `ckpt_restore [--in-place] IMAGE`;
//! with `--in-place` this process becomes the restored one (keeping its pid).

use bproc_ckpt::restore::{restore, restore_in_place, RestoreSpec};

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let in_place = args.first().is_some_and(|a| a == "--in-place");
    if in_place {
        args.remove(0);
    }
    let Some(path) = args.first().cloned() else {
        eprintln!("usage: ckpt_restore [--in-place] IMAGE");
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
    if in_place {
        let e = restore_in_place(
            std::io::BufReader::with_capacity(1 << 20, file),
            1,
            None,
            &mut || {
                eprintln!("restore_ms {:.3}", t0.elapsed().as_secs_f64() * 1e3);
                Ok(())
            },
        );
        eprintln!("ckpt_restore: {path}: {e}");
        std::process::exit(1)
    }
    let spec = RestoreSpec { stdio, set_tid: None, identity: None, value: 1, ..Default::default() };
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
