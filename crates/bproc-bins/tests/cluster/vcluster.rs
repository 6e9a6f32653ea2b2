//! bpcluster from the shell: up, status, down, demo.

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
    for (name, pid) in &pids {
        let prog = if name == "master" { "bpmaster" } else { "bpslave" };
        assert!(!bproc_vcluster::pid_runs(*pid, prog), "{name} (pid {pid}) still running");
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
