//! bpcluster from the shell: up, status, down, demo.

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
    // A second `up` in the same directory is refused while the first runs.
    cluster().args(["up", "-n", "2", "--dir"]).arg(&dir).fails();
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
