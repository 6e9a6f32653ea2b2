//! The Debian package: built with cargo-deb (`scripts/deb.sh`), installed with `dpkg -i`, used
//! from the installed files only (`bpcluster demo`, `man bpsh`), removed, and nothing but
//! configuration left behind.
//!
//! It installs into the machine's `/usr`, so it runs only as root and when asked:
//! `BPROC_DEB_TEST=1` (`.ci/run` sets it). It refuses to run over an installed `bproc`
//! package, and removes its own even when an assertion fails.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A clean environment: only the system's directories in PATH, so that only installed
/// files are used.
fn system(prog: &str) -> Command {
    let mut c = Command::new(prog);
    c.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("HOME", "/root")
        .env("LANG", "C.UTF-8")
        .current_dir("/");
    c
}

/// Purges the package when dropped, so a failed test leaves the machine as it was.
struct Purge;
impl Drop for Purge {
    fn drop(&mut self) {
        let _ = system("dpkg").args(["--purge", "bproc"]).output();
    }
}

#[test]
fn deb_installs_runs_and_removes_cleanly() {
    if std::env::var_os("BPROC_DEB_TEST").is_none() {
        eprintln!("SKIPPED: installs a package into /usr; set BPROC_DEB_TEST=1 (.ci/run does)");
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: dpkg -i needs root");
        return;
    }
    if Command::new("cargo-deb").arg("--version").output().is_err() {
        eprintln!("SKIPPED: no cargo-deb (cargo install cargo-deb)");
        return;
    }
    let status = system("dpkg-query").args(["-W", "-f", "${Status}", "bproc"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&status.stdout).contains("installed"),
        "a bproc package is already installed; this test would replace it"
    );
    run(Command::new("bash").arg(root().join("scripts/deb.sh")).env("PROFILE", "debug"));
    let debs: Vec<PathBuf> = std::fs::read_dir(root().join("target/debian"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    assert_eq!(debs.len(), 1, "{debs:?}");
    let deb = &debs[0];
    let info = run(Command::new("dpkg-deb").arg("--info").arg(deb));
    assert!(info.contains("Package: bproc"), "{info}");

    let _purge = Purge;
    run(system("dpkg").arg("-i").arg(deb));
    let files = run(system("dpkg").args(["-L", "bproc"]));
    for f in [
        "/usr/bin/bpsh",
        "/usr/bin/bpcluster",
        "/usr/bin/bpghost",
        "/usr/sbin/bpmaster",
        "/usr/sbin/bpslave",
        "/usr/lib/x86_64-linux-gnu/libbproc.so.4",
        "/usr/lib/x86_64-linux-gnu/libnss_bproc.so.2",
        "/usr/lib/x86_64-linux-gnu/pkgconfig/bproc.pc",
        "/usr/include/sys/bproc.h",
        "/usr/lib/systemd/system/bpmaster.service",
        "/usr/share/bash-completion/completions/bpsh",
        "/usr/share/zsh/vendor-completions/_bproc",
        "/usr/share/doc/bproc/examples/config",
        "/usr/share/doc/bproc/examples/node_up",
    ] {
        assert!(files.lines().any(|l| l == f), "{f} not in the package:\n{files}");
        assert!(Path::new(f).exists(), "{f} not installed");
    }
    assert!(files.lines().any(|l| l.starts_with("/usr/share/man/man5/bproc-config.5")), "{files}");
    assert!(
        !files.lines().any(|l| l.starts_with("/etc")),
        "the package must not own /etc:\n{files}"
    );
    let unit = std::fs::read_to_string("/usr/lib/systemd/system/bpslave.service").unwrap();
    assert!(unit.contains("/usr/sbin/bpslave"), "{unit}");

    // The installed programs work on their own.
    let demo = run(system("bpcluster").arg("demo"));
    assert!(demo.contains("$ bpctl -S 3 -s down"), "{demo}");
    assert!(demo.ends_with("Cluster stopped.\n"), "{demo}");
    let man = run(system("man").args(["-P", "cat", "bpsh"]).env("MANWIDTH", "80"));
    assert!(man.contains("run a program on cluster nodes"), "{man}");
    run(system("man").args(["-P", "cat", "5", "bproc-config"]));

    // The admin's configuration, which the package does not own, survives removal; every
    // file the package installed goes.
    std::fs::create_dir_all("/etc/clustermatic").unwrap();
    let config = Path::new("/etc/clustermatic/config");
    let had_config = config.exists();
    if !had_config {
        std::fs::write(config, "iprange 0 10.0.0.10 10.0.0.11\n").unwrap();
    }
    run(system("dpkg").args(["-r", "bproc"]));
    for f in files.lines().filter(|f| !Path::new(f).is_dir()) {
        assert!(!Path::new(f).exists() && Path::new(f).symlink_metadata().is_err(), "{f} left");
    }
    let status = run(system("dpkg-query").args(["-W", "-f", "${Status}", "bproc"]));
    assert!(status.ends_with("not-installed") || status.ends_with("config-files"), "{status}");
    assert!(config.exists(), "the admin's configuration was removed");
    if !had_config {
        std::fs::remove_file(config).unwrap();
        let _ = std::fs::remove_dir("/etc/clustermatic");
    }
}
