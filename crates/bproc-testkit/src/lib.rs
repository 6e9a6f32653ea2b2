//! Test harness for end-to-end tests: virtual clusters in unique directories, client commands
//! that report everything on failure, and an unprivileged user for permission checks.
//!
//! Tests pass the directory of the built binaries (from `CARGO_BIN_EXE_*`), so this crate
//! never guesses where they are. Every process a [`TestCluster`] starts is killed by pid when
//! it is dropped, also when the test panics.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::ffi::OsStr;
use std::io::Write;
use std::ops::{Deref, DerefMut};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::OnceLock;
use std::time::Duration;

pub use bproc_vcluster::{log_tail, node_addr, Cluster, Spec};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// The arguments that make `cargo build` build the profile the running test was built in
/// (the name of the directory its binaries are in: `debug` is `dev`), so that what a test
/// builds itself (the C library, examples) is what it then runs from there.
pub fn cargo_profile() -> Vec<String> {
    let exe = std::env::current_exe().unwrap_or_default();
    // A test binary is at target/PROFILE/deps/NAME.
    let dir = exe.parent().and_then(Path::parent).and_then(Path::file_name);
    match dir.and_then(|d| d.to_str()) {
        None | Some("debug") => Vec::new(),
        Some(p) => vec!["--profile".into(), p.into()],
    }
}

/// A fresh directory for one test under the system temp dir.
pub fn unique_dir(tag: &str) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let d = std::env::temp_dir().join(format!("bproc-test-{}-{n}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("create test directory");
    d
}

/// True when running as root; otherwise prints why the calling test is skipped.
pub fn require_root(why: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    // Straight to the stderr handle: libtest captures `eprintln!` of passing tests, and a
    // skip must never pass silently.
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED: this test needs root: {why}");
    false
}

/// An unprivileged user for permission tests: name, uid, gid.
#[derive(Debug, Clone)]
pub struct TestUser {
    /// Login name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id (a group of the same name).
    pub gid: u32,
}

/// Creates (once) the user `bpalice` with a group of the same name. Needs root.
pub fn test_user() -> TestUser {
    static USER: OnceLock<TestUser> = OnceLock::new();
    USER.get_or_init(|| {
        let name = "bpalice";
        if nix::unistd::User::from_name(name).ok().flatten().is_none() {
            let st = Command::new("useradd")
                .args(["--user-group", "--no-create-home", "--shell", "/bin/sh", name])
                .status()
                .expect("run useradd");
            assert!(st.success(), "useradd {name} failed: {st}");
        }
        let u = nix::unistd::User::from_name(name).unwrap().expect("user exists");
        TestUser { name: name.into(), uid: u.uid.as_raw(), gid: u.gid.as_raw() }
    })
    .clone()
}

/// The tools that tests run on nodes (`bpsh`, `bpcp`, `brsh`), at a path the nodes see: isolated
/// nodes have a /tmp of their own, so binaries built under /tmp (a checkout there) are copied
/// once per test process to /var/tmp. Copies left by earlier test processes are removed.
pub fn node_visible_bins(bins: &Path) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    if !bins.starts_with("/tmp") {
        return bins.to_owned();
    }
    DIR.get_or_init(|| {
        let base = Path::new("/var/tmp");
        let prefix = "bproc-test-bins-";
        if let Ok(entries) = std::fs::read_dir(base) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let pid = name.strip_prefix(prefix).and_then(|p| p.parse::<i32>().ok());
                if pid.is_some_and(|p| !Path::new(&format!("/proc/{p}")).exists()) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let dir = base.join(format!("{prefix}{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the node-visible tools directory");
        for tool in ["bpsh", "bpcp", "brsh"] {
            let (from, to) = (bins.join(tool), dir.join(tool));
            if std::fs::hard_link(&from, &to).is_err() {
                std::fs::copy(&from, &to).expect("copy a tool where nodes see it");
            }
        }
        dir
    })
    .clone()
}

/// A virtual cluster owned by one test.
#[derive(Debug)]
pub struct TestCluster {
    cluster: Cluster,
    bins: PathBuf,
}

impl TestCluster {
    /// A spec for `n` nodes in a unique directory, with a 30 s start timeout.
    pub fn spec(bins: &Path, n: usize, tag: &str) -> Spec {
        let mut s = Spec::new(n, unique_dir(tag), bins);
        s.timeout = Duration::from_secs(30);
        s
    }

    /// Starts the cluster, panicking with the daemons' logs if it does not come up.
    pub fn start(spec: Spec) -> TestCluster {
        let bins = spec.bin_dir.clone();
        match Cluster::start(spec) {
            Ok(cluster) => TestCluster { cluster, bins },
            Err(e) => panic!("virtual cluster did not start: {e}"),
        }
    }

    /// Starts `n` nodes with default settings.
    pub fn up(bins: &Path, n: usize, tag: &str) -> TestCluster {
        Self::start(Self::spec(bins, n, tag))
    }

    /// The master's client socket.
    pub fn socket(&self) -> PathBuf {
        self.cluster.socket()
    }

    /// A command running the tool `prog` against this cluster.
    pub fn cmd(&self, prog: &str) -> TestCommand {
        let mut c = Command::new(self.bins.join(prog));
        c.env("BPROC_SOCKET", self.cluster.socket());
        // The tools under test come first in PATH, so that `bpsh N bpcp ...` finds them, at a
        // path the nodes see too.
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut dirs = vec![node_visible_bins(&self.bins), self.bins.clone()];
        dirs.extend(std::env::split_paths(&path));
        if let Ok(p) = std::env::join_paths(dirs) {
            c.env("PATH", p);
        }
        TestCommand {
            cmd: c,
            logs: Some(self.cluster.dir().join("log")),
            input: None,
            timeout: COMMAND_TIMEOUT,
        }
    }

    /// Waits (on change notifications) until `done` holds, panicking with logs after `secs`.
    pub fn wait(&self, secs: u64, what: &str, done: impl Fn(&[bproc_client::NodeStatus]) -> bool) {
        if let Err(e) = self.cluster.wait_for_within(what, Duration::from_secs(secs), done) {
            panic!("{e}");
        }
    }

    /// Waits until node `n` has state `state`.
    pub fn wait_state(&self, n: i32, state: &str, secs: u64) {
        self.wait(secs, &format!("node {n} to be {state}"), |t| {
            t.iter().any(|x| x.node == n && x.state == state)
        });
    }
}

impl Deref for TestCluster {
    type Target = Cluster;
    fn deref(&self) -> &Cluster {
        &self.cluster
    }
}

impl DerefMut for TestCluster {
    fn deref_mut(&mut self) -> &mut Cluster {
        &mut self.cluster
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        self.cluster.stop();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(self.cluster.dir());
        } else {
            eprintln!("cluster directory kept for inspection: {}", self.cluster.dir().display());
        }
    }
}

/// How long a [`TestCommand`] may run unless told otherwise: a hung tool fails its test
/// instead of hanging the whole run.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// A command under test; failures report the command line, status, output and daemon logs.
/// It runs in a process group of its own, killed whole when it outlives its timeout.
#[derive(Debug)]
pub struct TestCommand {
    cmd: Command,
    logs: Option<PathBuf>,
    input: Option<Vec<u8>>,
    timeout: Duration,
}

/// A command set up with std's builder (working directory, `arg0`, ...), run with a timeout
/// and reported like any other.
impl From<Command> for TestCommand {
    fn from(cmd: Command) -> TestCommand {
        TestCommand { cmd, logs: None, input: None, timeout: COMMAND_TIMEOUT }
    }
}

/// The same from a builder chain (`Command::new(p).arg(a)` is a `&mut Command`): the
/// configured command is taken out of the temporary, leaving it blank.
impl From<&mut Command> for TestCommand {
    fn from(cmd: &mut Command) -> TestCommand {
        TestCommand::from(std::mem::replace(cmd, Command::new("")))
    }
}

impl TestCommand {
    /// Any program, not tied to a cluster.
    pub fn new(prog: impl AsRef<OsStr>) -> TestCommand {
        TestCommand::from(Command::new(prog))
    }
    /// Sets how long it may run ([`COMMAND_TIMEOUT`] by default).
    pub fn timeout(mut self, secs: u64) -> Self {
        self.timeout = Duration::from_secs(secs);
        self
    }
    /// Adds an argument.
    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Self {
        self.cmd.arg(a);
        self
    }
    /// Adds arguments.
    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, a: I) -> Self {
        self.cmd.args(a);
        self
    }
    /// Sets an environment variable.
    pub fn env(mut self, k: impl AsRef<OsStr>, v: impl AsRef<OsStr>) -> Self {
        self.cmd.env(k, v);
        self
    }
    /// Runs as another user and group (no supplementary groups).
    pub fn as_user(mut self, u: &TestUser) -> Self {
        self.cmd.uid(u.uid).gid(u.gid);
        self
    }
    /// Feeds `data` on stdin.
    pub fn stdin(mut self, data: impl Into<Vec<u8>>) -> Self {
        self.input = Some(data.into());
        self
    }

    fn describe(&self, out: &Output) -> String {
        let mut s = format!(
            "command: {:?}\nstatus: {}\nstdout:\n{}\nstderr:\n{}",
            self.cmd,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if let Some(dir) = &self.logs {
            if let Ok(entries) = std::fs::read_dir(dir) {
                let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
                paths.sort();
                for p in paths {
                    s += &format!("\n--- {} (tail)\n{}", p.display(), log_tail(&p, 15));
                }
            }
        }
        s
    }

    /// Runs to completion, or panics once it has run for its timeout (after killing its
    /// process group, so nothing it started keeps its output pipes open).
    pub fn output(&mut self) -> Output {
        self.cmd.stdin(if self.input.is_some() { Stdio::piped() } else { Stdio::null() });
        self.cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
        let mut child =
            self.cmd.spawn().unwrap_or_else(|e| panic!("cannot run {:?}: {e}", self.cmd));
        if let Some(data) = self.input.take() {
            let mut stdin = child.stdin.take().expect("piped");
            // A writer thread, so a child that does not read cannot block us.
            std::thread::spawn(move || {
                let _ = stdin.write_all(&data);
            });
        }
        let group = nix::unistd::Pid::from_raw(-(child.id() as i32));
        let (done, finished) = std::sync::mpsc::channel::<()>();
        let timeout = self.timeout;
        let watchdog = std::thread::spawn(move || {
            let late = matches!(finished.recv_timeout(timeout), Err(RecvTimeoutError::Timeout));
            if late {
                let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
            }
            late
        });
        let out = child.wait_with_output().expect("wait for command");
        drop(done);
        if watchdog.join().unwrap_or(false) {
            panic!("timed out after {} s\n{}", timeout.as_secs(), self.describe(&out));
        }
        out
    }

    /// Runs without judging the outcome.
    pub fn output_of(mut self) -> Output {
        self.output()
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(mut self) -> String {
        let out = self.output();
        assert!(out.status.success(), "command failed\n{}", self.describe(&out));
        String::from_utf8(out.stdout).expect("utf-8 stdout")
    }

    /// Runs and asserts it exits with `code`; returns the output.
    pub fn exits(mut self, code: i32) -> Output {
        let out = self.output();
        assert_eq!(out.status.code(), Some(code), "wrong exit status\n{}", self.describe(&out));
        out
    }

    /// Runs and asserts failure; returns the output.
    pub fn fails(mut self) -> Output {
        let out = self.output();
        assert!(!out.status.success(), "command unexpectedly succeeded\n{}", self.describe(&out));
        out
    }
}

/// A command started in the background. Its stdout (stream 1) and stderr (stream 2) are read
/// line by line by threads; every wait has a deadline; it is killed by pid when dropped, also
/// when the test panics.
#[derive(Debug)]
pub struct Running {
    child: Option<std::process::Child>,
    lines: std::sync::mpsc::Receiver<(u8, String)>,
    /// Every stdout line read so far.
    pub out: Vec<String>,
    /// Every stderr line read so far.
    pub err: Vec<String>,
}

impl TestCommand {
    /// Starts the command in the background, stdin closed.
    pub fn spawn(mut self) -> Running {
        self.cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child =
            self.cmd.spawn().unwrap_or_else(|e| panic!("cannot run {:?}: {e}", self.cmd));
        let (tx, lines) = std::sync::mpsc::channel();
        fn pump(
            r: impl std::io::Read + Send + 'static,
            n: u8,
            tx: std::sync::mpsc::Sender<(u8, String)>,
        ) {
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(r).lines() {
                    let Ok(line) = line else { break };
                    if tx.send((n, line)).is_err() {
                        break;
                    }
                }
            });
        }
        pump(child.stdout.take().expect("piped"), 1, tx.clone());
        pump(child.stderr.take().expect("piped"), 2, tx);
        Running { child: Some(child), lines, out: Vec::new(), err: Vec::new() }
    }
}

impl Running {
    /// The process's pid.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    fn take(&mut self, (n, line): (u8, String)) -> (u8, String) {
        if n == 1 { &mut self.out } else { &mut self.err }.push(line.clone());
        (n, line)
    }

    /// Waits up to `secs` for a line (stream 1 or 2) that `want` accepts, and returns it;
    /// panics with everything read so far if none comes.
    pub fn wait_line(&mut self, secs: u64, what: &str, want: impl Fn(u8, &str) -> bool) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    let (n, line) = self.take(l);
                    if want(n, &line) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "timed out after {secs} s waiting for {what}\nstdout: {:?}\nstderr: {:?}",
                    self.out, self.err
                ),
            }
        }
    }

    /// Waits up to `secs` for the process to end and its output to close; returns its status.
    pub fn finish(&mut self, secs: u64) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.take(l);
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!(
                    "still running after {secs} s\nstdout: {:?}\nstderr: {:?}",
                    self.out, self.err
                ),
            }
        }
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(st) = child.try_wait().expect("wait for command") {
                self.child = None;
                return st;
            }
            assert!(std::time::Instant::now() < deadline, "still running after {secs} s");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Calls `f` every 10 ms until it returns a value, panicking after `secs` seconds.
pub fn until<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let t0 = std::time::Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(t0.elapsed() < Duration::from_secs(secs), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[should_panic(expected = "timed out after 1 s")]
    fn a_hung_command_fails_within_its_timeout_with_what_it_started() {
        // The background sleep keeps the output pipes open: only the group kill ends it.
        TestCommand::new("sh").args(["-c", "sleep 60 & sleep 60"]).timeout(1).output();
    }

    #[test]
    fn a_command_within_its_timeout_runs_to_its_end() {
        assert_eq!(TestCommand::new("echo").arg("hi").timeout(60).ok(), "hi\n");
    }
}
