//! Times migration for `bench/move.sh`. `move_bench move NODE MIB RUNS [THREADS]`: with MIB
//! MiB of data (and THREADS more threads, each counting), moves to NODE and back RUNS times,
//! printing `move_ms` for each move out (from the call until the process runs on the node)
//! and `back_ms` for each return; the data, and that every thread still counts, are checked
//! at the end. `move_bench vrfork MIB NODE...`: one vrfork to the nodes, printing
//! `vrfork_ms` (until every child runs) once they have all exited 0 (a child checks a byte
//! of each page of its data, and exits 3 if one is wrong).
//!
//! The floor of a vector fork, apart from the cluster: `move_bench dump MIB FILE` writes
//! this process, at the point where a vector fork would take it, to FILE (`bproc_dump`:
//! the same image, libraries by reference), and `move_bench restores FILE N P` restores it N
//! times as children, in P threads (one per core) that each restore one and wait for it in
//! turn, as `spawnloop` starts a program: no daemon, no connection, no ghost. A copy
//! restored from FILE checks its data as a vector fork's child does.

use std::time::Instant;

use bproc_client::launch::IoList;
use bproc_client::migrate::{move_to, vrfork, Forked};

fn main() {
    // Fds inherited from whoever started it (a harness's pipes) could not move.
    bproc_sys::close_fds_from(3, &[]);
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize| args.get(i).and_then(|a| a.parse::<i64>().ok()).unwrap_or(0);
    let mib = match args.first().map(String::as_str) {
        Some("vrfork" | "dump") => num(1),
        Some("move") => num(2),
        _ => 0,
    } as usize;
    let data: Vec<u8> = (0..mib << 20).map(|i| (i % 251) as u8).collect();
    match args.first().map(String::as_str) {
        Some("move") => {
            use std::sync::atomic::{AtomicU64, Ordering};
            use std::sync::Arc;
            let node = num(1) as i32;
            let counters: Vec<Arc<AtomicU64>> =
                (0..num(4)).map(|_| Arc::new(AtomicU64::new(0))).collect();
            for c in &counters {
                let c = c.clone();
                std::thread::spawn(move || loop {
                    c.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(std::time::Duration::from_micros(200));
                });
            }
            for _ in 0..num(3) {
                let t = Instant::now();
                move_to(node, &IoList::Default).expect("move");
                println!("move_ms {:.3}", t.elapsed().as_secs_f64() * 1e3);
                let t = Instant::now();
                move_to(bproc_client::NODE_MASTER, &IoList::Default).expect("move back");
                println!("back_ms {:.3}", t.elapsed().as_secs_f64() * 1e3);
            }
            let before: Vec<u64> = counters.iter().map(|c| c.load(Ordering::Relaxed)).collect();
            std::thread::sleep(std::time::Duration::from_millis(50));
            for (c, b) in counters.iter().zip(before) {
                assert!(c.load(Ordering::Relaxed) > b, "a thread stopped counting");
            }
        }
        Some("vrfork") => {
            let nodes: Vec<i32> = args[2..].iter().filter_map(|a| a.parse().ok()).collect();
            let t = Instant::now();
            match vrfork(&nodes, &IoList::Default).expect("vrfork") {
                Forked::Child(_) => std::process::exit(if intact(&data) { 0 } else { 3 }),
                Forked::Parent(pids) => {
                    let ms = t.elapsed().as_secs_f64() * 1e3;
                    for p in pids {
                        let st = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(p), None);
                        assert!(
                            matches!(st, Ok(nix::sys::wait::WaitStatus::Exited(_, 0))),
                            "child {p}: {st:?}"
                        );
                    }
                    println!("vrfork_ms {ms:.3}");
                }
            }
        }
        Some("dump") => {
            let path = args.get(2).expect("usage: move_bench dump MIB FILE");
            let out = std::fs::File::create(path).unwrap_or_else(|e| panic!("{path}: {e}"));
            use std::os::fd::AsFd;
            match bproc_client::migrate::dump(out.as_fd(), 0).expect("dump") {
                bproc_ckpt::Resumed::Restored(_) => {
                    std::process::exit(if intact(&data) { 0 } else { 3 })
                }
                bproc_ckpt::Resumed::Dumped => {}
            }
        }
        Some("restores") => {
            if let Err(e) = restores(&args[1], num(2), num(3).max(1)) {
                eprintln!("move_bench: {e}");
                std::process::exit(1);
            }
        }
        _ => {
            eprintln!(
                "usage: move_bench move NODE MIB RUNS [THREADS] | move_bench vrfork MIB NODE... \
                 | move_bench dump MIB FILE | move_bench restores FILE N P"
            );
            std::process::exit(2);
        }
    }
    assert!(data.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8), "data damaged");
}

/// Restores the image at `path` `n` times as children, in `at_once` threads (one per core)
/// that each restore one and wait for it in turn, every copy with this process's stdio;
/// the first failure, if a restore fails or a copy does not exit 0.
fn restores(path: &str, n: i64, at_once: i64) -> Result<(), String> {
    use nix::sys::wait::{waitpid, WaitStatus};
    use std::os::fd::AsFd;
    bproc_ckpt::restore::prepare().map_err(|e| e.to_string())?;
    let image = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    let next = std::sync::atomic::AtomicI64::new(0);
    let one = || -> Result<(), String> {
        let stdio = [
            std::io::stdin().as_fd().try_clone_to_owned().ok(),
            std::io::stdout().as_fd().try_clone_to_owned().ok(),
            std::io::stderr().as_fd().try_clone_to_owned().ok(),
        ];
        let spec = bproc_ckpt::restore::RestoreSpec { stdio, value: 1, ..Default::default() };
        let pid = bproc_ckpt::restore::restore(&image[..], spec)
            .map_err(|e| format!("restoring {path}: {e}"))?;
        match waitpid(nix::unistd::Pid::from_raw(pid), None) {
            Ok(WaitStatus::Exited(_, 0)) => Ok(()),
            other => Err(format!("a restored copy ended: {other:?}")),
        }
    };
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..at_once)
            .map(|_| {
                s.spawn(|| {
                    while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                        one()?;
                    }
                    Ok(())
                })
            })
            .collect();
        workers.into_iter().try_for_each(|w| w.join().unwrap_or(Err("a worker panicked".into())))
    })
}

/// Whether a byte of each page of `data` still holds the pattern it was made with.
fn intact(data: &[u8]) -> bool {
    data.iter().enumerate().step_by(4096).all(|(i, b)| *b == (i % 251) as u8)
}
