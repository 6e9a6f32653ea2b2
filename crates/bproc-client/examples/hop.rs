//! A process that holds 64 MiB and moves itself from node to node with `bproc_client::migrate`,
//! for nodes started from a launcher that cannot follow it (`bpsh 0 hop 1`): after a move
//! its output goes nowhere, so after each move it writes what it found to `/tmp/hop.out` on
//! the node it reached (`on node N: pid P, memory intact`, or what is wrong), then stays
//! (up to 10 minutes, so that `bpstat -p` shows it there) until a signal ends it.
//!
//! Usage: `hop NODE...` (run on a node, with the cluster reachable through `BPROC_SOCKET`).

use std::io::Write;

use bproc_client::launch::IoList;
use bproc_client::migrate::move_to;

const PAGE: usize = 4096;

/// The 256 pages the memory is made of: page `p` holds `pages[p % 256]`, whose byte `j` is
/// `p + 7j`. Filling and checking are then copies and comparisons of whole pages, quick
/// even in a debug build on an emulated machine (a loop over each byte took minutes there).
fn pages() -> Vec<Vec<u8>> {
    (0..256).map(|p| (0..PAGE).map(|j| (p + 7 * j) as u8).collect()).collect()
}

fn node_here() -> i32 {
    bproc_client::Client::connect().and_then(|mut c| c.place()).map_or(-9, |p| p.node)
}

fn main() {
    let nodes: Vec<i32> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    if nodes.is_empty() {
        eprintln!("usage: hop NODE...");
        std::process::exit(2);
    }
    // Whatever the caller left open (a launcher's sockets) would not move.
    for fd in 3..1024 {
        let _ = nix::unistd::close(fd);
    }
    let pages = pages();
    let mut big = Vec::with_capacity(64 << 20);
    for p in 0..(64 << 20) / PAGE {
        big.extend_from_slice(&pages[p % 256]);
    }
    let pid = std::process::id();
    println!("pid {pid} on node {}", node_here());
    let _ = std::io::stdout().flush();
    for node in nodes {
        if let Err(e) = move_to(node, &IoList::Default) {
            println!("move to {node} failed: {e}");
            std::process::exit(10);
        }
        let memory = big.chunks(PAGE).enumerate().all(|(p, page)| page == pages[p % 256]);
        let here = node_here();
        let report = format!(
            "on node {here}: pid {}{}, memory {}\n",
            std::process::id(),
            if std::process::id() == pid { "" } else { " (MOVED FROM ANOTHER PID)" },
            if memory { "intact" } else { "WRONG" }
        );
        let _ = std::fs::write("/tmp/hop.out", report);
    }
    std::thread::sleep(std::time::Duration::from_secs(600));
}
