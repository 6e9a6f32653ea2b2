//! Migration of ordinary programs: what cannot travel is left behind as BProc left it (fds
//! closed, shared memory made private) unless the caller asks for a refusal, which then names
//! its reason; Python and C programs with a UTF-8 locale move.

use std::path::Path;

use bproc_testkit::{require_root, unique_dir, TestCluster};

use crate::bins;
use crate::capi::build_program;

/// Every fd kind and shared mapping, refused under `BPROC_MOVE_STRICT` with its reason, then
/// moved all at once without it: the fds are closed on the node (the slave's log names the
/// file it lacks), read-only shared mappings read the same, writable shared memory is a
/// private copy, and a second thread is refused either way.
#[test]
fn what_cannot_travel_is_closed_or_refused_with_its_reason() {
    if !require_root("moved processes keep their pids (set_tid in the nodes' pid namespaces)") {
        return;
    }
    let Some((dir, exe)) = build_program("matrix.c", "matrix") else { return };
    // `dir` is under /var/tmp, which nodes see; the front end's /tmp they do not.
    let private = unique_dir("matrix-private");
    std::fs::create_dir_all(&private).unwrap();
    let c = TestCluster::up(&bins(), 2, "matrix");
    let out = c
        .cmd(exe.to_str().unwrap())
        .args(["1", dir.to_str().unwrap(), private.to_str().unwrap()])
        .exits(42);
    let stdout = String::from_utf8(out.stdout).unwrap();
    let want = [
        ("shared file", "rw-file: writable shared memory would become private"),
        ("shared anonymous", "writable shared memory would become private"),
        ("pipe", "fd 251: a pipe"),
        ("tty", "fd 17: a terminal (/dev/ptmx)"),
        ("fifo", "fd 16: a FIFO ("),
        ("deleted", "fd 15: a deleted file ("),
        ("memfd", "fd 14: a memfd (/memfd:matrix"),
        ("signalfd", "fd 13: a signalfd"),
        ("timerfd", "fd 12: a timerfd"),
        ("epoll", "fd 11: an epoll instance"),
        ("eventfd", "fd 10: an eventfd"),
        ("unix", "fd 9: a connected Unix socket"),
        ("tcp", "fd 7: a connected TCP socket"),
        ("thread", "thread "),
    ];
    let lines: Vec<&str> = stdout.lines().collect();
    for (i, (case, reason)) in want.iter().enumerate() {
        let line = lines.get(i).copied().unwrap_or("");
        assert!(
            line.starts_with(&format!("{case}: refused: cannot move this process: "))
                && line.contains(reason),
            "line {i} should refuse {case} for {reason:?}:\n{stdout}"
        );
    }
    assert!(lines[want.len()].starts_with("thread: refused: cannot move this process: thread "));
    assert_eq!(
        &lines[want.len() + 1..],
        ["on node 1 as pid same: 12 fds closed, 1 kept", "back on node -1"],
        "{stdout}"
    );
    let log = std::fs::read_to_string(c.slave_log(1)).unwrap();
    assert!(
        log.contains(&format!(
            "restored without a file this node lacks: fd 18 ({}/log) left closed: No such file",
            private.display()
        )),
        "{log}"
    );
    assert!(
        log.contains("fd 7: a connected TCP socket"),
        "the refusal is in the node's log: {log}"
    );
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir_all(private);
}

/// Builds nothing: whether `path` exists, for skips.
fn have(path: &str) -> bool {
    Path::new(path).exists()
}
