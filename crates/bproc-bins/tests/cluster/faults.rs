//! Faults lose nothing: a master that restarts (SIGTERM or a crash) keeps every job, a node
//! that hangs for less than the grace period keeps its jobs and their output, one that hangs
//! for longer has them reported lost and killed, and bpsh says at once what it lost.

use bproc_testkit::{require_root, TestCluster};
use nix::sys::signal::Signal;

use crate::bins;

/// The job of the fault suite: numbered lines, then a known exit code.
const COUNT_20: &str = "for i in $(seq 20); do echo $i; sleep 0.2; done; exit 7";

fn numbers(out: &[String]) -> Vec<u32> {
    out.iter().filter_map(|l| l.trim().parse().ok()).collect()
}

fn grace_cluster(n: usize, tag: &str, ping: u32, grace: u32) -> TestCluster {
    let mut spec = TestCluster::spec(&bins(), n, tag);
    spec.ping_timeout = ping;
    spec.extra_config = format!("graceperiod {grace}\n");
    TestCluster::start(spec)
}

/// Restarts the master under running jobs, by SIGTERM then by SIGKILL: each bpsh prints every
/// line and exits with its job's code; meanwhile the restarted master lists the jobs, and a
/// signal sent to a bpsh reaches its process.
#[test]
fn master_restart_keeps_every_job() {
    if !require_root("ghosts and pid namespaces of root slaves") {
        return;
    }
    let mut c = grace_cluster(2, "restart", 10, 30);
    for crash in [false, true] {
        let mut job = c.cmd("bpsh").args(["1", "sh", "-c", COUNT_20]).spawn();
        let trap = "trap 'exit 9' TERM; echo ready; while :; do sleep 0.1; done";
        let mut held = c.cmd("bpsh").args(["0", "sh", "-c", trap]).spawn();
        job.wait_line(20, "the job's first line", |n, l| n == 1 && l == "1");
        held.wait_line(20, "the held job to start", |n, l| n == 1 && l == "ready");
        if crash {
            c.kill_master();
        } else {
            c.stop_master();
        }
        c.start_master().expect("the master restarts");
        c.wait(20, "both nodes to resume", |t| t.iter().all(|n| n.state == "up"));
        // The restarted master knows the held job again, from its node and its ghost.
        let ghosts = bproc_testkit::until(20, "the held job to be listed", || {
            let procs = c.client().ok()?.procs().ok()?;
            procs.iter().any(|p| p.node == 0).then_some(procs)
        });
        assert!(ghosts.iter().any(|p| p.node == 0), "{ghosts:?}");
        let st = job.finish(30);
        assert_eq!(numbers(&job.out), (1..=20).collect::<Vec<_>>(), "crash {crash}: {job:?}");
        assert_eq!(st.code(), Some(7), "crash {crash}: {job:?}");
        assert!(
            !job.err.iter().any(|l| l.contains("node lost") || l.contains("lost (")),
            "no node was lost: {:?}",
            job.err
        );
        // A signal to bpsh reaches the process through the new master.
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(held.pid()), Signal::SIGTERM).unwrap();
        let st = held.finish(20);
        assert_eq!(st.code(), Some(9), "crash {crash}: {held:?}");
    }
}

/// A node that hangs for less than the grace period keeps its job: the node shows
/// `unreachable`, not `down`; no line is lost; bpsh gets the job's real exit code.
#[test]
fn short_hang_keeps_the_job_and_its_output() {
    let mut c = grace_cluster(2, "hang-short", 2, 30);
    let job40 = "for i in $(seq 40); do echo $i; sleep 0.2; done; exit 3";
    let mut job = c.cmd("bpsh").args(["1", "sh", "-c", job40]).spawn();
    job.wait_line(20, "the job's first line", |n, l| n == 1 && l == "1");
    c.signal_slave(1, Signal::SIGSTOP).unwrap();
    c.wait_state(1, "unreachable", 10);
    c.signal_slave(1, Signal::SIGCONT).unwrap();
    c.wait_state(1, "up", 15);
    let st = job.finish(30);
    assert_eq!(numbers(&job.out), (1..=40).collect::<Vec<_>>(), "{job:?}");
    assert_eq!(st.code(), Some(3), "{job:?}");
    let log = std::fs::read_to_string(c.master_log()).unwrap();
    assert!(log.contains("node 1: unreachable: ping timeout"), "{log}");
    assert!(!log.contains("node 1: down"), "{log}");
}

/// A node that hangs for longer than the grace period: bpsh says at once that the node is
/// lost and exits 255, and once the slave runs again it kills the job itself (it rejoins
/// with a new session), so the job is not left running untracked.
#[test]
fn long_hang_reports_the_job_lost_and_kills_it() {
    let mut c = grace_cluster(2, "hang-long", 2, 2);
    let mut job = c
        .cmd("bpsh")
        .args(["1", "sh", "-c", "echo $$ > /tmp/hang.pid; echo started; exec sleep 300"])
        .spawn();
    job.wait_line(20, "the job to start", |n, l| n == 1 && l == "started");
    let remote = c.cmd("bpsh").args(["1", "cat", "/tmp/hang.pid"]).ok();
    let remote = remote.trim().to_owned();
    c.signal_slave(1, Signal::SIGSTOP).unwrap();
    c.wait_state(1, "unreachable", 10);
    let line =
        job.wait_line(20, "bpsh to report the node lost", |n, l| n == 2 && l.contains("lost"));
    assert!(line.contains("node 1"), "{line}");
    assert_eq!(job.finish(20).code(), Some(255), "{job:?}");
    c.signal_slave(1, Signal::SIGCONT).unwrap();
    c.wait_state(1, "up", 20);
    let alive = c
        .cmd("bpsh")
        .args(["1", "sh", "-c", &format!("kill -0 {remote} && echo alive || echo gone")])
        .ok();
    assert_eq!(alive, "gone\n", "the hung node's job must not run on untracked");
}

/// bpsh says at once that a node is lost (while the other nodes' processes still run), and a
/// node that could not run the program makes the exit status non-zero.
#[test]
fn lost_and_refused_nodes_make_bpsh_fail() {
    let mut c = grace_cluster(3, "lost", 10, 30);
    let mut job = c.cmd("bpsh").args(["-a", "sh", "-c", "echo started; sleep 8"]).spawn();
    for _ in 0..3 {
        job.wait_line(20, "every node to start", |n, l| n == 1 && l == "started");
    }
    let t0 = std::time::Instant::now();
    c.signal_slave(2, Signal::SIGKILL).unwrap();
    let line = job.wait_line(10, "the loss to be reported", |n, l| n == 2 && l.contains("lost"));
    assert!(line.contains("node 2"), "{line}");
    let took = t0.elapsed();
    assert!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(job.pid()), None).is_ok(),
        "said while running"
    );
    eprintln!("slave kill to bpsh's line: {took:?}");
    assert_eq!(job.finish(30).code(), Some(255), "{job:?}");
    // Node 2 is down now: a run that includes it fails, one that does not succeeds.
    c.wait_state(2, "down", 10);
    let out = c.cmd("bpsh").args(["0-2", "true"]).exits(1);
    assert!(String::from_utf8_lossy(&out.stderr).contains("2: "), "{out:?}");
    c.cmd("bpsh").args(["0-1", "true"]).exits(0);
}

/// A master that does not come back within the grace period: the job ends, bpsh names the
/// master (not a node), and the slave has killed the process itself.
#[test]
fn a_master_that_never_returns_ends_the_jobs() {
    if !require_root("ghosts and pid namespaces of root slaves") {
        return;
    }
    let mut c = grace_cluster(1, "no-master", 10, 2);
    let tag = format!("bproc-orphan-{}", std::process::id());
    let script = "echo started; while :; do sleep 0.2; done";
    let mut job =
        c.cmd("bpsh").env("BPROC_GRACE", "2").args(["0", "sh", "-c", script, &tag]).spawn();
    job.wait_line(20, "the job to start", |n, l| n == 1 && l == "started");
    assert!(shell_runs(&tag), "the job's shell is seen from here");
    c.kill_master();
    assert_eq!(job.finish(30).code(), Some(255), "{job:?}");
    assert!(
        job.err.iter().any(|l| l.contains("bpmaster") && l.contains("did not come back")),
        "{:?}",
        job.err
    );
    assert!(!job.err.iter().any(|l| l.contains("node 0: lost")), "{:?}", job.err);
    // The slave fenced itself: the job's shell is gone.
    bproc_testkit::until(20, "the slave to kill the orphaned job", || {
        (!shell_runs(&tag)).then_some(())
    });
}

/// A master that goes away with a launch in flight (its node hangs, so the master has not
/// answered yet): bpsh says that the master closed the connection, ends with its ghost, and
/// lets go of its output at once (before, its ghost held bpsh's stdout for the grace period).
#[test]
fn a_master_lost_during_a_launch_ends_bpsh_and_its_ghost() {
    if !require_root("ghosts and pid namespaces of root slaves") {
        return;
    }
    let mut c = grace_cluster(1, "launch-lost", 10, 30);
    c.signal_slave(0, Signal::SIGSTOP).unwrap();
    let mut job = c.cmd("bpsh").args(["0", "sleep", "100"]).spawn();
    let bpsh = job.pid();
    let ghost = bproc_testkit::until(20, "bpsh's ghost", || children(bpsh).first().copied());
    c.kill_master();
    let st = job.finish(20);
    let _ = c.signal_slave(0, Signal::SIGCONT);
    assert_eq!(st.code(), Some(1), "{job:?}");
    assert!(job.err.iter().any(|l| l.starts_with("bpsh: bproc_vexecmove_io: ")), "{:?}", job.err);
    assert!(!std::path::Path::new(&format!("/proc/{ghost}")).exists(), "ghost {ghost} is left");
}

/// The pids of `parent`'s children.
fn children(parent: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            bproc_sys::peer::Stat::read(*pid).and_then(|s| s.num::<i32>(4)) == Some(parent)
        })
        .collect()
}

/// Whether a live `sh` whose arguments include `tag` runs on this machine (any pid
/// namespace's processes show in ours).
fn shell_runs(tag: &str) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else { return false };
    dir.flatten().any(|e| {
        let p = e.path();
        let argv = std::fs::read(p.join("cmdline")).unwrap_or_default();
        let mut args = argv.split(|b| *b == 0);
        let zombie = std::fs::read_to_string(p.join("stat")).is_ok_and(|s| s.contains(") Z "));
        args.next() == Some(b"sh") && args.any(|a| a == tag.as_bytes()) && !zombie
    })
}
