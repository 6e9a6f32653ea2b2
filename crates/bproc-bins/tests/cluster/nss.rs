//! `libnss_bproc.so.2` resolves node names for every program: `getent` (glibc's own
//! resolver, as any program uses it) against the names file of a live cluster's master.
//!
//! The machine's `/etc/nsswitch.conf` is left alone: `getent` runs in a private mount
//! namespace where a copy with `hosts: files bproc dns` is bind-mounted over it, and finds the
//! module through `LD_LIBRARY_PATH` (glibc loads NSS modules with `dlopen`).

use std::path::{Path, PathBuf};
use std::process::Command;

use bproc_testkit::{require_root, until, TestCluster, TestCommand};

use crate::bins;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `getent ARGS...` with the module as the `bproc` source: (exit code, stdout).
fn getent(dir: &Path, hosts: &Path, args: &[&str]) -> (i32, String) {
    let script = "mount --bind \"$NSSWITCH\" /etc/nsswitch.conf && exec getent \"$@\"";
    let out = TestCommand::from(
        Command::new("unshare")
            .args(["-m", "sh", "-c", script, "sh"])
            .args(args)
            .env("NSSWITCH", dir.join("nsswitch.conf"))
            .env("LD_LIBRARY_PATH", dir)
            .env("BPROC_HOSTS", hosts),
    )
    .output_of();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.is_empty(), "getent {args:?}: {stderr}");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One line per answer, its words single-spaced.
fn words(out: &str) -> Vec<String> {
    out.lines().map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")).collect()
}

#[test]
fn getent_resolves_node_names() {
    if !require_root("bind-mounts an nsswitch.conf in a private mount namespace") {
        return;
    }
    // A cargo build may take a while on a loaded machine.
    TestCommand::from(
        Command::new(env!("CARGO"))
            .args(["build", "--quiet", "-p", "bproc-nss"])
            .args(bproc_testkit::cargo_profile())
            .current_dir(root()),
    )
    .timeout(600)
    .ok();
    let mut spec = TestCluster::spec(&bins(), 4, "nss");
    spec.extra_config.push_str("nodename node%N\n");
    let c = TestCluster::start(spec);
    let dir = c.dir().join("nss");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(bins().join("libnss_bproc.so"), dir.join("libnss_bproc.so.2")).unwrap();
    let conf = std::fs::read_to_string("/etc/nsswitch.conf").unwrap_or_default();
    let mut conf: String = conf
        .lines()
        .filter(|l| !l.trim_start().starts_with("hosts:"))
        .map(|l| format!("{l}\n"))
        .collect();
    conf.push_str("hosts: files bproc dns\n");
    std::fs::write(dir.join("nsswitch.conf"), conf).unwrap();
    let hosts = c.dir().join("state/hosts");
    until(10, "the master's names file", || hosts.exists().then_some(()));

    for name in ["n3", ".3", "node3"] {
        let (code, out) = getent(&dir, &hosts, &["hosts", name]);
        assert_eq!((code, words(&out)), (0, vec!["127.0.1.3 n3 .3 node3".to_owned()]), "{name}");
    }
    let (code, out) = getent(&dir, &hosts, &["hosts", "127.0.1.3"]);
    assert_eq!((code, words(&out)), (0, vec!["127.0.1.3 n3 .3 node3".to_owned()]));
    // getaddrinfo (what most programs call) finds it too.
    let (code, out) = getent(&dir, &hosts, &["ahostsv4", "n2"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("127.0.1.2 "), "{out}");
    let (code, out) = getent(&dir, &hosts, &["hosts", "master"]);
    assert_eq!((code, words(&out)), (0, vec!["127.0.0.1 master n-1".to_owned()]));
    // No such node: not found (exit 2), and the next source was asked.
    assert_eq!(getent(&dir, &hosts, &["hosts", "n4"]).0, 2);
}
