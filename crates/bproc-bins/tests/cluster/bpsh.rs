//! bpsh on live clusters: BProc's output formats and exit rules byte for byte, stdin
//! replication, remote files, identity and permissions, signals, node loss, bounded memory.

use std::path::Path;
use std::process::{Command, Stdio};

use bproc_testkit::{require_root, test_user, Running, TestCluster, TestCommand};
use nix::sys::signal::Signal;

use crate::bins;

fn text(out: &std::process::Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// The seed article's `bpsh -a -p -s -d -L ...`: dividers, prefixes, node order.
#[test]
fn seed_example_sorted_prefixed_divided() {
    let c = TestCluster::up(&bins(), 5, "bpsh-seed");
    let out = c
        .cmd("bpsh")
        .args([
            "-a",
            "-p",
            "-s",
            "-d",
            "-L",
            "sh",
            "-c",
            "echo total $BPROC_RANK; [ $BPROC_RANK = 0000003 ] && echo myoutput; true",
        ])
        .ok();
    let dashes = "-".repeat(69);
    let mut want = String::new();
    for n in 0..5 {
        want += &format!("{n}\t{dashes}\n{n:3}: total 000000{n}\n");
        if n == 3 {
            want += "  3: myoutput\n";
        }
    }
    assert_eq!(out, want);
    // `bpsh 1,3 date`: one line per node; options may follow the node spec.
    assert_eq!(c.cmd("bpsh").args(["1,3", "-p", "echo", "hi"]).ok().lines().count(), 2);
}

/// Exit status: the highest code; a killed process gives 255 and BProc's message; nodes that
/// could not start the program print why and make the status at least 1 (as pdsh does).
#[test]
fn exit_status_rules() {
    let mut spec = TestCluster::spec(&bins(), 4, "bpsh-exit");
    spec.extra_config = "ip 7 127.0.1.77\n".into();
    let c = TestCluster::start(spec);
    let out = c.cmd("bpsh").args(["0-2", "sh", "-c", "exit $((BPROC_RANK + 3))"]).output_of();
    assert_eq!(out.status.code(), Some(5));
    let out = c.cmd("bpsh").args(["1", "sh", "-c", "kill -KILL $$"]).output_of();
    assert_eq!(out.status.code(), Some(255));
    assert_eq!(text(&out).1, "bpsh: Child process on node 1 exited abnormally.\n");
    let out = c.cmd("bpsh").args(["7,2", "true"]).output_of();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out).1, "7: Node is down\n");
    let out = c.cmd("bpsh").args(["3", "no-such-command-xyz"]).output_of();
    assert_eq!(
        (out.status.code(), text(&out).1),
        (Some(1), "bpsh: no-such-command-xyz: command not found\n".into())
    );
    let out = c.cmd("bpsh").args(["3-x", "true"]).output_of();
    assert_eq!(
        (out.status.code(), text(&out).1),
        (Some(1), "Invalid node specification \"3-x\"\n".into())
    );
    let out = c.cmd("bpsh").args(["99", "true"]).output_of();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).1.contains("node 99 is not configured"), "{out:?}");
    let out = c.cmd("bpsh").arg("-h").output_of();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).0.starts_with("usage: bpsh [options] nodenumber command\n"));
    let t = c.cmd("bpsh").args(["-t", "0", "true"]).ok();
    let secs: f64 = t.trim().parse().unwrap();
    assert!(t.trim().split('.').nth(1).unwrap().len() == 6 && secs < 10.0, "{t}");
}

/// stdin goes to every node (slowest reader sets the pace); -n, or /dev/null as bpsh's own
/// stdin, gives /dev/null, as /dev/null as its stdout or stderr does there; stdout and stderr
/// stay apart.
#[test]
fn stdin_replication_and_streams() {
    let c = TestCluster::up(&bins(), 3, "bpsh-stdin");
    let data: Vec<u8> = (0..(1u32 << 20)).map(|i| (i * 7 % 251) as u8).collect();
    let out =
        c.cmd("bpsh").args(["0-2", "-p", "sh", "-c", "wc -c; echo e >&2"]).stdin(data).output_of();
    let (o, e) = text(&out);
    let mut lines: Vec<&str> = o.lines().collect();
    lines.sort();
    assert_eq!(lines, ["  0: 1048576", "  1: 1048576", "  2: 1048576"]);
    assert_eq!(sorted_err(&e), "  0: e\n  1: e\n  2: e\n");
    let out = c.cmd("bpsh").args(["-n", "1", "wc", "-c"]).stdin("ignored").ok();
    assert_eq!(out, "0\n");
    // A bpsh whose own stdin is /dev/null gives its process /dev/null (no connection); an
    // empty pipe is forwarded.
    let fd0 = ["1", "readlink", "/proc/self/fd/0"];
    assert_eq!(c.cmd("bpsh").args(fd0).ok(), "/dev/null\n");
    let piped = c.cmd("bpsh").args(fd0).stdin("").ok();
    assert!(piped.starts_with("socket:["), "stdin from an empty pipe: {piped}");
    // So are its stdout and stderr where bpsh's own are /dev/null, unless --json shows them.
    let sh = |line: &str| c.cmd("/bin/sh").args(["-c", line]).output_of();
    // (fd 3 keeps the shell's own stdout: a shell may run readlink as itself.)
    let (_, e) = text(&sh("bpsh 1 sh -c 'exec 3>&1; readlink /proc/self/fd/3 >&2' >/dev/null"));
    assert_eq!(e, "/dev/null\n");
    let (_, e) = text(&sh("bpsh 1 sh -c 'exec 3>&1; readlink /proc/self/fd/3 >&2' | cat"));
    assert!(e.starts_with("socket:["), "stdout to a pipe: {e}");
    let (o, _) = text(&sh("bpsh 1 readlink /proc/self/fd/2 2>/dev/null"));
    assert_eq!(o, "/dev/null\n");
    let (o, _) = text(&sh("bpsh --json 1 sh -c 'echo gone >&2' 2>/dev/null"));
    assert!(o.contains("gone"), "--json shows stderr: {o}");
    // A node that stops reading early does not stall the others.
    let out = c
        .cmd("bpsh")
        .args(["-L", "0-1", "sh", "-c", "[ $BPROC_RANK = 0000000 ] && exit 0; wc -c"])
        .stdin(vec![b'x'; 300_000])
        .ok();
    assert_eq!(out, "300000\n");
}

fn sorted_err(e: &str) -> String {
    let mut v: Vec<&str> = e.lines().collect();
    v.sort();
    v.iter().map(|l| format!("{l}\n")).collect()
}

/// -N forwards nothing; -I/-O/-E open files on the node; the rank and program name are set;
/// a working directory missing on the node becomes `/`.
#[test]
fn remote_files_and_environment() {
    let c = TestCluster::up(&bins(), 2, "bpsh-files");
    assert_eq!(c.cmd("bpsh").args(["-N", "1", "echo", "invisible"]).ok(), "");
    let f = "/tmp/bpsh-remote-file";
    c.cmd("bpsh").args(["1", "-O", f, "sh", "-c", "echo to-file; echo err >&2"]).ok();
    assert_eq!(c.cmd("bpsh").args(["1", "cat", f]).ok(), "to-file\n");
    assert_eq!(c.cmd("bpsh").args(["1", "-I", f, "tr", "a-z", "A-Z"]).ok(), "TO-FILE\n");
    let out = c.cmd("bpsh").args(["1", "-I", "/no/such/input", "cat"]).output_of();
    assert_eq!(text(&out).1, "1: /no/such/input: No such file or directory\n");
    let env =
        c.cmd("bpsh").args(["0-1", "-L", "sh", "-c", "echo $BPROC_RANK $BPROC_PROGNAME"]).ok();
    let mut lines: Vec<String> = env.lines().map(str::to_owned).collect();
    lines.sort();
    let sh = bproc_bpsh::which("sh".as_ref()).unwrap();
    assert_eq!(lines, [format!("0000000 {}", sh.display()), format!("0000001 {}", sh.display())]);
    if nix::unistd::geteuid().is_root() {
        // Node /tmp is private: a directory made on the master under /tmp is not there.
        let dir = bproc_testkit::unique_dir("cwd");
        let out = TestCommand::from(
            Command::new(bins().join("bpsh"))
                .args(["0", "pwd"])
                .current_dir(&dir)
                .env("BPROC_SOCKET", c.socket()),
        )
        .output_of();
        assert_eq!(text(&out).0, "/\n");
        assert_eq!(c.cmd("bpsh").args(["0", "hostname"]).ok(), "n0\n");
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Processes run as the caller; a node's execute bits decide who may run there.
#[test]
fn identity_and_permissions() {
    if !require_root("runs bpsh as a second, unprivileged user") {
        return;
    }
    let user = test_user();
    let c = TestCluster::up(&bins(), 3, "bpsh-perm");
    let ids = c.cmd("bpsh").as_user(&user).args(["0", "sh", "-c", "id -u; id -g"]).ok();
    assert_eq!(ids, format!("{}\n{}\n", user.uid, user.gid));
    c.cmd("bpctl").args(["-S", "1", "-m", "0100", "-S", "2", "-u", &user.name, "-m", "0100"]).ok();
    let out = c.cmd("bpsh").as_user(&user).args(["0-2", "-L", "id", "-un"]).output_of();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out),
        (format!("{0}\n{0}\n", user.name), "1: Operation not permitted\n".into())
    );
    // Root may run where any execute bit is set.
    assert_eq!(c.cmd("bpsh").args(["1", "id", "-u"]).ok(), "0\n");
}

/// Starts bpsh with piped output and waits until the remote program prints `ready`.
fn start_ready(c: &TestCluster, args: &[&str]) -> Running {
    let mut bpsh = c.cmd("bpsh").args(args).spawn();
    bpsh.wait_line(30, "the remote command to start", |n, l| n == 1 && l == "ready");
    bpsh
}

/// Signals sent to bpsh reach the remote process; a node lost mid-run ends bpsh at once.
#[test]
fn signals_and_node_loss() {
    let mut c = TestCluster::up(&bins(), 3, "bpsh-sig");
    let trap = "trap 'echo got USR1; exit 3' USR1; echo ready; while :; do sleep 0.05; done";
    let mut bpsh = start_ready(&c, &["1", "sh", "-c", trap]);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(bpsh.pid()), Signal::SIGUSR1).unwrap();
    bpsh.wait_line(10, "the trap's line", |n, l| n == 1 && l == "got USR1");
    assert_eq!(bpsh.finish(10).code(), Some(3));

    // bpsh ends when the node is lost, not when the (lost) sleep would have.
    let mut bpsh = start_ready(&c, &["2", "sh", "-c", "echo ready; exec sleep 60"]);
    c.signal_slave(2, Signal::SIGKILL).unwrap();
    assert_eq!(bpsh.finish(5).code(), Some(255));
    assert_eq!(bpsh.err, ["bpsh: node 2: lost (Slave node died); its process is gone"]);
}

/// A node printing 256 MiB streams through bpsh without bpsh growing.
#[test]
fn large_output_keeps_memory_bounded() {
    if !Path::new("/usr/bin/time").exists() {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: GNU time (/usr/bin/time) measures bpsh's memory; .ci/run installs it"
        );
        return;
    }
    let c = TestCluster::up(&bins(), 1, "bpsh-big");
    // GNU time reports bpsh's peak resident set (KiB) on stderr.
    let mut child = Command::new("/usr/bin/time")
        .args(["-f", "%M"])
        .arg(bins().join("bpsh"))
        .args(["0", "head", "-c", "268435456", "/dev/zero"])
        .env("BPROC_SOCKET", c.socket())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run /usr/bin/time");
    let mut total = 0u64;
    let mut out = child.stdout.take().unwrap();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match std::io::Read::read(&mut out, &mut buf).unwrap() {
            0 => break,
            k => total += k as u64,
        }
    }
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(child.wait().unwrap().success(), "{err}");
    assert_eq!(total, 256 << 20);
    let peak_kib: u64 =
        err.trim().lines().last().and_then(|l| l.trim().parse().ok()).expect("time output");
    assert!(
        peak_kib > 0 && peak_kib < 32 * 1024,
        "bpsh peaked at {peak_kib} KiB for 256 MiB of output"
    );
}

/// Beyond BProc: --timeout kills the remote process groups, --fail-fast stops the others,
/// --fold groups identical outputs, --report and --json summarise.
#[test]
fn timeout_failfast_fold_report_json() {
    let c = TestCluster::up(&bins(), 4, "bpsh-ext");
    let out = c
        .cmd("bpsh")
        .args(["-a", "--timeout", "0.5", "sh", "-c", "sleep 30 & wait"])
        .timeout(10)
        .output_of();
    assert_eq!(out.status.code(), Some(255));
    let err = text(&out).1;
    assert!(err.starts_with("bpsh: --timeout: 0.5 s passed; killing what still runs\n"), "{err}");
    assert_eq!(err.matches("timed out; killed.").count(), 4, "{err}");

    let out = c
        .cmd("bpsh")
        .args(["0-2", "--fail-fast", "sh", "-c", "[ $BPROC_RANK = 0000001 ] && exit 4; sleep 30"])
        .output_of();
    assert_eq!(out.status.code(), Some(255));
    assert!(text(&out).1.starts_with("bpsh: --fail-fast: node 1 failed; killing the others\n"));

    let rule = "-".repeat(16);
    let out = c
        .cmd("bpsh")
        .args([
            "-a",
            "--fold",
            "sh",
            "-c",
            "echo same; [ $BPROC_RANK = 0000002 ] && echo odd; true",
        ])
        .ok();
    assert_eq!(
        out,
        format!("{rule}\n0-1,3 (exit 0)\n{rule}\nsame\n{rule}\n2 (exit 0)\n{rule}\nsame\nodd\n")
    );

    let out =
        c.cmd("bpsh").args(["-a", "--report", "sh", "-c", "exit $((BPROC_RANK % 2))"]).output_of();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out).1, "nodes  result\n0,2    exit 0\n1,3    exit 1\n");

    let out = c.cmd("bpsh").args(["0-1", "--json", "sh", "-c", "echo hi $BPROC_RANK"]).ok();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        r#"{"node":0,"outcome":"exit","reason":"exit 0","stderr":"","stderr_base64":false,"stdout":"hi 0000000\n","stdout_base64":false,"value":0}"#
    );
    assert_eq!(lines.len(), 2);
}

/// Issue "hardening", item 16: how --fold combines with each output option. Its groups keep
/// stdout and stderr apart and show how the nodes ended; -s, -L, -t and --report combine, -p
/// and -d (and --json) are refused with the reason. Before, stderr was merged into stdout,
/// exit codes were not shown, -p never folded and -s -d printed empty dividers.
#[test]
fn fold_with_each_output_option() {
    let c = TestCluster::up(&bins(), 4, "bpsh-fold");
    let rule = "-".repeat(16);
    let job = ["sh", "-c", "echo out; echo err >&2; exit $((BPROC_RANK % 2))"];
    let folded = format!("{rule}\n0,2 (exit 0)\n{rule}\nout\n{rule}\n1,3 (exit 1)\n{rule}\nout\n");
    let out = c.cmd("bpsh").args(["-a", "--fold"]).args(job).exits(1);
    assert_eq!(text(&out), (folded.clone(), "err\nerr\n".into()));
    for opt in ["-s", "-L"] {
        let out = c.cmd("bpsh").args(["-a", "--fold", opt]).args(job).exits(1);
        assert_eq!(text(&out), (folded.clone(), "err\nerr\n".into()), "{opt}");
    }
    let out = c.cmd("bpsh").args(["-a", "--fold", "-t"]).args(job).exits(1);
    let (o, _) = text(&out);
    let (groups, time) = o.split_at(folded.len());
    assert_eq!(groups, folded);
    assert!(time.trim().parse::<f64>().is_ok(), "{o}");
    let out = c.cmd("bpsh").args(["-a", "--fold", "--report"]).args(job).exits(1);
    assert_eq!(
        text(&out),
        (folded.clone(), "err\nerr\nnodes  result\n0,2    exit 0\n1,3    exit 1\n".into())
    );
    // A node that produced nothing is listed too, with how it ended.
    let out = c.cmd("bpsh").args(["0-1", "--fold", "sh", "-c", "exit 3"]).exits(3);
    assert_eq!(text(&out).0, format!("{rule}\n0-1 (exit 3)\n{rule}\n"));
    for (opt, why) in
        [("-p", "-p would give every node's lines its own number"), ("-d", "-d dividers")]
    {
        let out = c.cmd("bpsh").args(["-a", "--fold", opt, "true"]).exits(1);
        let (o, e) = text(&out);
        assert!(e.starts_with("bpsh: --fold ") && e.contains(why), "{opt}: {e}");
        assert!(o.starts_with("usage: bpsh"), "{opt}: {o}");
    }
}

/// Issue "hardening", item 17: `--json` keeps each field's type whatever the outcome, and
/// carries output that is not UTF-8 byte for byte (base64, flagged). Before, such bytes became
/// U+FFFD and `value` was a number, null or text depending on the outcome.
#[test]
fn json_is_typed_and_lossless() {
    let c = TestCluster::up(&bins(), 3, "bpsh-json");
    c.cmd("bpctl").args(["-S", "2", "-s", "down"]).ok();
    c.wait_state(2, "down", 10);
    let out = c
        .cmd("bpsh")
        .args(["0-2", "--json", "sh", "-c", "printf '\\377\\000a'; echo fine >&2; kill -TERM $$"])
        .output_of();
    let rows: Vec<serde_json::Value> =
        text(&out).0.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 3, "{out:?}");
    for (row, (outcome, value)) in
        rows.iter().zip([("signal", 15), ("signal", 15), ("not_started", 301)])
    {
        assert_eq!(row["outcome"], outcome, "{row}");
        assert_eq!(row["value"], value, "{row}");
        assert!(row["reason"].is_string(), "{row}");
    }
    for row in &rows[..2] {
        assert_eq!((&row["stdout"], &row["stdout_base64"]), (&"/wBh".into(), &true.into()));
        assert_eq!((&row["stderr"], &row["stderr_base64"]), (&"fine\n".into(), &false.into()));
    }
    assert_eq!(rows[2]["reason"], "not started: Node is down");
    assert_eq!((&rows[2]["stdout"], &rows[2]["stdout_base64"]), (&"".into(), &false.into()));
}

/// brsh behaves like rsh for launchers: the words are joined and run by `sh -c` on the node,
/// with the quoting MPICH (`'"/path/proxy"'`) and Open MPI (`' orted'`, `'"env"'`) use.
#[test]
fn brsh_runs_rsh_style_commands() {
    let c = TestCluster::up(&bins(), 4, "brsh");
    let brsh = |args: &[&str]| c.cmd("brsh").args(args).output_of();
    let out = brsh(&["n1", "\"/bin/echo\"", "hello", "'a  b'", "--control-port", "vm:1"]);
    assert_eq!(text(&out), ("hello a  b --control-port vm:1\n".into(), String::new()));
    let out = brsh(&[".2", " echo", "-mca", "ess", "\"env\""]);
    assert_eq!(text(&out).0, "-mca ess env\n");
    let out = brsh(&["-x", "-n", "3", "exit 7"]);
    assert_eq!(out.status.code(), Some(7));
    if nix::unistd::geteuid().is_root() {
        assert_eq!(text(&brsh(&["-x", "0", "hostname"])).0, "n0\n");
    }
    let here = nix::unistd::gethostname().unwrap().into_string().unwrap();
    assert_eq!(text(&brsh(&["master", "hostname"])).0, format!("{here}\n"));
    assert_eq!(text(&brsh(&[&here, "echo", "local"])).0, "local\n");
    let out = brsh(&["no.such.host", "true"]);
    assert_eq!(out.status.code(), Some(255));
    assert!(text(&out).1.contains("not a node"), "{out:?}");
    assert_eq!(brsh(&["n1"]).status.code(), Some(255));
}

/// The caller's resource limits go with the process.
#[test]
fn resource_limits_travel() {
    let c = TestCluster::up(&bins(), 1, "bpsh-rlimit");
    let bpsh = bins().join("bpsh");
    let script = format!(
        "ulimit -S -n 123; ulimit -S -c 0; exec {} 0 sh -c 'ulimit -S -n; ulimit -S -c'",
        bpsh.display()
    );
    let out =
        TestCommand::from(Command::new("sh").args(["-c", &script]).env("BPROC_SOCKET", c.socket()))
            .output_of();
    assert_eq!(text(&out), ("123\n0\n".into(), String::new()));
}

/// The spec `master` runs on the front end itself, as the caller, with the same forwarding,
/// ranks and exit rules as the nodes.
#[test]
fn master_spec_runs_on_the_front_end() {
    let c = TestCluster::up(&bins(), 2, "bpsh-master");
    let here = nix::unistd::gethostname().unwrap().into_string().unwrap();
    let out =
        c.cmd("bpsh").args(["master,1", "-p", "-s", "sh", "-c", "echo $BPROC_RANK; hostname"]).ok();
    let node1 = if nix::unistd::geteuid().is_root() { "n1".to_string() } else { here.clone() };
    assert_eq!(out, format!(" -1: 0000000\n -1: {here}\n  1: 0000001\n  1: {node1}\n"));
    assert_eq!(c.cmd("bpsh").args(["master", "wc", "-c"]).stdin("four").ok(), "4\n");
    let out = c.cmd("bpsh").args(["master,0", "sh", "-c", "exit $((BPROC_RANK + 6))"]).output_of();
    assert_eq!(out.status.code(), Some(7));
}

/// Issue 18, item 3: from a node, `master` is the front end. The launcher's ghost there (the
/// user's own process) starts the command, with its output and exit status back to the bpsh
/// on the node. Before, it was refused (and before that, it ran on the node: `bpsh 1 bpsh
/// master hostname` printed `n1`).
#[test]
fn master_from_a_node_runs_on_the_front_end() {
    let c = TestCluster::up(&bins(), 2, "bpsh-master-node");
    let here = nix::unistd::gethostname().unwrap().into_string().unwrap();
    let out = c.cmd("bpsh").args(["1", "bpsh", "master", "hostname"]).output_of();
    assert_eq!(text(&out), (format!("{here}\n"), String::new()));
    assert_eq!(out.status.code(), Some(0));
    // Ranks, stdin, stderr, -p prefixes and exit codes as for any node; the front end's
    // process runs where the caller's working directory is, if the front end has it.
    let out = c
        .cmd("bpsh")
        .args([
            "1",
            "bpsh",
            "-p",
            "-s",
            "master,0",
            "sh",
            "-c",
            "echo $BPROC_RANK; echo e >&2; exit 3",
        ])
        .output_of();
    assert_eq!(text(&out), (" -1: 0000000\n  0: 0000001\n".into(), " -1: e\n  0: e\n".into()));
    assert_eq!(out.status.code(), Some(3));
    let out = c.cmd("bpsh").args(["1", "bpsh", "master", "wc", "-c"]).stdin("four").output_of();
    assert_eq!(text(&out).0, "4\n");
    let out = c.cmd("bpsh").args(["1", "bpsh", "master", "sh", "-c", "kill -KILL $$"]).output_of();
    assert_eq!(out.status.code(), Some(255));
    assert_eq!(text(&out).1, "bpsh: Child process on node -1 exited abnormally.\n");
    let out = c.cmd("bpsh").args(["1", "brsh", "master", "echo", "ran", "here"]).output_of();
    assert_eq!(text(&out), ("ran here\n".into(), String::new()));
    // As the caller, with the caller's identity: another user runs as that user there.
    if nix::unistd::geteuid().is_root() {
        let user = test_user();
        let id = c.cmd("bpsh").args(["1", "bpsh", "master", "id", "-u"]).as_user(&user).ok();
        assert_eq!(id, format!("{}\n", user.uid));
    }
    // From a process the node's shell forked (its ghost a fork of the launched one's).
    let out = c.cmd("bpsh").args(["1", "sh", "-c", "bpsh master hostname; echo $?"]).output_of();
    assert_eq!(text(&out).0, format!("{here}\n0\n"));
}

/// Issue "hardening", item 8: a node that cannot start the command says which file failed
/// (the program, or a file of -I/-O/-E), and a program the front end cannot run is named
/// with the reason. Before: `0: No such file or directory`, and "command not found" for a
/// file that is there but not executable.
#[test]
fn failures_name_the_file() {
    if !require_root("the program must be missing on an isolated node's own /tmp") {
        return;
    }
    let c = TestCluster::up(&bins(), 2, "bpsh-names");
    let prog = std::env::temp_dir().join(format!("bproc-test-prog-{}", std::process::id()));
    std::fs::write(&prog, "#!/bin/sh\necho ran\n").unwrap();
    std::fs::set_permissions(&prog, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = c.cmd("bpsh").arg("0").arg(&prog).output_of();
    std::fs::remove_file(&prog).unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out).1, format!("0: {}: No such file or directory\n", prog.display()));
    let out = c.cmd("bpsh").args(["1", "-O", "/nodir/x", "echo"]).output_of();
    assert_eq!(text(&out).1, "1: /nodir/x: No such file or directory\n");
    let out = c.cmd("bpsh").args(["1", "-I", "/nonexist", "cat"]).output_of();
    assert_eq!(text(&out).1, "1: /nonexist: No such file or directory\n");
    let out = c.cmd("bpsh").args(["0-1", "--report", "-E", "/nodir/e", "true"]).output_of();
    assert_eq!(
        text(&out).1,
        "0: /nodir/e: No such file or directory\n1: /nodir/e: No such file or directory\n\
         nodes  result\n0-1    not started: /nodir/e: No such file or directory\n"
    );
    let out = c.cmd("bpsh").args(["0", "/etc/passwd"]).output_of();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out).1, "bpsh: /etc/passwd: not executable (Permission denied)\n");
}

/// Issue "hardening", item 11: an environment too large for a launch is refused before it is
/// sent, naming its size and the limit. Before: `bproc_vexecmove_io: connection failed` (the
/// master dropped a frame over 4 MiB). A large environment under the limit still runs.
#[test]
fn environment_too_large_is_named() {
    let c = TestCluster::up(&bins(), 1, "bpsh-bigenv");
    // The environment is made by a shell whose stack limit is raised first (the kernel
    // allows a quarter of it for arguments and environment, 128 KiB per string), so that bpsh
    // itself can start with 4.5 MiB of environment.
    let run = |chunks: u32, cmd: &str| {
        let script = format!(
            "x=$(head -c 102400 /dev/zero | tr '\\0' x); i=0; \
             while [ $i -lt {chunks} ]; do export BIG$i=$x; i=$((i+1)); done; exec {} {cmd}",
            bins().join("bpsh").display()
        );
        TestCommand::new("prlimit")
            .args(["--stack=67108864", "sh", "-c", &script])
            .env("BPROC_SOCKET", c.socket())
    };
    let out = run(46, "0 true").fails();
    let err = text(&out).1;
    assert!(
        err.starts_with("bpsh: the environment is too large to launch: 4.5 MiB")
            && err.contains("a launch carries at most 3 MiB of both"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    let out = run(10, "0 sh -c 'echo ${#BIG0}'").ok();
    assert_eq!(out, "102400\n");
}

/// Issue "hardening", item 14: a `libraries` directory stages its whole tree on diskless
/// nodes (Python's standard library, for one), and an argument that names nothing is warned
/// about at its line. Before, a directory gave only its `*.so*` files and a missing path was
/// skipped without a word.
#[test]
fn library_directories_stage_their_tree() {
    if !require_root("diskless nodes need their own mount namespace and chroot") {
        return;
    }
    let tree = bproc_testkit::unique_dir("libtree");
    std::fs::create_dir_all(tree.join("pkg/sub")).unwrap();
    std::fs::write(tree.join("pkg/sub/deep.txt"), "deep in the tree\n").unwrap();
    std::fs::write(tree.join("top.txt"), "top\n").unwrap();
    // Python with its standard library, when this machine has one outside the test's PATH
    // shims: the README's example.
    let python = ["3.13", "3.12", "3.11", "3.10"]
        .iter()
        .map(|v| (format!("/usr/bin/python{v}"), format!("/usr/lib/python{v}")))
        .find(|(b, l)| Path::new(b).is_file() && Path::new(l).is_dir());
    let mut spec = TestCluster::spec(&bins(), 1, "diskless-tree");
    spec.diskless = true;
    spec.extra_config = format!(
        "libraries {}\nlibraries /no/such/lib\nlibrariesfrombinary /no/such/bin\n{}",
        tree.display(),
        python.as_ref().map(|(_, lib)| format!("libraries {lib}\n")).unwrap_or_default()
    );
    let c = TestCluster::start(spec);
    let deep = tree.join("pkg/sub/deep.txt");
    assert_eq!(c.cmd("bpsh").arg("0").arg("cat").arg(&deep).ok(), "deep in the tree\n");
    let log = std::fs::read_to_string(c.master_log()).unwrap();
    let conf = std::fs::read_to_string(c.config_path()).unwrap();
    let line = |start: &str| conf.lines().position(|l| l.starts_with(start)).unwrap() + 1;
    let lib = line("libraries /no/such/lib");
    let bin = line("librariesfrombinary /no/such/bin");
    assert!(
        log.contains(&format!(
            ":{lib}: libraries /no/such/lib: no such file or directory; nothing is staged or \
             listed for it"
        )),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            ":{bin}: librariesfrombinary /no/such/bin: no such program; its libraries are not \
             staged or listed"
        )),
        "{log}"
    );
    if let Some((python, _)) = python {
        let out = c
            .cmd("bpsh")
            .args(["0", &python, "-c", "import json, os; print(json.dumps([os.sep]))"])
            .ok();
        assert_eq!(out, "[\"/\"]\n");
    }
    let _ = std::fs::remove_dir_all(&tree);
}

/// Staged bytes a node reports in `bpstat --json`.
fn staged_bytes(c: &TestCluster, node: i32) -> u64 {
    let out = c.cmd("bpstat").args(["--json", &node.to_string()]).ok();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v[0]["info"]["staged_bytes"].as_u64().expect("staged_bytes in bpstat --json")
}

/// On diskless nodes the program, its loader and libraries, and a script's interpreter are
/// moved from the master; the node's cache sends nothing the second time.
#[test]
fn diskless_nodes_get_programs_from_the_master() {
    if !require_root("diskless nodes need their own mount namespace and chroot") {
        return;
    }
    let mut spec = TestCluster::spec(&bins(), 2, "diskless");
    spec.diskless = true;
    let c = TestCluster::start(spec);
    assert_eq!(staged_bytes(&c, 0), 0);
    assert_eq!(c.cmd("bpsh").args(["0", "ls", "-l", "/tmp"]).ok(), "total 0\n");
    let first = staged_bytes(&c, 0);
    assert!(first > 100_000, "ls and its libraries are staged: {first} bytes");
    // Nothing of the master's filesystem is there: only what was staged.
    let bins_dir = c.cmd("bpsh").args(["0", "sh", "-c", "ls /; ls /etc 2>&1; echo"]).output_of();
    let listing = text(&bins_dir).0;
    assert!(listing.starts_with("dev\n") && listing.contains("proc\ntmp\n"), "{listing}");
    assert!(listing.contains("No such file or directory"), "no /etc on a diskless node: {listing}");
    // The second run of ls sends nothing.
    let before = staged_bytes(&c, 0);
    c.cmd("bpsh").args(["0", "ls", "/"]).ok();
    assert_eq!(staged_bytes(&c, 0), before, "the cache served the second run");
    // A script and its interpreter move together (the script lives where nodes do not see it
    // otherwise: node 1 has nothing but what is staged).
    let dir = Path::new("/var/tmp").join(format!("bproc-script-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("hello.sh");
    std::fs::write(&script, "#!/bin/sh\necho hello from a script, rank $BPROC_RANK\n").unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = c.cmd("bpsh").arg("1").arg(&script).ok();
    assert_eq!(out, "hello from a script, rank 0000000\n");
    let _ = std::fs::remove_dir_all(&dir);
}

/// On diskless nodes the program travels down the launch tree: only the first level fetches
/// it from bpsh, every other node from its parent.
#[test]
fn diskless_programs_travel_down_the_tree() {
    if !require_root("diskless nodes need their own mount namespace and chroot") {
        return;
    }
    let mut spec = TestCluster::spec(&bins(), 6, "diskless-tree");
    spec.diskless = true;
    spec.extra_config = "launchfanout 2\n".into();
    let c = TestCluster::start(spec);
    let out = c.cmd("bpsh").args(["-a", "-p", "-s", "ls", "/"]).ok();
    for n in 0..6 {
        assert!(out.contains(&format!("{n:3}: proc\n")), "{out}");
    }
    let mut from_launcher = 0;
    let mut from_parent = 0;
    for i in 0..6 {
        let log = std::fs::read_to_string(c.slave_log(i)).unwrap();
        let launcher = log.lines().filter(|l| l.contains("from the launcher")).count();
        let parent = log.lines().filter(|l| l.contains("from the parent node")).count();
        assert!(launcher == 0 || parent == 0, "node {i} fetched from both:\n{log}");
        from_launcher += usize::from(launcher > 0);
        from_parent += usize::from(parent > 0);
    }
    assert_eq!((from_launcher, from_parent), (2, 4));
}

/// The configuration's `libraries` and `librariesfrombinary` lines are staged on diskless
/// nodes when they join, before they turn up: with ssh's libraries and the user database
/// there, `bpsh 0 ssh -V` (a dozen shared libraries) runs on a diskless node.
#[test]
fn diskless_nodes_get_the_configured_libraries_at_join() {
    if !require_root("diskless nodes need their own mount namespace and chroot") {
        return;
    }
    let Some(ssh) = bproc_bpsh::which("ssh".as_ref()) else {
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "SKIPPED: ssh is not installed");
        return;
    };
    let mut spec = TestCluster::spec(&bins(), 1, "diskless-libs");
    spec.diskless = true;
    spec.extra_config =
        format!("libraries /etc/passwd /etc/group\nlibrariesfrombinary {}\n", ssh.display());
    let c = TestCluster::start(spec);
    let at_join = staged_bytes(&c, 0);
    assert!(at_join > 100_000, "libraries staged when the node joined: {at_join} bytes");
    let out = c.cmd("bpsh").args(["0", "ssh", "-V"]).output_of();
    assert!(out.status.success(), "{out:?}");
    assert!(text(&out).1.starts_with("OpenSSH_"), "{out:?}");
    // Only the ssh binary itself was new: its libraries were already there.
    let added = staged_bytes(&c, 0) - at_join;
    assert_eq!(added, std::fs::metadata(&ssh).unwrap().len(), "only ssh itself was sent");
    assert!(c.cmd("bpsh").args(["0", "cat", "/etc/passwd"]).ok().starts_with("root:"));
}

/// The master counts what it sends to slaves (`bpstat --master-info`): a launch to two nodes
/// costs it two spawn requests, each carrying the program's environment.
#[test]
fn master_counts_the_bytes_it_sends() {
    let c = TestCluster::up(&bins(), 2, "bytes");
    let read = || -> serde_json::Value {
        serde_json::from_str(&c.cmd("bpstat").arg("--master-info").ok()).unwrap()
    };
    let before = read();
    assert_eq!(before["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(before["addrs"][0], c.master_addr().to_string());
    c.cmd("bpsh").args(["0-1", "true"]).ok();
    let sent =
        read()["bytes_to_slaves"].as_u64().unwrap() - before["bytes_to_slaves"].as_u64().unwrap();
    let env_size: usize = std::env::vars().map(|(k, v)| k.len() + v.len() + 5).sum();
    assert!(sent as usize >= 2 * env_size, "sent {sent} bytes, environment is {env_size}");
}

/// A launch goes down a tree of slaves: with two children per node, 12 nodes sit three
/// levels deep, every rank still runs once with its own rank, and the master sends only to
/// the first level.
#[test]
fn launch_tree() {
    let mut spec = TestCluster::spec(&bins(), 12, "bpsh-tree");
    spec.extra_config = "launchfanout 2\n".into();
    let c = TestCluster::start(spec);
    let sent = || c.client().unwrap().master_info().unwrap().bytes_to_slaves;
    // Twice node 5: a node may run several ranks.
    let nodes = "0-11,5";
    let out = c.cmd("bpsh").args([nodes, "-p", "sh", "-c", "echo $BPROC_RANK"]).ok();
    let mut lines: Vec<&str> = out.lines().collect();
    lines.sort();
    let mut want: Vec<String> = (0..12).map(|n| format!("{n:3}: {n:07}")).collect();
    want.push(format!("{:3}: {:07}", 5, 12));
    want.sort();
    assert_eq!(lines, want);
    let before = sent();
    c.cmd("bpsh").args(["0-11", "true"]).ok();
    let one = sent() - before;
    // Two SpawnTree frames (plus the odd ping), not twelve.
    let frame = {
        let before = sent();
        c.cmd("bpsh").args(["0", "true"]).ok();
        sent() - before
    };
    assert!(one < 3 * frame, "12 nodes cost {one} bytes, one node {frame}");
}

/// The connections of a launch tree are kept for the next launch; a node whose slave was
/// killed and started again between launches (its kept connections ended with it) is still
/// reached, down a chain where every node is another's child.
#[test]
fn launch_tree_reaches_a_restarted_node() {
    let mut spec = TestCluster::spec(&bins(), 4, "bpsh-tree-restart");
    spec.extra_config = "launchfanout 1\n".into();
    let mut c = TestCluster::start(spec);
    let ranks = |c: &TestCluster| {
        let out = c.cmd("bpsh").args(["-a", "-p", "sh", "-c", "echo $BPROC_RANK"]).ok();
        let mut lines: Vec<String> = out.lines().map(String::from).collect();
        lines.sort();
        lines
    };
    let want: Vec<String> = (0..4).map(|n| format!("{n:3}: {n:07}")).collect();
    for _ in 0..3 {
        assert_eq!(ranks(&c), want);
    }
    c.signal_slave(2, Signal::SIGKILL).unwrap();
    c.wait_state(2, "down", 20);
    c.start_slave(2).unwrap();
    c.wait_state(2, "up", 20);
    for _ in 0..2 {
        assert_eq!(ranks(&c), want);
    }
}

/// bpsh runs on a node too, through its slave: the processes it starts connect back to it.
#[test]
fn bpsh_on_a_node() {
    let c = TestCluster::up(&bins(), 3, "bpsh-onnode");
    let out =
        c.cmd("bpsh").args(["1", "bpsh", "2", "sh", "-c", "echo $BPROC_RANK from node 2"]).ok();
    assert_eq!(out, "0000000 from node 2\n");
    let out = c.cmd("bpsh").args(["0", "bpsh", "-a", "-p", "-s", "echo", "hi"]).ok();
    assert_eq!(out, "  0: hi\n  1: hi\n  2: hi\n");
    let out = c.cmd("bpsh").args(["0", "bpsh", "2", "sh", "-c", "exit 7"]).output_of();
    assert_eq!(out.status.code(), Some(7));
}

/// A launch's resource limits and umask come from the launcher's kernel (`/proc/PID`), not
/// from what it claims: a user under `prlimit` with an LD_PRELOAD object that makes every
/// limit look unlimited. Before, bpsh sent the faked limits and the slave applied them as
/// root: unlimited CPU, 20,000 files and unlimited file size on the node. From a node too,
/// where the slave reads the launcher's limits from its own /proc. The launcher fooled is
/// brsh, which goes through the same client library: bpsh is linked statically, and no
/// preload object reaches it.
#[test]
fn limits_come_from_the_kernel_not_the_launcher() {
    if !require_root("runs bpsh as a second, unprivileged user") {
        return;
    }
    let Some(fake) = crate::capi::build_preload("fake_rlimit.c", "limits") else { return };
    let user = test_user();
    let c = TestCluster::up(&bins(), 3, "bpsh-limits");
    let show = "ulimit -Hn; ulimit -Ht; ulimit -Hf; ulimit -Sn; umask";
    let mut path = vec![bproc_testkit::node_visible_bins(&bins()), bins()];
    path.extend(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()));
    let path = std::env::join_paths(path).unwrap();
    let limited = |cmd: &[&str]| {
        TestCommand::new("prlimit")
            .as_user(&user)
            .args(["--nofile=512", "--cpu=10", "--fsize=2097152", "--"])
            .args(["sh", "-c", "umask 027; exec \"$@\"", "sh"])
            .args(cmd)
            .env("BPROC_SOCKET", c.socket())
            .env("PATH", &path)
    };
    // What the user really has, and what the preload object claims.
    let real = limited(&["sh", "-c", show]).ok();
    let lines: Vec<&str> = real.lines().collect();
    assert_eq!((lines[0], lines[1], lines[3], lines[4]), ("512", "10", "512", "0027"), "{real}");
    assert_ne!(lines[2], "unlimited");
    let fake = fake.to_str().unwrap();
    let claimed = limited(&["env", &format!("LD_PRELOAD={fake}"), "sh", "-c", show]).ok();
    assert_eq!(claimed, "unlimited\nunlimited\nunlimited\nunlimited\n0000\n");
    // A launcher under the preload: the node gets the real limits.
    let on_node = limited(&["env", &format!("LD_PRELOAD={fake}"), "brsh", "1", show]);
    assert_eq!(on_node.ok(), real);
    // The preload object works on the nodes too...
    let fooled = limited(&["bpsh", "1", "env", &format!("LD_PRELOAD={fake}"), "sh", "-c", show]);
    assert_eq!(fooled.ok(), claimed);
    // ...but a launcher on node 1, itself under it, launching on node 2 does not fool its
    // slave.
    let via = limited(&["bpsh", "1", "env", &format!("LD_PRELOAD={fake}"), "brsh", "2", show]);
    assert_eq!(via.ok(), real);
    let _ = std::fs::remove_dir_all(Path::new(fake).parent().unwrap());
}
