//! A Rust program that moves itself around the cluster with `bproc_client::migrate`: 64 MiB of
//! data, a thread-local and a blocked signal go to node A, then node B, then back to the
//! front end, checked after each move; then it forks one child on every node listed with
//! `vrfork`, each exiting with 100 + its index. Exits 42 when all is well.
//!
//! Usage: `wander A B [NODE...]` (run on the front end, with `BPROC_SOCKET` set).

use std::cell::Cell;

use bproc_client::launch::IoList;
use bproc_client::migrate::{move_to, vrfork, Forked};

thread_local!(static MOVES: Cell<u32> = const { Cell::new(0) });

fn pattern(i: usize) -> u8 {
    (i * 13 + i / 4096) as u8
}

fn node_here() -> i32 {
    bproc_client::Client::connect().and_then(|mut c| c.place()).map_or(-9, |p| p.node)
}

fn main() {
    use nix::sys::signal::{SigSet, SigmaskHow, Signal};
    let nodes: Vec<i32> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    if nodes.len() < 2 {
        eprintln!("usage: wander A B [NODE...]");
        std::process::exit(2);
    }
    // Whatever the caller left open (a test harness's pipes) would not move.
    for fd in 3..1024 {
        let _ = nix::unistd::close(fd);
    }
    let mut usr2 = SigSet::empty();
    usr2.add(Signal::SIGUSR2);
    usr2.thread_block().expect("sigprocmask");
    let big: Vec<u8> = (0..64usize << 20).map(pattern).collect();
    let pid = std::process::id();
    let mut ok = true;
    for &node in &[nodes[0], nodes[1], bproc_client::NODE_MASTER] {
        MOVES.with(|m| m.set(m.get() + 1));
        if let Err(e) = move_to(node, &IoList::Default) {
            println!("move to {node} failed: {e}");
            std::process::exit(10);
        }
        let grown: Vec<Vec<u8>> = (0..64).map(|i| vec![i as u8; 1 << 18]).collect();
        let mut mask = SigSet::empty();
        nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, None, Some(&mut mask)).expect("mask");
        let checks = [
            ("memory", big.iter().enumerate().all(|(i, b)| *b == pattern(i))),
            (
                "tls",
                MOVES.with(|m| m.get()) as usize
                    == [nodes[0], nodes[1], -1].iter().position(|n| *n == node).unwrap() + 1,
            ),
            ("heap", grown.iter().enumerate().all(|(i, v)| v[v.len() - 1] == i as u8)),
            ("mask", mask.contains(Signal::SIGUSR2)),
            ("pid", std::process::id() == pid),
            ("node", node_here() == node),
        ];
        for (what, good) in checks {
            if !good {
                println!("on node {node}: {what} WRONG");
                ok = false;
            }
        }
        println!("on node {node}");
    }
    let all: Vec<i32> = nodes[2..].to_vec();
    if !all.is_empty() {
        match vrfork(&all, &IoList::Default) {
            Ok(Forked::Child(i)) => {
                println!("child {i} on node {}", node_here());
                std::process::exit(if node_here() == all[i] { 100 + i as i32 } else { 99 });
            }
            Ok(Forked::Parent(pids)) => {
                for (i, p) in pids.into_iter().enumerate() {
                    let st = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(p), None);
                    if !matches!(st, Ok(nix::sys::wait::WaitStatus::Exited(_, c)) if c == 100 + i as i32)
                    {
                        println!("child {i}: {st:?}");
                        ok = false;
                    }
                }
            }
            Err(e) => {
                println!("vrfork failed: {e}");
                ok = false;
            }
        }
    }
    std::process::exit(if ok { 42 } else { 1 });
}
