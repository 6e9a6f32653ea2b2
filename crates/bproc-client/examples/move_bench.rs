//! Times migration for `bench/move.sh`. `move_bench move NODE MIB RUNS [THREADS]`: with MIB
//! MiB of data (and THREADS more threads, each counting), moves to NODE and back RUNS times,
//! printing `move_ms` for each move out (from the call until the process runs on the node)
//! and `back_ms` for each return; the data, and that every thread still counts, are checked
//! at the end. `move_bench vrfork MIB NODE...`: one vrfork to the nodes, printing
//! `vrfork_ms` (until every child runs) once they have all exited 0 (a child checks a byte
//! of each page of its data, and exits 3 if one is wrong). With `MOVE_BENCH_OUT` set, the
//! figures are appended to that file instead, so that a run's stdout and stderr can be
//! `/dev/null`, as a batch job's are (its children's then are too, and no ghost relays).

use std::time::Instant;

use bproc_client::launch::IoList;
use bproc_client::migrate::{move_to, vrfork, Forked};

/// Writes one figure's line to `MOVE_BENCH_OUT`, or to stdout.
fn report(line: String) {
    use std::io::Write;
    match std::env::var_os("MOVE_BENCH_OUT") {
        Some(path) => {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.to_string_lossy()));
            writeln!(f, "{line}").expect("write a figure");
        }
        None => println!("{line}"),
    }
}

fn main() {
    for fd in 3..1024 {
        let _ = nix::unistd::close(fd);
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize| args.get(i).and_then(|a| a.parse::<i64>().ok()).unwrap_or(0);
    let forking = args.first().map(String::as_str) == Some("vrfork");
    let mib = if forking { num(1) } else { num(2) } as usize;
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
                report(format!("move_ms {:.3}", t.elapsed().as_secs_f64() * 1e3));
                let t = Instant::now();
                move_to(bproc_client::NODE_MASTER, &IoList::Default).expect("move back");
                report(format!("back_ms {:.3}", t.elapsed().as_secs_f64() * 1e3));
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
                Forked::Child(_) => {
                    let intact =
                        data.iter().enumerate().step_by(4096).all(|(i, b)| *b == (i % 251) as u8);
                    std::process::exit(if intact { 0 } else { 3 })
                }
                Forked::Parent(pids) => {
                    let ms = t.elapsed().as_secs_f64() * 1e3;
                    for p in pids {
                        let st = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(p), None);
                        assert!(
                            matches!(st, Ok(nix::sys::wait::WaitStatus::Exited(_, 0))),
                            "child {p}: {st:?}"
                        );
                    }
                    report(format!("vrfork_ms {ms:.3}"));
                }
            }
        }
        _ => {
            eprintln!(
                "usage: move_bench move NODE MIB RUNS [THREADS] | move_bench vrfork MIB NODE..."
            );
            std::process::exit(2);
        }
    }
    assert!(data.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8), "data damaged");
}
