//! bpcluster from the shell: up, status, down, demo.

use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};

use bproc_testkit::{unique_dir, TestCommand};

use crate::bins;

/// `bpcluster up` prints shell exports, leaves the daemons running for the tools, and
/// `bpcluster down` stops every one of them by pid.
#[test]
fn up_status_down() {
    let dir = unique_dir("bpcluster");
    let cluster = || TestCommand::new(bins().join("bpcluster"));
    let out = cluster().args(["up", "-n", "8", "--dir"]).arg(&dir).ok();
    let pids = bproc_vcluster::recorded_pids(&dir).unwrap();
    // Stop the daemons even if an assertion below fails.
    struct Down(std::path::PathBuf);
    impl Drop for Down {
        fn drop(&mut self) {
            let _ = bproc_vcluster::stop_detached(&self.0);
        }
    }
    let guard = Down(dir.clone());
    assert_eq!(
        out,
        format!(
            "export BPROC_SOCKET={}\nexport PATH={}:$PATH\n",
            dir.join("master.sock").display(),
            bins().display()
        )
    );
    assert_eq!(pids.len(), 9);
    // bpcluster blocks the signals it catches; its daemons must not inherit that, or SIGTERM
    // would never stop them. (A slave blocks SIGCHLD itself: its reaper thread takes it.)
    let sigchld = 1u64 << (nix::libc::SIGCHLD - 1);
    for r in &pids {
        let status = std::fs::read_to_string(format!("/proc/{}/status", r.pid)).unwrap();
        let blocked = status
            .lines()
            .find_map(|l| l.strip_prefix("SigBlk:\t"))
            .and_then(|m| u64::from_str_radix(m, 16).ok());
        assert!(blocked.is_some_and(|m| m & !sigchld == 0), "{r:?} blocks signals: {blocked:?}");
    }
    let stat =
        TestCommand::new(bins().join("bpstat")).env("BPROC_SOCKET", dir.join("master.sock")).ok();
    assert_eq!(
        stat,
        "Node(s)                            Status          Mode       User     Group   \n\
         0-7                                up              ---x--x--x root     root    \n"
    );
    let status = cluster().args(["status", "--dir"]).arg(&dir).ok();
    assert!(status.contains("8 of 8 nodes up"), "{status}");
    assert_eq!(status.matches("running").count(), 9, "{status}");
    // A second `up` in the same directory is refused while the first runs, with one message
    // (issue "hardening", item 7: it also said there was no cluster there).
    let out = cluster().args(["up", "-n", "2", "--dir"]).arg(&dir).fails();
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "bpcluster: a cluster is already running in {}; stop it with `bpcluster down --dir {}`\n",
            dir.display(),
            dir.display()
        )
    );
    cluster().args(["down", "--dir"]).arg(&dir).ok();
    for r in &pids {
        assert!(r.start.is_some(), "{r:?}: no start time recorded");
        assert!(!bproc_vcluster::pid_runs(r.pid, r.program()), "{r:?} still running");
    }
    assert!(!dir.exists());
    drop(guard);
    cluster().args(["status", "--dir"]).arg(&dir).fails();
}

/// The demo runs start to finish and shows what it promises.
#[test]
fn demo_runs() {
    let out = TestCommand::new(bins().join("bpcluster")).arg("demo").ok();
    assert!(out.contains("$ bpctl -S 3 -s down"), "{out}");
    assert!(out.contains("3                                  down            ----------"), "{out}");
    assert!(out.contains("   3 0.0.0.0         down"), "{out}");
    assert!(out.contains("$ bpstat -t allup\n3\n"), "{out}");
    assert!(
        out.contains("  2: hello from n2, rank 0000002\n") || !nix::unistd::geteuid().is_root(),
        "{out}"
    );
    assert!(out.contains("  2: myoutput\n"), "{out}");
    assert!(out.contains("myoutput.2\nmyoutput.3\n"), "{out}");
    for n in 0..4 {
        assert!(out.contains(&format!("{n:3}: input for every node\n")), "{out}");
    }
    assert!(!out.contains("  1: myoutput\n") || !nix::unistd::geteuid().is_root(), "{out}");
    assert!(out.ends_with("Cluster stopped.\n"), "{out}");
    // Issue "hardening", item 19: a running job's ghosts with their nodes, Ctrl-C reaching
    // the remote processes, and another user refused.
    assert!(out.contains("$ bpsh 0-1 sleep 30 &\n$ ps f --pid "), "{out}");
    let ghost = |node: &str| {
        out.lines().any(|l| l.starts_with(&format!("{node}\t")) && l.ends_with(" \\_ [sleep]"))
    };
    assert!(ghost("0") && ghost("1"), "{out}");
    assert!(
        out.contains(
            "bpsh: Child process on node 0 exited abnormally.\n\
             bpsh: Child process on node 1 exited abnormally.\n(bpsh exited with status 255)\n"
        ),
        "{out}"
    );
    if nix::unistd::geteuid().is_root() {
        assert!(
            out.contains(
                "# as uid 65533\n1: Operation not permitted\n2: Operation not permitted\n65533\n"
            ),
            "{out}"
        );
    }
}

/// A process the test started, killed and reaped when dropped.
struct Owned(Child);

impl Drop for Owned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Owned {
    fn pid(&self) -> i32 {
        self.0.id() as i32
    }
    fn running(&mut self) -> bool {
        self.0.try_wait().unwrap().is_none()
    }
}

/// `bpcluster down` signals only its own cluster's daemons. Before, a stale `pids` file made
/// it SIGTERM whatever process had a recorded pid and the daemon's name: another cluster's
/// bpmaster, or any program called bpmaster.
#[test]
fn down_with_a_stale_pids_file_signals_nothing_else() {
    let cluster = || TestCommand::new(bins().join("bpcluster"));
    let other = unique_dir("bpcluster-other");
    cluster().args(["up", "-n", "1", "--no-isolate", "--dir"]).arg(&other).ok();
    struct Down(std::path::PathBuf);
    impl Drop for Down {
        fn drop(&mut self) {
            let _ = bproc_vcluster::stop_detached(&self.0);
        }
    }
    let _guard = Down(other.clone());
    let theirs = bproc_vcluster::recorded_pids(&other).unwrap();
    let master = theirs.iter().find(|r| r.name == "master").unwrap().clone();

    let dir = unique_dir("bpcluster-stale");
    let fresh = |dir: &std::path::Path| {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("config"), "# a cluster that is gone\n").unwrap();
        std::fs::write(dir.join("key"), "0").unwrap();
    };
    fresh(&dir);
    // Any program named bpmaster.
    let mut named =
        Owned(Command::new("sleep").arg0("/usr/local/sbin/bpmaster").arg("60").spawn().unwrap());
    // A process naming this very cluster's config (as its master would), but not the one
    // recorded: its pid was reused.
    let config = dir.join("config");
    let mut reused = Owned(
        Command::new("/bin/sh")
            .arg0(bins().join("bpmaster"))
            .args(["-c", "sleep 60; :", "-c"])
            .arg(&config)
            .spawn()
            .unwrap(),
    );
    let t0 = std::time::Instant::now();
    let started = loop {
        // Until sh has started (its command line is ours once it runs).
        if bproc_vcluster::pid_runs(reused.pid(), "bpmaster") {
            if let Some(t) = bproc_vcluster::start_time(reused.pid()) {
                break t;
            }
        }
        assert!(t0.elapsed() < std::time::Duration::from_secs(10), "sh did not start");
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    let stale = format!(
        "master {} {}\nn0 {}\nmaster {}\nmaster {} {}\n",
        master.pid,
        master.start.unwrap(),
        theirs.iter().find(|r| r.name == "n0").unwrap().pid,
        named.pid(),
        reused.pid(),
        started + 1,
    );
    std::fs::write(dir.join("pids"), stale).unwrap();
    let out = cluster().args(["down", "--dir"]).arg(&dir).output_of();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "bpcluster: stopped 0 daemons\n");
    assert!(named.running(), "an unrelated bpmaster was signalled");
    assert!(reused.running(), "a reused pid was signalled");
    for r in &theirs {
        assert!(r.find(&other).is_some(), "the other cluster's {} was signalled", r.name);
    }
    TestCommand::new(bins().join("bpstat")).env("BPROC_SOCKET", other.join("master.sock")).ok();

    // The same process, recorded with its start time, is taken for this cluster's master.
    fresh(&dir);
    std::fs::write(dir.join("pids"), format!("master {} {started}\n", reused.pid())).unwrap();
    let out = cluster().args(["down", "--dir"]).arg(&dir).output_of();
    assert_eq!(String::from_utf8_lossy(&out.stderr), "bpcluster: stopped 1 daemons\n");
    let status = reused.0.wait().unwrap();
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(15));
    assert!(named.running());
}

/// A directory holding bpcluster and bpslave (links to the real ones) and a `bpmaster` that
/// says it is ready and then answers nothing, as a hung master (or one out of descriptors)
/// does; [`HungMaster::serve`] gives it a socket that accepts connections and never answers.
/// It blocks opening a FIFO (no child process to leave behind) and keeps the arguments it was
/// given, so `bpcluster down` knows it for the cluster's master.
struct HungMaster {
    bins: std::path::PathBuf,
    fifo: std::path::PathBuf,
}

impl HungMaster {
    fn new() -> HungMaster {
        let bins = unique_dir("hung-master-bins");
        std::fs::hard_link(bins_dir_file("bpcluster"), bins.join("bpcluster"))
            .or_else(|_| {
                std::fs::copy(bins_dir_file("bpcluster"), bins.join("bpcluster")).map(drop)
            })
            .unwrap();
        std::os::unix::fs::symlink(bins_dir_file("bpslave"), bins.join("bpslave")).unwrap();
        let fifo = bins.join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let script = format!(
            "#!/bin/bash\necho \"127.0.0.1:1 socket $$\"\nexec -a \"$0\" /bin/sh -c 'read x < {}' \"$@\"\n",
            fifo.display()
        );
        let master = bins.join("bpmaster");
        std::fs::write(&master, script).unwrap();
        std::fs::set_permissions(&master, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        HungMaster { bins, fifo }
    }

    /// A listener on `dir/master.sock` that accepts every connection and never answers.
    fn serve(dir: &std::path::Path) {
        let l = std::os::unix::net::UnixListener::bind(dir.join("master.sock")).unwrap();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for c in l.incoming() {
                held.push(c);
            }
        });
    }

    fn bpcluster(&self) -> TestCommand {
        TestCommand::new(self.bins.join("bpcluster"))
    }
}

impl Drop for HungMaster {
    fn drop(&mut self) {
        // Ends a fake master still blocked on the FIFO, if a test failed before stopping it.
        let _ = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(nix::libc::O_NONBLOCK)
            .open(&self.fifo);
        let _ = std::fs::remove_dir_all(&self.bins);
    }
}

fn bins_dir_file(name: &str) -> std::path::PathBuf {
    bins().join(name)
}

/// Processes whose command line names `dir` (a cluster's daemons).
fn naming(dir: &std::path::Path) -> Vec<i32> {
    use std::os::unix::ffi::OsStrExt;
    let needle = dir.as_os_str().as_bytes();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.windows(needle.len()).any(|w| w == needle))
        })
        .collect()
}

/// Lines in `dir/pids` (daemons recorded so far).
fn recorded(dir: &std::path::Path) -> usize {
    std::fs::read_to_string(dir.join("pids")).map_or(0, |t| t.lines().count())
}

/// Issue "hardening", item 2: `up` against a master that accepts but never answers (as one out
/// of descriptors did at 1008 nodes) fails within `--timeout`, says why, and stops every
/// daemon it started. Before, it waited forever.
#[test]
fn up_gives_up_on_a_hung_master_within_its_timeout() {
    let fake = HungMaster::new();
    let dir = unique_dir("bpcluster-hung");
    HungMaster::serve(&dir);
    let out = fake
        .bpcluster()
        .args(["up", "-n", "2", "--no-isolate", "--timeout", "2", "--dir"])
        .arg(&dir)
        .timeout(20)
        .fails();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("every node up: not reached after 2 s"), "{err}");
    assert!(err.contains("bpmaster answered no request"), "{err}");
    assert_eq!(naming(&dir), Vec::<i32>::new(), "daemons left running");
    assert!(!dir.join("pids").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Item 2: Ctrl-C on a start that waits stops the daemons it started (they run in their own
/// process groups, out of the terminal's reach). Before, 1025 daemons were left running.
#[test]
fn interrupted_up_stops_what_it_started() {
    let fake = HungMaster::new();
    let dir = unique_dir("bpcluster-int");
    HungMaster::serve(&dir);
    let mut up = fake
        .bpcluster()
        .args(["up", "-n", "3", "--no-isolate", "--timeout", "600", "--dir"])
        .arg(&dir)
        .spawn();
    bproc_testkit::until(20, "the daemons to be recorded", || (recorded(&dir) == 4).then_some(()));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(up.pid()), nix::sys::signal::SIGINT).unwrap();
    let st = up.finish(30);
    assert_eq!(st.code(), Some(130), "{:?}", up.err);
    assert!(up.err.iter().any(|l| l.contains("interrupted by signal 2")), "{:?}", up.err);
    assert_eq!(naming(&dir), Vec::<i32>::new(), "daemons left running");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Item 2: `bpcluster down` stops a start that hangs, as each daemon is recorded when it
/// starts. Before, it said "no virtual cluster".
#[test]
fn down_stops_a_start_that_hangs() {
    let fake = HungMaster::new();
    let dir = unique_dir("bpcluster-down-hung");
    HungMaster::serve(&dir);
    let mut up = fake
        .bpcluster()
        .args(["up", "-n", "2", "--no-isolate", "--timeout", "600", "--dir"])
        .arg(&dir)
        .spawn();
    bproc_testkit::until(20, "the daemons to be recorded", || (recorded(&dir) == 3).then_some(()));
    let out = fake.bpcluster().args(["down", "--dir"]).arg(&dir).output_of();
    assert_eq!(String::from_utf8_lossy(&out.stderr), "bpcluster: stopped 3 daemons\n");
    assert!(!up.finish(30).success());
    assert_eq!(naming(&dir), Vec::<i32>::new(), "daemons left running");
}

/// Item 2: more nodes than the master could hold links for is refused at once, naming the
/// limit, instead of hanging once the master runs out of descriptors.
#[test]
fn up_refuses_more_nodes_than_the_open_file_limit() {
    let dir = unique_dir("bpcluster-fds");
    let out = TestCommand::new("prlimit")
        .arg("--nofile=100:100")
        .arg(bins().join("bpcluster"))
        .args(["up", "-n", "200", "--no-isolate", "--dir"])
        .arg(&dir)
        .timeout(10)
        .fails();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("200 nodes need at least 264 open files in bpmaster")
            && err.contains("the hard limit here is 100"),
        "{err}"
    );
    assert_eq!(naming(&dir), Vec::<i32>::new());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue "hardening", item 7: `bpcluster down` also stops a master restarted by hand (here as
/// an administrator does, in the background from the cluster directory), which the `pids`
/// file does not name, and says so. Before, it skipped it silently, and the master's state
/// file then recreated the directory.
#[test]
fn down_stops_a_master_restarted_by_hand() {
    let dir = unique_dir("bpcluster-byhand");
    let cluster = || TestCommand::new(bins().join("bpcluster"));
    cluster().args(["up", "-n", "1", "--no-isolate", "--dir"]).arg(&dir).ok();
    struct Down(std::path::PathBuf);
    impl Drop for Down {
        fn drop(&mut self) {
            let _ = bproc_vcluster::stop_detached(&self.0);
        }
    }
    let _guard = Down(dir.clone());
    let recorded = bproc_vcluster::recorded_pids(&dir).unwrap();
    let master = recorded.iter().find(|r| r.name == "master").unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(master.pid), nix::sys::signal::SIGTERM)
        .unwrap();
    bproc_testkit::until(10, "the master to stop", || {
        (!bproc_vcluster::pid_runs(master.pid, "bpmaster")).then_some(())
    });
    let st = TestCommand::from(
        Command::new(bins().join("bpmaster"))
            .args(["-c", "config"])
            .current_dir(&dir)
            .stderr(std::process::Stdio::null()),
    )
    .output_of()
    .status;
    assert!(st.success());
    let socket = dir.join("master.sock");
    let by_hand = bproc_sys::peer::socket_server(&socket).expect("the new master serves");
    // Killed if the test fails before `down` stops it.
    struct Kill(i32);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.0),
                nix::sys::signal::SIGKILL,
            );
        }
    }
    let _kill = Kill(by_hand);
    let status = cluster().args(["status", "--dir"]).arg(&dir).ok();
    assert!(
        status.contains(&format!(
            "master   pid {by_hand:<8} running (not recorded by `up`: started by hand)"
        )),
        "{status}"
    );
    let out = cluster().args(["down", "--dir"]).arg(&dir).output_of();
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "bpcluster: stopped 2 daemons (1 not recorded by `up`: started by hand)\n"
    );
    assert!(!bproc_vcluster::pid_runs(by_hand, "bpmaster"), "the master still runs");
    assert!(!dir.exists());
}
