//! Migration of ordinary programs: what cannot travel is left behind as BProc left it (fds
//! closed, shared memory made private) unless the caller asks for a refusal, which then names
//! its reason; Python and C programs with a UTF-8 locale move.

use std::path::Path;

use bproc_testkit::{require_root, unique_dir, TestCluster, TestCommand};

use crate::bins;
use crate::capi::build_program;

/// Every fd kind and shared mapping, refused under `BPROC_MOVE_STRICT` with its reason, then
/// moved all at once without it: the fds are closed on the node (the slave's log names the
/// file it lacks), read-only shared mappings read the same, writable shared memory is a
/// private copy.
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
    assert_eq!(
        &lines[want.len()..],
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

/// A C program after `setlocale(LC_ALL, "")` under C.UTF-8 (a shared read-only mapping of
/// glibc's gconv cache), started by a shell that left a pipe at fd 251, moves to node 1 and
/// back: the pipe is closed on the node, the locale still converts.
#[test]
fn a_program_with_a_locale_and_a_shell_pipe_moves() {
    if !require_root("moved processes keep their pids (set_tid in the nodes' pid namespaces)") {
        return;
    }
    let Some((dir, exe)) = build_program("locale.c", "locale") else { return };
    let c = TestCluster::up(&bins(), 2, "locale");
    let script = format!("exec 251<&0; exec {} 1", exe.display());
    let out = c.cmd("/bin/bash").args(["-c", &script]).env("LANG", "C.UTF-8").stdin("").exits(42);
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert!(
        lines[0].starts_with("before: ") && !lines[0].starts_with("before: 0 shared"),
        "the locale maps a shared file: {stdout}"
    );
    assert!(lines[0].ends_with("fd 251 open, 5 wide characters"), "{stdout}");
    assert_eq!(
        &lines[1..],
        [
            "on node 1: pid same, fd 251 closed, 5 wide characters",
            "on node -1: pid same, fd 251 closed, 5 wide characters"
        ]
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// A Python 3 script calls `bproc_move` through ctypes under LANG=C.UTF-8: it arrives on
/// node 1 as the same pid with its variables, and comes back.
#[test]
fn a_python_script_moves() {
    if !require_root("moved processes keep their pids (set_tid in the nodes' pid namespaces)") {
        return;
    }
    let Some(python) = ["/usr/bin/python3", "/usr/local/bin/python3"].into_iter().find(|p| have(p))
    else {
        eprintln!("SKIPPED: no python3");
        return;
    };
    // Any program will do: what is wanted is the library where nodes see it.
    let Some((dir, _)) = build_program("locale.c", "python") else { return };
    let script = dir.join("move.py");
    std::fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/move.py"), &script).unwrap();
    let c = TestCluster::up(&bins(), 2, "python");
    let lib = dir.join("libbproc.so.4");
    let out = c
        .cmd(python)
        .args([script.to_str().unwrap(), lib.to_str().unwrap(), "1"])
        .env("LANG", "C.UTF-8")
        .exits(42);
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "python 3 on node -1\n\
         on node 1: pid same, variables whole, gr\u{f6}\u{df}e\n\
         on node -1: pid same, variables whole, gr\u{f6}\u{df}e\n"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// `bpsh 1 ./back`, where `back` moves itself back to the front end and exits 3 there: bpsh
/// ends with 3 (its ghost took the process back and ended as it), with the output from both
/// sides, and no ghost left behind.
#[test]
fn bpsh_follows_a_process_back_to_the_front_end() {
    if !require_root("moved processes keep their pids (set_tid in the nodes' pid namespaces)") {
        return;
    }
    let Some((dir, exe)) = build_program("back.c", "back") else { return };
    let c = TestCluster::up(&bins(), 2, "back");
    let out = c.cmd("bpsh").args(["1", exe.to_str().unwrap()]).timeout(10).exits(3);
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "on node 1\nback on node -1 as pid same\n");
    assert_eq!(String::from_utf8(out.stderr).unwrap(), "stderr on node -1\n");
    // Two ranks: their ghosts share one address space until the move back, when each becomes
    // a full ghost to take its process in; each rank's lines stay in order, under its prefix.
    let out = c.cmd("bpsh").args(["-p", "0,1", exe.to_str().unwrap()]).timeout(10).exits(3);
    let (text, err) =
        (String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap());
    for n in [0, 1] {
        let on = text.find(&format!("{n:3}: on node {n}\n"));
        let back = text.find(&format!("{n:3}: back on node -1 as pid same\n"));
        assert!(on.is_some() && on < back, "{text}");
        assert!(err.contains(&format!("{n:3}: stderr on node -1\n")), "{err}");
    }
    assert_eq!((text.lines().count(), err.lines().count()), (4, 2), "{text}{err}");
    let _ = std::fs::remove_dir_all(dir);
}

/// Issue 17, item 2: `bpsh 1 ./onward 2 0`, a process that moves on from node 1 to node 2
/// and then to node 0: its stdout and stderr keep reaching bpsh, in order, from each node
/// (each node connects them to bpsh again as the same rank), `-p` prefixes name the rank's
/// node, and bpsh ends with its exit status. Before, its output after the first move went to
/// `/dev/null`.
#[test]
fn bpsh_follows_a_process_from_node_to_node() {
    if !require_root("moved processes keep their pids (set_tid in the nodes' pid namespaces)") {
        return;
    }
    let Some((dir, exe)) = build_program("onward.c", "onward") else { return };
    let c = TestCluster::up(&bins(), 3, "onward");
    let out = c.cmd("bpsh").args(["1", exe.to_str().unwrap(), "2", "0"]).exits(5);
    let mut want = "start on node 1\n".to_string();
    for n in [2, 0] {
        for j in 0..3 {
            want += &format!("node {n} line {j}\n");
        }
    }
    assert_eq!(String::from_utf8(out.stdout).unwrap(), want);
    assert_eq!(
        String::from_utf8(out.stderr).unwrap(),
        "err on node 1\nerr on node 2 as pid same\nerr on node 0 as pid same\n"
    );
    // Two ranks, each moving on, with -p: every line under its rank's first node.
    let out = c.cmd("bpsh").args(["-p", "1,2", exe.to_str().unwrap(), "0"]).exits(5);
    let text = String::from_utf8(out.stdout).unwrap();
    for (first, line) in [(1, "start on node 1"), (2, "start on node 2"), (1, "node 0 line 2")] {
        assert!(text.contains(&format!("{first:3}: {line}\n")), "{text}");
    }
    assert_eq!(text.lines().count(), 8, "{text}");
    let _ = std::fs::remove_dir_all(dir);
}

/// A process of five threads (four counting) moves to node 1 and back: every thread is
/// there after each move, counting, with its id, thread-local variable and FPU state.
#[test]
fn a_threaded_process_moves_with_every_thread() {
    if !require_root("moved processes keep their pids (set_tid in the nodes' pid namespaces)") {
        return;
    }
    let Some((dir, exe)) = build_program("threads.c", "threads") else { return };
    let c = TestCluster::up(&bins(), 2, "threads");
    let out = c.cmd(exe.to_str().unwrap()).arg("1").exits(42);
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "before: node -1, pid same, 4 threads counting, ids and state kept\n\
         after: node 1, pid same, 4 threads counting, ids and state kept\n\
         after: node -1, pid same, 4 threads counting, ids and state kept\n"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// A process with four more threads makes 32 children with `bproc_vrfork`, each of which ends
/// at once: every one ends, and the parent hears it. Before, a child let go by its restore
/// could end before the restore let its other threads go; a thread still held was left a
/// zombie only the node's restoring thread could reap, the child's end was never reported,
/// and its parent waited for ever.
#[test]
fn children_of_a_threaded_process_that_end_at_once_are_seen_to_end() {
    if !require_root(
        "forked children keep their ghosts' pids (set_tid in the nodes' pid namespaces)",
    ) {
        return;
    }
    let Some((dir, exe)) = build_program("threads_vrfork.c", "threads-vrfork") else { return };
    let c = TestCluster::up(&bins(), 2, "threads-vrfork");
    // On failure, the ghosts of children never seen to end (named after the program).
    let _left = crate::ghosts::NamedLeft::of("threads_vrfork");
    let out = c.cmd(exe.to_str().unwrap()).arg("32").ok();
    assert_eq!(out, "32 of 32 ended\n");
    let _ = std::fs::remove_dir_all(dir);
}

/// `bproc_vexecmove` to diskless nodes (whose root has none of the front end's files): the
/// library stages the program and its libraries as bpsh does, serving them while the launch
/// runs; each child's line comes back without an I/O list, and each exit status.
#[test]
fn vexecmove_reaches_diskless_nodes() {
    if !require_root("diskless nodes need their own mount namespace and chroot") {
        return;
    }
    let Some((dir, exe)) = build_program("launcher.c", "launcher-diskless") else { return };
    let mut spec = TestCluster::spec(&bins(), 2, "launcher-diskless");
    spec.diskless = true;
    let c = TestCluster::start(spec);
    let out = c.cmd(exe.to_str().unwrap()).ok();
    let (mut children, mut ranks): (Vec<&str>, Vec<&str>) =
        out.lines().partition(|l| l.starts_with("child"));
    children.sort_unstable();
    ranks.sort_unstable();
    assert_eq!(children, ["child of rank 0", "child of rank 1"], "{out}");
    assert_eq!(ranks, ["rank 0 node 0 exit 10", "rank 1 node 1 exit 11"], "{out}");
    let _ = std::fs::remove_dir_all(dir);
}

/// `bproc_undump` of an image whose open file is gone restores it with that fd closed
/// (before, the caller was killed); of a damaged image, returns −1 with `EINVAL` and the
/// reason, and the caller goes on.
#[test]
fn undump_restores_without_a_lost_file_and_refuses_a_damaged_image() {
    if !require_root("restores keep the caller's pid") {
        return;
    }
    let Some((dir, exe)) = build_program("undump.c", "undump") else { return };
    let (image, file) = (dir.join("image"), dir.join("log"));
    let run = |args: &[&std::path::Path]| {
        TestCommand::from(std::process::Command::new(&exe).args(args)).output_of()
    };
    let out = run(&[Path::new("dump"), &image, &file]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "dumped\n");
    std::fs::remove_file(&file).unwrap();
    let out = run(&[Path::new("undump"), &image]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "restored: fd 7 closed\n");
    assert_eq!(out.status.code(), Some(42));
    // A damaged image: the page data's checksum is checked before the caller is replaced.
    let mut bytes = std::fs::read(&image).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0xff;
    bytes.truncate(bytes.len() - 64);
    std::fs::write(&image, &bytes).unwrap();
    let out = run(&[Path::new("undump"), &image]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(3), "{stdout}");
    assert!(stdout.starts_with("undump: -1 "), "{stdout}");
    let _ = std::fs::remove_dir_all(dir);
}
